"""`featvis classvis` and `featvis features`: class and feature visualization, resumable and distributable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featvis.cli._common import (
    AddressOpt,
    BatchOpt,
    CpusOpt,
    DeviceOpt,
    ExecutorOpt,
    GpusOpt,
    InputsArg,
    ModelOpt,
    OptionOpt,
    OverwriteOpt,
    ProgressView,
    QuietOpt,
    SeedOpt,
    TrustOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    err_console,
    load_classifier,
    make_executor,
    say,
    task_command,
)
from featvis.errors import FeatvisError
from featvis.models import DEFAULT_MODEL

PresetOpt = Annotated[str, typer.Option(help="lab, lucid, lucid-fast, pixel, yosinski-1..4 and more (see `featvis "
                                        "presets`).", metavar="PRESET")]
StepsOpt = Annotated[int | None, typer.Option(min=0, help="Optimization steps (default: the preset's).",
                                              metavar="N")]


@task_command(output="featvis-classvis", inputs=False)
def classvis(
    classes: Annotated[list[str] | None, typer.Argument(help="Class names or indices.", show_default=False,
                                                        metavar="CLASSES")] = None,
    all_classes: Annotated[bool, typer.Option("--all-classes", help="Every class of the model.")] = False,
    preset: PresetOpt = "lucid",
    steps: StepsOpt = None,
    size: Annotated[int | None, typer.Option(min=16, max=1024, help="Image side in pixels (default: the model's "
                                             "input size).", metavar="PX")] = None,
    options: dict | None = None,
):
    """Synthesize an image per class that the model scores highly (class visualization)."""
    from featvis.tasks import ClassvisTask

    if all_classes and classes:
        raise FeatvisError("give class names or --all-classes, not both")
    return ClassvisTask(classes="all" if all_classes else tuple(classes or ()), preset=preset, steps=steps,
                        size=size, options=options or {})


@task_command(output="featvis-features", inputs=False)
def features(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `featvis layers`).", metavar="NAME")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="Channel index or a comma list.",
                                         metavar="C")] = "0",
    all_channels: Annotated[bool, typer.Option("--all-channels", help="Every channel of the layer.")] = False,
    neuron: Annotated[bool, typer.Option("--neuron", help="Only the centre neuron of each channel.")] = False,
    preset: PresetOpt = "lucid",
    steps: StepsOpt = None,
    size: Annotated[int, typer.Option(min=16, max=1024, help="Image side in pixels.", metavar="PX")] = 128,
    options: dict | None = None,
):
    """Visualize what channels (or centre neurons) of a layer respond to."""
    from featvis.tasks import FeaturesTask

    try:
        chans = "all" if all_channels else tuple(int(c) for c in channel.split(",") if c.strip())
    except ValueError:
        raise FeatvisError(f"--channel {channel!r} must be integers separated by commas, e.g. 7 or 0,5,9") from None
    return FeaturesTask(layer=layer, channels=chans, neuron=neuron, preset=preset, steps=steps, size=size,
                        options=options or {})


@task_command(output="featvis-accentuate")
def accentuate(
    inputs: InputsArg,
    layer: Annotated[str, typer.Option("--layer", "-l", help="A layer, or 'logits' for a class.",
                                       metavar="NAME")] = "logits",
    channel: Annotated[str, typer.Option("--channel", "-c", help="A channel of the layer, or a class for 'logits'.",
                                         metavar="C")] = "0",
    steps: Annotated[int, typer.Option(min=0, help="Optimization steps.", metavar="N")] = 96,
    options: dict | None = None,
):
    """Feature accentuation: change each photo as little as it takes to make a channel (or a class) fire more;
    writes original | accentuated | difference per image."""
    from featvis.tasks import AccentuateTask

    value: int | str = int(channel) if channel.strip().lstrip("-").isdigit() else channel
    return AccentuateTask(layer=layer, channel=value, steps=steps, options=options or {})


@task_command(output="featvis-examples", batch=16)
def examples(
    inputs: InputsArg,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `featvis layers`).", metavar="NAME")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="Channel indices (comma list) or 'all'.",
                                         metavar="C")] = "all",
    neuron: Annotated[bool, typer.Option("--neuron", help="Rank by the centre neuron, not the spatial maximum.")]
    = False,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Examples per channel, top and bottom.",
                                   metavar="K")] = 9,
    classes: Annotated[bool, typer.Option(help="Record each image's predicted class (a full forward pass; "
                                               "--no-classes runs the model only up to the layer).")] = True,
    options: dict | None = None,
):
    """Dataset examples: for every channel of a layer, the images and receptive-field patches that excite it most
    and least, in one streamed pass over the inputs."""
    from featvis.tasks import ExamplesTask

    if options:
        raise FeatvisError("examples takes no -O options")
    chans = "all" if channel.strip() == "all" else tuple(int(c) for c in channel.split(",") if c.strip())
    return ExamplesTask(layer=layer, channels=chans, neuron=neuron, k=k, classes=classes)


@app.command()
def atlas(
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="The layer whose channels to show.",
                                              metavar="NAME")] = None,
    channels: Annotated[str, typer.Option(help="Channel indices (comma list) or 'all'.", metavar="C")] = "all",
    classes: Annotated[str | None, typer.Option(help="A class atlas instead: class names/indices (comma list) or "
                                                "'all'.", metavar="CLASSES")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Images for the dataset examples "
                                                      "(files, folders, globs, lists; repeatable).",
                                                      metavar="INPUTS")] = None,
    preset: PresetOpt = "lucid",
    steps: StepsOpt = None,
    size: Annotated[int | None, typer.Option(min=16, max=1024, help="Image side (default 128; classes: the "
                                             "model's input size).", metavar="PX")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Dataset examples per channel.", metavar="K")] = 9,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the page and its runs (a rerun resumes "
                                         "them).", metavar="DIR")] = Path("featvis-atlas"),
    option: OptionOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Every channel of a layer (or every class) on one browsable page: the visualizations, and with --dataset each
    channel's top and bottom dataset examples, strongest classes and activation statistics."""
    from featvis._registry import parse_assignments
    from featvis.recipes.atlas import run_atlas

    clf = load_classifier(model, device, weights, trust_checkpoint)
    shared = {"executor": executor, "address": address, "workers": workers, "cpus_per_worker": cpus_per_worker,
              "gpus_per_worker": gpus_per_worker}
    show = not quiet and err_console().is_terminal
    views: dict[str, ProgressView] = {}

    def progress(stage: str, event) -> None:
        if event.kind == "start":
            views[stage] = ProgressView(f"atlas {stage}", show, speak=not quiet).__enter__()
        view = views.get(stage)
        if view is not None:
            view(event)
            if event.kind == "done":
                view.__exit__(None, None, None)

    chans = "all" if channels.strip() == "all" else tuple(int(c) for c in channels.split(",") if c.strip())
    picked = None if classes is None else ("all" if classes.strip() == "all" else
                                           tuple(c.strip() for c in classes.split(",") if c.strip()))
    page = run_atlas(clf, output, layer=layer, channels=chans, classes=picked, dataset=dataset, preset=preset,
                     steps=steps, size=size, k=k, executor=make_executor(shared), batch_size=batch_size, seed=seed,
                     overwrite=overwrite, progress=progress, options=parse_assignments(option))
    if not quiet:
        say(f"atlas: {page}")
    typer.echo(str(page.resolve()))
