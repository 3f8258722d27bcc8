"""An atlas: every channel of a layer (or every class) on one browsable page.

`run_atlas` runs the feature (or class) visualizations and, given a data set, the dataset examples — each a
resumable, distributable task run in OUT/ — then writes OUT/index.html (featvis.report.atlas): a grid of every
channel, and for the one clicked its larger image, its top and bottom dataset examples, its strongest classes and
its activation statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from featvis.errors import FeatvisError
from featvis.tasks import ClassvisTask, ExamplesTask, FeaturesTask
from featvis.tasks.runner import Event, run_task

TOP_CLASSES = 5


def classes_by_weights(clf, layer: str, channels: Sequence[int]) -> dict[int, list[dict[str, Any]]] | None:
    """For the last feature layer (global pooling then a linear head): each channel's strongest classes by the head's
    weights. None for other layers (their classes come from their dataset examples)."""
    from featvis.layers import default_layer, find_layer, list_layers, root

    name = find_layer(clf, layer)[0]
    if name != default_layer(clf):
        return None
    info = next(i for i in list_layers(clf) if i.name == name)
    heads = [m for m in root(clf).modules() if isinstance(m, torch.nn.Linear) and m.in_features == info.shape[0]]
    if not heads:
        return None
    w = heads[-1].weight.detach().float().cpu()  # [classes, C]
    out = {}
    for c in channels:
        vals, idx = w[:, c].topk(TOP_CLASSES)
        out[int(c)] = [{"class": int(i), "name": clf.labels[int(i)], "weight": round(float(v), 4)}
                       for v, i in zip(vals, idx, strict=True)]
    return out


def run_atlas(clf, out: str | Path, *, layer: str | None = None, channels: Sequence[int] | str = "all",
              classes: Sequence[int | str] | str | None = None, dataset: Sequence[str] | None = None,
              preset: str = "lucid", steps: int | None = None, size: int | None = None, k: int = 9,
              executor: Any = "local", batch_size: int | None = None, seed: int = 0, overwrite: bool = False,
              progress: Callable[[str, Event], None] | None = None, options: dict | None = None) -> Path:
    """Render the atlas of a layer's channels (or of classes) into `out` and return its index.html.

    Args:
        layer: the layer whose channels to show (or give `classes`).
        channels: channel indices or "all".
        classes: class names/indices or "all": a class atlas instead of a layer's.
        dataset: inputs for the dataset examples (files, folders, globs, lists); none: visualizations only.
        preset, steps, size: the visualization (see `featvis presets`).
        k: dataset examples per channel.
    """
    from featvis.report.atlas import build_atlas

    if (layer is None) == (classes is None):
        raise FeatvisError("an atlas shows a layer's channels (--layer) or classes (--classes), one of the two")
    out = Path(out)

    def listener(stage: str):
        return (lambda e: progress(stage, e)) if progress else None

    common = {"clf": clf, "executor": executor, "batch_size": batch_size, "seed": seed, "overwrite": overwrite}
    opts = dict(options or {})
    if classes is not None:
        task = ClassvisTask(classes="all" if classes == "all" else tuple(classes), preset=preset, steps=steps,
                            size=size, options=opts)
        vis = run_task(task, None, out / "classes", progress=listener("classes"), **common)
        return build_atlas(out, vis, None, None)
    feats = FeaturesTask(layer=layer, channels=channels, preset=preset, steps=steps, size=size or 128, options=opts)
    vis = run_task(feats, None, out / "features", progress=listener("features"), **common)
    examples = None
    if dataset:
        task = ExamplesTask(layer=layer, channels=channels, k=k)
        examples = run_task(task, dataset, out / "examples", progress=listener("examples"), **common)
    chans = [int(r["value"]) for r in vis.items]
    return build_atlas(out, vis, examples, classes_by_weights(clf, layer, chans))
