"""`featvis classvis`, `features`, `accentuate`, `examples` and `atlas`: their options are the tasks' parameters."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import (
    Context,
    InputsArg,
    ProgressView,
    emit,
    err_console,
    say,
    task_command,
    task_from,
)
from featvis.errors import FeatvisError
from featvis.tasks import AccentuateTask, ClassvisTask, ExamplesTask, FeaturesTask
from featvis.tasks.examples import ExamplesParams
from featvis.tasks.optvis import PRESET_HELP, FeaturesParams


@task_command(ClassvisTask, output="featvis-classvis", inputs=False)
def classvis(
    fields: dict,
    classes: Annotated[list[str] | None, typer.Argument(help="Class names or indices.", show_default=False,
                                                        metavar="CLASSES")] = None,
    all_classes: Annotated[bool, typer.Option("--all-classes", help="Every class of the model.")] = False,
    options: dict | None = None,
):
    """Synthesize an image per class that the model scores highly (class visualization)."""
    if all_classes and classes:
        raise FeatvisError("give class names or --all-classes, not both")
    return task_from(ClassvisTask, fields | {"classes": "all" if all_classes else tuple(classes or ())}, options)


@task_command(FeaturesTask, output="featvis-features", inputs=False)
def features(
    fields: dict,
    all_channels: Annotated[bool, typer.Option("--all-channels", help="Every channel of the layer.")] = False,
    options: dict | None = None,
):
    """Visualize what channels (or centre neurons) of a layer respond to."""
    return task_from(FeaturesTask, fields | ({"channels": "all"} if all_channels else {}), options)


@task_command(AccentuateTask, output="featvis-accentuate")
def accentuate(inputs: InputsArg, fields: dict, options: dict):
    """Feature accentuation: change each photo as little as it takes to make a channel (or a class) fire more;
    writes original | accentuated | difference per image."""
    return task_from(AccentuateTask, fields, options)


@task_command(ExamplesTask, output="featvis-examples", batch=16)
def examples(inputs: InputsArg, fields: dict, options: dict):
    """Dataset examples: for every channel of a layer, the images and receptive-field patches that excite it most
    and least, in one streamed pass over the inputs."""
    return task_from(ExamplesTask, fields, options)


@task_command(output="featvis-atlas", inputs=False, recipe=True)
def atlas(
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="The layer whose channels to show.",
                                              metavar="NAME")] = None,
    channels: Annotated[str, typer.Option(help="Channel indices (comma list) or 'all'.", metavar="C")] = "all",
    classes: Annotated[str | None, typer.Option(help="A class atlas instead: class names/indices (comma list) or "
                                                "'all'.", metavar="CLASSES")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Images for the dataset examples "
                                                      "(files, folders, globs, lists; repeatable; --imagefolder, "
                                                      "--limit, --shuffle and --shard apply to them).",
                                                      metavar="INPUTS")] = None,
    preset: Annotated[str, typer.Option(help=PRESET_HELP, metavar="PRESET")] = FeaturesParams.preset,
    steps: Annotated[int | None, typer.Option(min=0, help="Optimization steps (default: the preset's).",
                                              metavar="N")] = None,
    size: Annotated[int | None, typer.Option(min=16, max=1024, help="Image side (default 128; classes: the "
                                             "model's input size).", metavar="PX")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Dataset examples per channel.", metavar="K")] =
    ExamplesParams.k,
    options: dict | None = None,
    ctx: Context | None = None,
) -> int:
    """Every channel of a layer (or every class) on one browsable page: the visualizations, and with --dataset each
    channel's top and bottom dataset examples, strongest classes and activation statistics."""
    from featvis.recipes.atlas import run_atlas

    assert ctx is not None  # task_command gives it
    shared = ctx.shared
    quiet, as_json = shared["quiet"], shared["json"]
    show = not quiet and not as_json and err_console().is_terminal
    views: dict[str, ProgressView] = {}

    def progress(stage: str, event) -> None:
        if event.kind == "start":
            views[stage] = ProgressView(f"atlas {stage}", show, speak=not quiet and not as_json).__enter__()
        view = views.get(stage)
        if view is not None:
            view(event)
            if event.kind == "done":
                view.__exit__(None, None, None)

    try:
        chans = "all" if channels.strip() == "all" else tuple(int(c) for c in channels.split(",") if c.strip())
    except ValueError:
        raise FeatvisError(f"--channels {channels!r} must be integers separated by commas, or all") from None
    picked = None if classes is None else ("all" if classes.strip() == "all" else
                                           tuple(c.strip() for c in classes.split(",") if c.strip()))
    page = run_atlas(ctx.clf, shared["output"], layer=layer, channels=chans, classes=picked,
                     dataset=ctx.dataset(dataset), preset=preset, steps=steps, size=size, k=k,
                     executor=ctx.executor(), batch_size=shared["batch_size"], seed=shared["seed"],
                     overwrite=shared["overwrite"], progress=progress, options=options)
    if as_json:
        emit({"page": str(page.resolve()), "output": str(shared["output"])})
    else:
        if not quiet:
            say(f"atlas: {page}")
        typer.echo(str(page.resolve()))
    return 0
