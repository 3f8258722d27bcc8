"""The classvis task (an image per class) and the features task (an image per channel or neuron of a layer)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from featvis._registry import Option
from featvis.data import Dataset, class_key
from featvis.errors import FeatvisError, did_you_mean
from featvis.layers import layer_label
from featvis.optvis.render import check_render
from featvis.tasks.base import Batch, Output, Section, Table, Task, item_name, param, register

GRID_MAX = 100  # images in the run's grid.png (the rest are in images/)


RENDER_OPTIONS = ("lr", "optimizer", "views", "model_size")  # render-loop settings a run may override


def preset_options(preset: str) -> dict[str, Option]:
    """What `preset` takes in a run: its own options (its build function's) and a few render-loop settings."""
    from featvis.optvis import PRESETS
    from featvis.optvis.presets import _render_options

    loop = _render_options()
    return {**{k: loop[k] for k in RENDER_OPTIONS if k in loop}, **PRESETS.get(preset).options}


def check_preset(preset: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The canonical preset name and the options checked (and converted) against what it takes."""
    from featvis.optvis import PRESETS

    name = PRESETS.canonical(preset)
    if "seed" in {k.replace("-", "_") for k in options}:
        raise FeatvisError("seed is the run's --seed (each image's seed derives from it); not a preset option")
    takes = preset_options(name)
    unknown = [k for k in options if k.strip().replace("-", "_") not in takes]
    if unknown:
        raise did_you_mean(f"option for preset {name}", unknown[0], list(takes),
                           hint=f"{name} takes {', '.join(takes)}")
    own, rest = PRESETS.get(name).split(options, name)
    return name, {**own, **rest}


def _progress_callback(steps: int | None):
    from featvis import _progress

    return lambda state: _progress.update("render step", state.step, steps or state.step, preview=state.images,
                                          score=float(state.scores[0]))  # the web page shows it beside the step


def _render_outputs(clf, res, batch: Batch, folder: str, classes: list[int] | None) -> list[Output]:
    from featvis.images import encode_png, quantize
    from featvis.models.classifier import frozen

    with torch.no_grad(), frozen(clf):
        probs = clf(quantize(res.images).to(clf.device)).softmax(-1)
    outputs = []
    for i, item in enumerate(batch.items):
        top = int(probs[i].argmax())
        rec = {"value": item.value, "title": res.titles[i] if i < len(res.titles) else item.key,
               "score": float(res.scores[i]), "image": f"{folder}/{item.key}.png",
               "ms_per_step": res.ms_per_step / len(batch), "top1": top, "top1_name": clf.labels[top],
               "top1_prob": float(probs[i, top])}
        if classes is not None:
            rec["target_prob"] = float(probs[i, classes[i]])
        outputs.append(Output(rec, {rec["image"]: encode_png(res.images[i])}))
    return outputs


def _image(read, rel: str) -> torch.Tensor:
    """A rendered image read back; one truncated or replaced since is `Damaged` (the runner redoes it)."""
    from featvis.images import load_image
    from featvis.tasks.results import Damaged

    blob = read(rel)
    try:
        return load_image(blob)
    except FeatvisError as e:
        raise Damaged(rel, str(e)) from None


def _grid(records: list[dict], info: Mapping[str, Any]) -> dict[str, bytes]:
    from featvis.figures import figure_png, render_grid

    shown = records[:GRID_MAX]
    read = info.get("read")
    if not shown or read is None:
        return {}
    imgs = torch.cat([_image(read, r["image"]) for r in shown])
    titles = [f"{r['title']}\n" + (f"p={r['target_prob']:.3f}" if "target_prob" in r else f"{r['score']:.2f}")
              for r in shown]
    return {"grid.png": figure_png(render_grid(imgs, titles), dpi=110)}


def _gallery(run, title: str, intro: str, what: str) -> Section:
    s = Section(title, intro)
    n = len(run.items)
    s.figures.append(("grid.png", f"{min(n, GRID_MAX)} of {n} images, preset {run.params.get('preset')}"))
    s.tables.append(Table("per image", [what, "objective score", "model's top-1", "p"],
                          [[r["title"], r["score"], f"{r['top1_name']} ({r['top1']})",
                            r.get("target_prob", r["top1_prob"])] for r in run.items]))
    return s


PRESET_HELP = "lab, lucid, lucid-fast, maco, pixel, yosinski-1..4 and more (see `featvis presets`)."


@dataclass(frozen=True)
class ClassvisParams:
    classes: tuple[int | str, ...] | str = param((), help="Class names or indices, or 'all'.", cli=False)
    preset: str = param("lucid", help=PRESET_HELP, metavar="PRESET")
    steps: int | None = param(None, help="Optimization steps (default: the preset's).", low=0, metavar="N")
    size: int | None = param(None, help="Image side in pixels (default: the model's input size).", low=16, high=1024,
                             metavar="PX")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        preset, options = check_preset(self.preset, self.options)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "options", options)
        if isinstance(self.classes, str) and self.classes != "all":
            object.__setattr__(self, "classes", (self.classes,))
        if not self.classes:
            raise FeatvisError("name at least one class (e.g. `featvis classvis tarantula`) or all classes "
                               "(--all-classes)")
        check_render(size=self.size, steps=self.steps)


@register
class ClassvisTask(Task):
    """An image per class that the model scores highly (class visualization), resumable over all 1000."""

    name = "classvis"
    title = "Class visualization"
    kind = "units"
    Params = ClassvisParams

    def _indices(self, clf) -> list[int]:
        if self.params.classes == "all":
            return list(range(len(clf.labels)))
        return list(dict.fromkeys(clf.labels.lookup(c) for c in self.params.classes))

    def prepare(self, clf) -> None:
        self._indices(clf)

    def units(self, clf) -> Dataset:
        return Dataset.of_units(((class_key(i, clf.labels[i]), i) for i in self._indices(clf)), "classes")

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.optvis import class_visualization

        p = self.params
        classes = [int(it.value) for it in batch.items]
        res = class_visualization(clf, classes, preset=p.preset, steps=p.steps, size=p.size, seed=batch.seeds,
                                  callback=_progress_callback(p.steps), **p.options)
        return _render_outputs(clf, res, batch, "images", classes)

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        probs = [r["target_prob"] for r in records]
        return {"images": len(records), "mean_target_prob": sum(probs) / len(probs) if probs else None,
                "top1_is_target": sum(r["top1"] == r["value"] for r in records) / max(len(records), 1),
                "grid": "grid.png"}

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        return _grid(records, info)

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        return {"image.png": record["image"]}

    @classmethod
    def section(cls, run) -> Section:
        return _gallery(run, f"Class visualization ({run.params.get('preset')})",
                        "Images synthesized from noise to maximize one class score. The <b>lab</b> preset is CS231n's "
                        "recipe (pixels, normalized gradient ascent, L2 penalty, jitter, periodic blur); <b>lucid</b> "
                        "optimizes a Fourier-space, colour-decorrelated image that must survive random jitter, "
                        "scaling and rotation (Olah et al. 2017), which turns adversarial noise into recognizable "
                        "parts. p is the model's probability of the class on the saved image.", "class")


@dataclass(frozen=True)
class FeaturesParams:
    layer: str = param("", help="Layer name (see `featvis layers`).", short="-l", metavar="NAME")
    channels: tuple[int, ...] | str = param((0,), help="Channel index or a comma list.", flag="--channel", short="-c",
                                            metavar="C", words=("all",))
    neuron: bool = param(False, help="Only the centre neuron of each channel.")
    preset: str = param("lucid", help=PRESET_HELP, metavar="PRESET")
    steps: int | None = param(None, help="Optimization steps (default: the preset's).", low=0, metavar="N")
    size: int | None = param(128, help="Image side in pixels.", low=16, high=1024, metavar="PX")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        preset, options = check_preset(self.preset, self.options)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "options", options)
        if not self.layer:
            raise FeatvisError("name a layer (see `featvis layers`), e.g. --layer blocks.8")
        if self.channels != "all":
            try:
                chans = tuple(int(c) for c in ([self.channels] if isinstance(self.channels, int) else self.channels))
            except (TypeError, ValueError):
                raise FeatvisError(f"channels {self.channels!r} must be integers, e.g. 7 or 0,5,9") from None
            if not chans or min(chans) < 0:
                raise FeatvisError(f"channels must be non-negative integers, got {self.channels!r}; give channel "
                                   "indices such as 0,5,9 (see `featvis layers` for each layer's channel count)")
            object.__setattr__(self, "channels", tuple(dict.fromkeys(chans)))
        check_render(size=self.size, steps=self.steps)


@register
class FeaturesTask(Task):
    """An image per channel (or centre neuron) of a layer; `channels="all"` renders the whole layer."""

    name = "features"
    title = "Feature visualization"
    kind = "units"
    Params = FeaturesParams

    def _layer(self, clf) -> tuple[str, int]:
        from featvis.layers import find_layer, list_layers

        name = find_layer(clf, self.params.layer)[0]
        info = next((i for i in list_layers(clf) if i.name == name), None)
        if info is None or not info.shape:
            raise FeatvisError(f"layer {name!r} produced no tensor output; pick another layer (featvis layers)")
        return name, int(info.shape[0])

    def _channels(self, clf) -> tuple[str, list[int]]:
        name, count = self._layer(clf)
        chans = list(range(count)) if self.params.channels == "all" else list(self.params.channels)
        bad = [c for c in chans if c >= count]
        if bad:
            raise FeatvisError(f"layer {layer_label(clf, name)!r} has {count} channels (0..{count - 1}); channel "
                               f"{bad[0]} does not exist")
        return name, chans

    def prepare(self, clf) -> None:
        self._channels(clf)

    def units(self, clf) -> Dataset:
        name, chans = self._channels(clf)
        tail = "-neuron" if self.params.neuron else ""
        return Dataset.of_units(((f"{name}-{c:04d}{tail}", c) for c in chans),
                                f"channels of {layer_label(clf, name)}")

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.optvis import feature_visualization

        p = self.params
        name, _ = self._layer(clf)
        res = feature_visualization(clf, name, [int(it.value) for it in batch.items], neuron=p.neuron,
                                    preset=p.preset, steps=p.steps, size=p.size, seed=batch.seeds,
                                    callback=_progress_callback(p.steps), **p.options)
        return _render_outputs(clf, res, batch, "images", None)

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        return {"images": len(records), "layer": self.params.layer, "grid": "grid.png"}

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        return _grid(records, info)

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        return {"image.png": record["image"]}

    @classmethod
    def section(cls, run) -> Section:
        return _gallery(run, f"Feature visualization: {run.params.get('layer')}",
                        "What single channels of a layer respond to: each image maximizes one channel's mean "
                        "activation (or its centre neuron). Early layers answer to colours and edges, middle ones to "
                        "textures and parts, late ones to object-like patterns. The forward pass stops at the layer.",
                        "channel")


@dataclass(frozen=True)
class AccentuateParams:
    layer: str = param("logits", help="A layer, or 'logits' for a class.", short="-l", metavar="NAME")
    channel: int | str = param(0, help="A channel of the layer, or a class for 'logits'.", short="-c", metavar="C")
    steps: int = param(96, help="Optimization steps.", low=0, metavar="N")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from featvis._registry import options_from
        from featvis.optvis.accentuation import accentuate

        takes = options_from(accentuate, skip=("steps", "seed"))
        checked = {}
        for key, value in self.options.items():
            k = key.replace("-", "_")
            if k not in takes:
                raise did_you_mean("option for accentuate", key, list(takes))
            checked[k] = takes[k].parse(value)
        object.__setattr__(self, "options", checked)
        if self.steps < 0:
            raise FeatvisError(f"steps must be >= 0, got {self.steps}")


@register
class AccentuateTask(Task):
    """Feature accentuation (Hamblin et al. 2024): each photo changed, staying close to itself, until a channel
    (or a class) fires more — what in *this* photo makes the feature fire."""

    name = "accentuate"
    title = "Feature accentuation"
    Params = AccentuateParams

    def _layer(self) -> str | None:
        return None if self.params.layer in ("logits", "") else self.params.layer

    def prepare(self, clf) -> None:
        layer = self._layer()
        if layer is None:
            clf.labels.lookup(self.params.channel)
        else:
            FeaturesTask(layer=layer, channels=(int(self.params.channel),)).prepare(clf)

    def run(self, clf, batch: Batch) -> list[Output]:
        import dataclasses

        from featvis.figures import accentuation_panels, figure_png
        from featvis.images import encode_png
        from featvis.optvis.accentuation import accentuate

        p = self.params
        res = accentuate(clf, batch.images, self._layer(), p.channel if self._layer() is None else int(p.channel),
                         steps=p.steps, seed=batch.seeds, **p.options)
        psnr = res.psnr
        outputs = []
        for i, item in enumerate(batch.items):
            one = dataclasses.replace(res, original=res.original[i:i + 1], accentuated=res.accentuated[i:i + 1],
                                      before=res.before[i:i + 1], after=res.after[i:i + 1],
                                      transparency=None if res.transparency is None else res.transparency[i:i + 1])
            rec = {"layer": res.layer, "channel": res.channels[i], "before": float(res.before[i]),
                   "after": float(res.after[i]), "psnr_db": float(psnr[i]),
                   "accentuated": f"accentuated/{item.key}.png", "figure": f"figures/{item.key}.png"}
            outputs.append(Output(rec, {rec["accentuated"]: encode_png(res.accentuated[i]),
                                        rec["figure"]: figure_png(accentuation_panels(one), dpi=100)}))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        gains = [r["after"] - r["before"] for r in records]
        return {"images": len(records), "mean_gain": sum(gains) / len(gains) if gains else None,
                "raised": sum(g > 0 for g in gains) / max(len(gains), 1),
                "median_psnr_db": sorted(r["psnr_db"] for r in records)[len(records) // 2] if records else None}

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        return {"accentuated.png": record["accentuated"], "panels.png": record["figure"]}

    @classmethod
    def section(cls, run) -> Section:
        p = run.params
        what = f"class {p.get('channel')}" if p.get("layer") in ("logits", "", None) else \
            f"channel {p.get('channel')} of {p.get('layer')}"
        s = Section(f"Feature accentuation: {what}",
                    "Each photo is changed as little as it takes to make the feature fire more (Hamblin et al. 2024): "
                    "the optimization works on the photo's own Fourier phase and magnitude and is held close to "
                    "the photo's activations, so what grows is what in <i>this</i> photo drives the feature. Panels: "
                    "original, accentuated, and the difference.")
        for r in run.items:
            s.figures.append((r["figure"], f"{item_name(r)}: {r['before']:.2f} → {r['after']:.2f}"))
        s.tables.append(Table("per image", ["image", "before", "after", "PSNR dB"],
                              [[item_name(r), r["before"], r["after"], r["psnr_db"]] for r in run.items]))
        return s
