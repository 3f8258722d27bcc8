"""`featvis fool` and `featvis robustness`."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import InputsArg, task_command
from featvis.errors import FeatvisError


def _merge(options: dict | None, **flags) -> dict:
    """Named flags (--eps, --steps, ...) and -O options in one dict; the attack's spec checks them."""
    out = dict(options or {})
    for key, value in flags.items():
        if value is not None:
            if key in out:
                raise FeatvisError(f"--{key} and -O {key}=... both given; give one")
            out[key] = value
    return out


@task_command(output="featvis-fool")
def fool(
    inputs: InputsArg,
    target: Annotated[str | None, typer.Option("--target", "-t", help="A class (index or name), 'random' (default; "
                                               "seeded per image), 'true' (each image's label) or 'none' "
                                               "(untargeted; the default of untargeted attacks).", metavar="CLASS",
                                               show_default=False)] = None,
    method: Annotated[str, typer.Option(help="An attack (see `featvis attacks`): ascent (the lab's step, capped), "
                                        "lab, fgsm, pgd, mifgsm, cw, deepfool.", metavar="ATTACK")] = "ascent",
    eps: Annotated[str | None, typer.Option(help="Budget in [0, 1] units or 8-bit levels (0.0314, 8/255; ascent: "
                                            "'inf' for no cap).", metavar="BUDGET", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Maximum steps (the attack's default otherwise).",
                                              metavar="N")] = None,
    lr: Annotated[float | None, typer.Option(help="Step length (ascent, lab) / Adam rate (cw).", metavar="X")] = None,
    norm: Annotated[str | None, typer.Option(help="linf or l2 (fgsm, pgd).", metavar="NORM")] = None,
    score: Annotated[str | None, typer.Option(help="ascent: log-prob (default) or logit (the lab's).",
                                              metavar="SCORE")] = None,
    check_model: Annotated[str | None, typer.Option(help="A second model to test transfer on.",
                                                    metavar="MODEL")] = None,
    options: dict | None = None,
):
    """Fool the model: the fooled PNGs (judged after 8-bit rounding), the lab's four panels, CSV/JSON per image."""
    from featvis.adversarial import ATTACKS
    from featvis.tasks import FoolTask

    spec = ATTACKS.get(method)
    steps_key = spec.info.get("steps") or "steps"
    opts = _merge(options, eps=eps, lr=lr, norm=norm, score=score)
    if steps is not None:
        opts = _merge(opts, **{steps_key: steps})
    return FoolTask(method=method, target="random" if target is None else target, options=opts,
                    check_model=check_model)


@task_command(output="featvis-robustness")
def robustness(
    inputs: InputsArg,
    eps: Annotated[str, typer.Option(help="Budgets, comma-separated, in [0, 1] units or 8-bit levels.",
                                     metavar="BUDGETS")] = "1/255,2/255,3/255,4/255,6/255,8/255",
    method: Annotated[str, typer.Option(help="pgd, fgsm, mifgsm or ascent.", metavar="ATTACK")] = "pgd",
    target: Annotated[str, typer.Option("--target", "-t", help="'none' (make the model change its mind), a class, "
                                        "'random' or 'true'.", metavar="CLASS")] = "none",
    norm: Annotated[str, typer.Option(help="linf, or l2 for fgsm/pgd (then --eps is an L2 size).",
                                      metavar="NORM")] = "linf",
    steps: Annotated[int | None, typer.Option(min=1, help="Attack steps per budget.", metavar="N")] = None,
    options: dict | None = None,
):
    """How easily is the model fooled: the share fooled at each budget and each image's smallest fooling budget
    (curve.png, results.csv/json, the fooled PNG at that budget)."""
    from featvis.adversarial import ATTACKS
    from featvis.tasks import RobustnessTask

    key = ATTACKS.get(method).info.get("steps") or "steps"
    opts = _merge(options, **{key: steps}) if steps is not None else dict(options or {})
    return RobustnessTask(method=method, eps=tuple(e for e in eps.split(",") if e.strip()), norm=norm,
                          target=target, options=opts)
