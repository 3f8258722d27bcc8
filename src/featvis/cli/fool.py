"""`featvis fool` and `featvis robustness`."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import InputsArg, task_command, task_from
from featvis.errors import FeatvisError
from featvis.tasks import FoolTask, RobustnessTask


def _merge(options: dict | None, **flags) -> dict:
    """Named flags (--eps, --steps, ...) and -O options in one dict; the attack's spec checks them."""
    out = dict(options or {})
    for key, value in flags.items():
        if value is not None:
            if key in out:
                raise FeatvisError(f"--{key} and -O {key}=... both given; give one")
            out[key] = value
    return out


@task_command(FoolTask, output="featvis-fool")
def fool(
    inputs: InputsArg,
    fields: dict,
    eps: Annotated[str | None, typer.Option(help="Budget in [0, 1] units or 8-bit levels (0.0314, 8/255; ascent: "
                                            "'inf' for no cap).", metavar="BUDGET", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Maximum steps (the attack's default otherwise).",
                                              metavar="N")] = None,
    lr: Annotated[float | None, typer.Option(help="Step length (ascent, lab) / Adam rate (cw).", metavar="X")] = None,
    norm: Annotated[str | None, typer.Option(help="linf or l2 (fgsm, pgd).", metavar="NORM")] = None,
    score: Annotated[str | None, typer.Option(help="ascent: log-prob (default) or logit (the lab's).",
                                              metavar="SCORE")] = None,
    universal: Annotated[bool, typer.Option("--universal", help="One perturbation for the whole data set instead: "
                                            "the same as `featvis universal` (its options: featvis universal "
                                            "--help).")] = False,
    options: dict | None = None,
):
    """Fool the model: the fooled PNGs (judged after 8-bit rounding), the lab's four panels, CSV/JSON per image.
    --eps/--steps/--lr/--norm/--score are the attack's own options (as -O KEY=VALUE)."""
    from featvis.adversarial import ATTACKS

    if universal:  # featvis.cli.main reroutes the flag; a caller of the typer app directly gets the way there
        raise FeatvisError("fool --universal is the universal command: run `featvis universal DATASET --eps ...`")

    steps_key = ATTACKS.get(fields["method"]).info.get("steps") or "steps"
    opts = _merge(options, eps=eps, lr=lr, norm=norm, score=score)
    if steps is not None:
        opts = _merge(opts, **{steps_key: steps})
    return task_from(FoolTask, fields, opts)


@task_command(RobustnessTask, output="featvis-robustness")
def robustness(
    inputs: InputsArg,
    fields: dict,
    steps: Annotated[int | None, typer.Option(min=1, help="Attack steps per budget.", metavar="N")] = None,
    options: dict | None = None,
):
    """How easily is the model fooled: the share fooled at each budget and each image's smallest fooling budget
    (curve.png, results.csv/json, the fooled PNG at that budget)."""
    from featvis.adversarial import ATTACKS

    key = ATTACKS.get(fields["method"]).info.get("steps") or "steps"
    opts = _merge(options, **{key: steps}) if steps is not None else dict(options or {})
    return task_from(RobustnessTask, fields, opts)
