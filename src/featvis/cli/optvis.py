"""`featvis classvis` and `featvis features`: class and feature visualization, resumable and distributable."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import task_command
from featvis.errors import FeatvisError

PresetOpt = Annotated[str, typer.Option(help="lab, lucid, lucid-fast, pixel, yosinski-1..4 and more (see `featvis "
                                        "presets`).", metavar="PRESET")]
StepsOpt = Annotated[int | None, typer.Option(min=0, help="Optimization steps (default: the preset's).",
                                              metavar="N")]


@task_command(output="featvis-classvis", inputs=False)
def classvis(
    classes: Annotated[list[str] | None, typer.Argument(help="Class names or indices.", show_default=False,
                                                        metavar="CLASSES...")] = None,
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
