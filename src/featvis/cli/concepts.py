"""`featvis concepts` (CRAFT concepts per class of a labelled data set, as a browsable page) and `featvis tcav`."""

from __future__ import annotations

from featvis.cli._common import (
    Context,
    InputsArg,
    ProgressView,
    emit,
    err_console,
    print_table,
    say,
    task_command,
    task_from,
)
from featvis.tasks.concepts import ConceptsTask
from featvis.tasks.tcav import TcavTask


@task_command(ConceptsTask, output="featvis-concepts", recipe=True, batch=1)
def concepts(inputs: InputsArg, fields: dict, options: dict | None = None, ctx: Context | None = None) -> int:
    """What the model learned of each class, in concepts (CRAFT): an ImageFolder in (one sub-folder per class),
    one page out, with each class's concepts ranked by importance, their crops, visualizations and maps."""
    import typer

    from featvis.errors import FeatvisError
    from featvis.recipes.concepts import concepts as run_concepts

    assert ctx is not None  # task_command gives it
    if options:
        raise FeatvisError("concepts takes no -O options; its settings are options of their own (see --help)")
    shared = ctx.shared
    quiet, as_json = shared["quiet"], shared["json"]
    ctx.data["imagefolder"] = True  # a class is a sub-folder
    with ProgressView("concepts", not quiet and not as_json and err_console().is_terminal,
                      speak=not quiet and not as_json) as view:
        run = run_concepts(ctx.clf, ctx.dataset(inputs, needs="concepts"), shared["output"], executor=ctx.executor(),
                           seed=shared["seed"], overwrite=shared["overwrite"], progress=view, **fields)
    page = run.folder / "index.html"
    if as_json:
        emit({"task": run.task, "model": run.model_id, "page": str(page.resolve()), "summary": run.summary,
              "items": run.items, "failed": run.failed})
    else:
        if not quiet and run.items:
            tables = ConceptsTask.overview(run)
            print_table(tables if not isinstance(tables, list) else tables[0], run.model_id)
        if not quiet:
            for f in run.failed:  # a class that could not be done says why (too few images, an unreadable file)
                say(f"concepts: {f['key']}: {f['error']}")
            say(f"concepts: {page} ({len(run.items)} classes, {len(run.failed)} failed)")
        typer.echo(str(page.resolve()))
    return 2 if run.failed and not run.items else 1 if run.failed else 0


@task_command(TcavTask, output="featvis-tcav", batch=16)
def tcav(inputs: InputsArg, fields: dict, options: dict):
    """TCAV: does the score of one class (--target) rely on concepts you name (--concept NAME=FOLDER, any number)?
    The inputs are images of the class; --random is a folder of other images for the counterexample sets."""
    return task_from(TcavTask, fields, options)
