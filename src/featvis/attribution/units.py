"""Unit targets: explain an internal unit (a channel, a neuron, a direction in a layer) instead of a class score.

`target="layer:blocks.8:17"` explains channel 17's mean activation in `blocks.8`; `"layer:blocks.8:17@7,3"` the
neuron of channel 17 at column 7, row 3; `unit("blocks.8", direction=v)` (Python) or `"layer:blocks.8:dir=v.npy"`
(a file of C numbers) the activation along v averaged over positions, as `optvis.objectives.direction` scores it.

Every registered attribution method takes them with no code of its own: the registry hands the method a
`UnitClassifier`, the classifier whose only "class" is the unit's score, computed by running the network only up
to the unit's layer (`forward_until`: the layers after it never run). Gradients, integrated gradients, occlusion,
RISE ... then explain that score. CAM methods take the unit's own layer unless given one (a CAM layer after the
unit's never runs). The softmax of one score is constant, so only `score="logit"` (the unit's value) means anything.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featvis.errors import FeatvisError
from featvis.models.classifier import Classifier
from featvis.models.labels import Labels

PREFIX = "layer:"
_SPEC = re.compile(r"^(?P<layer>[^:@]+):(?P<what>[^@]+?)(?:@(?P<x>-?\d+),(?P<y>-?\d+))?$")


@dataclass(frozen=True)
class Unit:
    """A unit of a layer: a channel (its mean over positions), a neuron (a channel at column x, row y) or a
    direction in channel space (its dot product with the activations, averaged over positions)."""

    layer: str
    channel: int | None = None
    x: int | None = None
    y: int | None = None
    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.channel is None) == (self.direction is None):
            raise FeatvisError("a unit is one channel or one direction of a layer: give channel=N or direction=v")
        if (self.x is None) != (self.y is None):
            raise FeatvisError("a neuron needs both its column and its row (x and y; layer:NAME:C@X,Y)")
        if self.channel is not None and self.channel < 0:
            raise FeatvisError(f"channel {self.channel} is negative; channels count from 0")

    @property
    def label(self) -> str:
        """How tables and figure titles name it: blocks.8:17, blocks.8:17@7,3, blocks.8:direction."""
        if self.direction is not None:
            return f"{self.layer}:direction"
        return f"{self.layer}:{self.channel}" + ("" if self.x is None else f"@{self.x},{self.y}")

    def score(self, acts: torch.Tensor) -> torch.Tensor:
        """The unit's value [B] from the layer's activations ([B, C, H, W], or [B, C] units)."""
        from featvis.optvis.objectives import _check_channel, _unit_maps, along

        a = _unit_maps(acts, self.layer)
        if self.direction is not None:
            return along(a, self.direction, 1, f"layer {self.layer!r}")
        _check_channel(a, self.channel, self.layer)
        if self.x is None:
            return a[:, self.channel].mean((1, 2))
        if not (0 <= self.y < a.shape[2] and 0 <= self.x < a.shape[3]):
            raise FeatvisError(f"neuron position ({self.x}, {self.y}) is outside the {a.shape[3]}×{a.shape[2]} map "
                               f"of {self.layer!r}; columns 0-{a.shape[3] - 1}, rows 0-{a.shape[2] - 1}")
        return a[:, self.channel, self.y, self.x]


def unit(layer: str, channel: int | None = None, *, x: int | None = None, y: int | None = None,
         direction: torch.Tensor | None = None) -> Unit:
    """A unit target for any attribution method: `saliency(clf, x, unit("blocks.8", 17), method="gradient")`.

    Args:
        layer: the layer's name (`featvis layers`).
        channel: the channel, explained by its mean activation; with `x` and `y`, the neuron at that position.
        direction: instead of a channel, a vector of C numbers (a CAV, a concept from `featvis concepts`).
    """
    vec = None if direction is None else torch.as_tensor(direction, dtype=torch.float32).flatten()
    return Unit(str(layer), None if channel is None else int(channel), x, y, vec)


def is_unit(target: Any) -> bool:
    return isinstance(target, Unit) or (isinstance(target, str) and target.strip().lower().startswith(PREFIX))


def parse_unit(target: Unit | str) -> Unit:
    """A `Unit` from "layer:NAME:C", "layer:NAME:C@X,Y" or "layer:NAME:dir=FILE.npy" (a Unit passes through)."""
    if isinstance(target, Unit):
        return target
    text = target.strip()[len(PREFIX):]
    m = _SPEC.match(text)
    if m is None:
        raise FeatvisError(f"unit target {target!r} is not layer:NAME:CHANNEL, layer:NAME:CHANNEL@X,Y or "
                           "layer:NAME:dir=FILE.npy (e.g. layer:blocks.8:17)")
    layer, what = m["layer"].strip(), m["what"].strip()
    if what.startswith("dir="):
        if m["x"] is not None:
            raise FeatvisError(f"unit target {target!r}: a direction has no position; drop @X,Y")
        return unit(layer, direction=_read_direction(what[4:]))
    if not what.isdigit():
        raise FeatvisError(f"unit target {target!r}: {what!r} is not a channel number (or dir=FILE.npy)")
    xy = (None, None) if m["x"] is None else (int(m["x"]), int(m["y"]))
    if xy[0] is not None and min(xy) < 0:
        raise FeatvisError(f"unit target {target!r}: positions count from 0")
    return unit(layer, int(what), x=xy[0], y=xy[1])


def _read_direction(path: str) -> torch.Tensor:
    import numpy as np

    p = Path(path).expanduser()
    try:
        v = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeatvisError(f"cannot read the direction {path!r} ({type(e).__name__}); give a .npy file of C "
                           "numbers (numpy.save)") from None
    if v.dtype.kind not in "fiu" or v.size == 0 or not np.isfinite(v).all():
        raise FeatvisError(f"the direction in {path!r} must be finite numbers, one per channel")
    return torch.from_numpy(v.astype("float32")).flatten()


class UnitClassifier(Classifier):
    """`clf` with one output: the unit's score. It shares `clf`'s network (so layer names, hooks and the fast
    copy are the same) and runs it only up to the unit's layer."""

    def __init__(self, clf: Classifier, target: Unit, layer_label: str | None = None) -> None:
        shown = target.label if layer_label is None else layer_label + target.label[len(target.layer):]
        super().__init__(clf.net, mean=clf.mean.flatten().tolist(), std=clf.std.flatten().tolist(),
                         labels=Labels([(shown,)]), preprocess=clf.preprocess, name=clf.name)
        self.__dict__["base"] = clf  # not a submodule: the network is registered once, as `net`
        self.unit, self.fast, self.source, self._weights_hash = target, clf.fast, clf.source, clf._weights_hash
        self.mean, self.std = clf.mean, clf.std  # on the classifier's device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from featvis.layers import forward_until

        acts = forward_until(self.base, images, self.unit.layer)
        return self.unit.score(acts.to(images.dtype))[:, None]


def unit_classifier(clf: Classifier, target: Unit | str) -> UnitClassifier:
    """The classifier whose one class is the unit `target` (see the module docstring); the layer is checked here."""
    from featvis.layers import find_layer, layer_label, list_layers

    u = parse_unit(target)
    name, _ = find_layer(clf, u.layer)
    shape = next((i.shape for i in list_layers(clf) if i.name == name), None)  # per image, at the input size
    label = layer_label(clf, name)
    if shape and len(shape) in (1, 3):
        c = shape[0]
        if u.channel is not None and u.channel >= c:
            raise FeatvisError(f"channel {u.channel} is out of range for layer {label!r} with {c} channels (0-{c - 1})")
        if u.direction is not None and u.direction.numel() != c:
            raise FeatvisError(f"the direction has {u.direction.numel()} numbers; layer {label!r} has {c} channels")
        if u.x is not None and len(shape) == 3 and not (u.y < shape[1] and u.x < shape[2]):
            raise FeatvisError(f"neuron position ({u.x}, {u.y}) is outside the {shape[2]}×{shape[1]} map of {label!r} "
                               f"at {clf.input_size} px; columns 0-{shape[2] - 1}, rows 0-{shape[1] - 1}")
    return UnitClassifier(clf, Unit(name, u.channel, u.x, u.y, u.direction), label)


def with_units(fn: Callable) -> Callable:
    """`fn(clf, images, target, ...)` that also takes a unit target (the attribution registry wraps every method)."""

    @functools.wraps(fn)
    def method(clf, images, target=None, *args, **options):
        if isinstance(target, (list, tuple)) and any(is_unit(t) for t in target):
            raise FeatvisError("give one unit target for the whole batch (layer:NAME:C), not one per image")
        if not is_unit(target):
            return fn(clf, images, target, *args, **options)
        if options.get("score", "logit") != "logit":
            raise FeatvisError(f"score {options['score']!r} needs class probabilities; a unit target explains the "
                               "unit's value: use score=logit")
        if isinstance(clf, UnitClassifier) and target is clf.unit:  # built by the caller for this unit: reuse it
            uclf = clf
        else:
            uclf = unit_classifier(clf.base if isinstance(clf, UnitClassifier) else clf, target)
        if "layer" in _parameters(fn) and options.get("layer") is None:
            options["layer"] = uclf.unit.layer  # a CAM layer after the unit's would never run
        return fn(uclf, images, 0, *args, **options)

    return method


@functools.cache
def _parameters(fn: Callable) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(fn).parameters)
