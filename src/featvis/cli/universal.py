"""`featvis universal`: one perturbation that fools most images of a data set (a command of its own, not a
`featvis fool --universal` flag: it fits on a data set and reports on a held-out split, so it shares none of fool's
per-image attack options, and its own options would be noise in `featvis fool --help`)."""

from __future__ import annotations

import contextlib
import tempfile

from featvis.cli._common import Context, InputsArg, ProgressView, emit, err_console, print_table, say, task_command
from featvis.tasks.universal import UniversalTask


@task_command(UniversalTask, output="featvis-universal", recipe=True)
def universal(inputs: InputsArg, fields: dict, options: dict | None = None, ctx: Context | None = None) -> int:
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017): fit one perturbation within --eps on the
    training share of the images, report its fooling rate on the held-out share against a random perturbation of
    the same size (perturbation.png/.npy, panels, results.csv/json). A rerun resumes the fit or the evaluation;
    --executor ray spreads the held-out evaluation (the fit is sequential and stays here)."""
    from featvis.errors import FeatvisError
    from featvis.tasks.universal_fit import run_universal

    assert ctx is not None  # task_command gives it
    if options:
        raise FeatvisError("universal takes no -O options; its settings are options of their own (see --help)")
    shared = ctx.shared
    quiet, as_json = shared["quiet"], shared["json"]
    keep = shared["output"] is not None
    with contextlib.ExitStack() as stack:
        folder = shared["output"] if keep else stack.enter_context(tempfile.TemporaryDirectory(prefix="featvis-"))
        view = stack.enter_context(ProgressView("universal", not quiet and not as_json and err_console().is_terminal,
                                                speak=not quiet and not as_json))
        run = run_universal(ctx.clf, ctx.dataset(inputs), folder, executor=ctx.executor(),
                            batch_size=shared["batch_size"], seed=shared["seed"], overwrite=shared["overwrite"],
                            progress=view, **fields)
        if as_json:
            emit({"task": run.task, "model": run.model_id, "output": str(run.folder) if keep else None,
                  "summary": run.summary, "items": run.items, "failed": run.failed,
                  "counts": run.manifest.get("counts", {})})
        elif not quiet:
            for i, table in enumerate(UniversalTask.section(run).tables[:2]):
                print_table(table, run.model_id if i == 0 else None)
            if keep:
                say(f"results in {run.folder} (perturbation.png, perturbation.npy, figures/)")
    return 2 if run.failed and not run.items else 1 if run.failed else 0
