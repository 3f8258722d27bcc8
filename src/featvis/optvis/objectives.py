"""Objectives: what a visualization maximizes. Each maps the run's activations to a score per image [B];
`+`, `-` and scalar `*` compose them. The sign flips once, in `render`.

Per-image arguments (a list of classes or channels, one per image) visualize many things in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from featvis.errors import FeatvisError

LOGITS = "<logits>"  # the pseudo-layer name for the model's output


@dataclass
class Context:
    """What an objective may look at: the images the model saw, its logits (if run), and layer activations."""

    images: torch.Tensor
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    clf: object = None
    views: int = 1  # views of each image the model saw this step (images and activations are view-major)
    seen: torch.Tensor | None = None  # the transformed images the model saw (an objective may run its own pass)

    def act(self, layer: str) -> torch.Tensor:
        return self.acts[layer]

    @property
    def logits(self) -> torch.Tensor:
        return self.acts[LOGITS]


@dataclass(frozen=True)
class Objective:
    """A score per image to maximize, with the layers it needs (LOGITS for the model output)."""

    fn: Callable[[Context], torch.Tensor]
    layers: tuple[str, ...]
    name: str

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)):
            return Objective(lambda c: self.fn(c) + other, self.layers, f"{self.name} + {other}")
        return Objective(lambda c: self.fn(c) + other.fn(c), _merge(self, other), f"{self.name} + {other.name}")

    __radd__ = __add__

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-1 * other)

    def __mul__(self, k: float) -> Objective:
        if not isinstance(k, (int, float)):
            raise FeatvisError("objectives multiply by numbers only (k * objective)")
        return Objective(lambda c: k * self.fn(c), self.layers, f"{k:g}·({self.name})")

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1 * self


def _merge(a: Objective, b: Objective) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.layers + b.layers))


def _per_image(values, batch: int, what: str, views: int = 1) -> list:
    """One value per image. The model may see several views of each image per step (render's `views`), laid out
    view-major ([view 0 of every image, view 1 of every image, ...]): a list for the images repeats per view."""
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    if isinstance(values, (int, str)):
        values = [values] * batch
    values = list(values)
    if views > 1 and len(values) * views == batch:
        values = values * views
    if len(values) != batch:
        raise FeatvisError(f"{what} has {len(values)} entries for a batch of {batch}; give one, or one per image")
    return values


def class_logit(target: int | str | Sequence[int | str]) -> Objective:
    """The class's logit (pre-softmax score), as the lab and Simonyan et al. optimize."""

    def fn(c: Context) -> torch.Tensor:
        idx = [c.clf.labels.lookup(t) for t in _per_image(target, c.logits.shape[0], "class_logit", c.views)]
        return c.logits.gather(1, torch.tensor(idx, device=c.logits.device)[:, None])[:, 0]

    return Objective(fn, (LOGITS,), f"class_logit({target})")


def class_prob(target: int | str | Sequence[int | str]) -> Objective:
    """The class's log-probability (maximizing it also pushes the other classes down)."""

    def fn(c: Context) -> torch.Tensor:
        idx = [c.clf.labels.lookup(t) for t in _per_image(target, c.logits.shape[0], "class_prob", c.views)]
        return c.logits.log_softmax(-1).gather(1, torch.tensor(idx, device=c.logits.device)[:, None])[:, 0]

    return Objective(fn, (LOGITS,), f"class_prob({target})")


def _unit_maps(acts: torch.Tensor, layer: str) -> torch.Tensor:
    """Activations as [B, C, H, W]; a [B, C] output (a linear layer, pooled features) is C units, each a 1×1 map."""
    if acts.ndim == 2:
        return acts[:, :, None, None]
    if acts.ndim != 4:
        raise FeatvisError(f"layer {layer!r} outputs {list(acts.shape[1:])} per image; channel, neuron and direction "
                           "objectives need [C, H, W] maps or [C] units: pick another layer (featvis layers)")
    return acts


def _check_channel(acts: torch.Tensor, n: int, layer: str) -> None:
    if not 0 <= n < acts.shape[1]:
        raise FeatvisError(f"channel {n} is out of range for layer {layer!r} with {acts.shape[1]} channels")


def channel(layer: str, n: int | Sequence[int]) -> Objective:
    """Mean activation of channel `n` of `layer` (one channel per image with a list)."""

    def fn(c: Context) -> torch.Tensor:
        a = _unit_maps(c.act(layer), layer)
        ns = _per_image(n, a.shape[0], "channel", c.views)
        for k in set(ns):
            _check_channel(a, k, layer)
        idx = torch.tensor(ns, device=a.device)
        return a[torch.arange(a.shape[0], device=a.device), idx].mean((1, 2))

    return Objective(fn, (layer,), f"channel({layer}:{n})")


def neuron(layer: str, n: int | Sequence[int], x: int | None = None, y: int | None = None) -> Objective:
    """The activation of channel `n` at one spatial position (the centre by default)."""

    def fn(c: Context) -> torch.Tensor:
        a = _unit_maps(c.act(layer), layer)
        ns = _per_image(n, a.shape[0], "neuron", c.views)
        for k in set(ns):
            _check_channel(a, k, layer)
        yy = a.shape[2] // 2 if y is None else y
        xx = a.shape[3] // 2 if x is None else x
        if not (0 <= yy < a.shape[2] and 0 <= xx < a.shape[3]):
            raise FeatvisError(f"neuron position ({xx}, {yy}) is outside the {a.shape[3]}×{a.shape[2]} map of "
                               f"{layer!r}")
        return a[torch.arange(a.shape[0], device=a.device), torch.tensor(ns, device=a.device), yy, xx]

    return Objective(fn, (layer,), f"neuron({layer}:{n})")


def layer(name: str) -> Objective:
    """DeepDream: the mean squared activation of a whole layer."""
    return Objective(lambda c: c.act(name).pow(2).flatten(1).mean(1), (name,), f"layer({name})")


def direction(layer_name: str, vector: torch.Tensor) -> Objective:
    """Activation along a direction in channel space, averaged over positions (Lucid's `direction`).

    `vector` is one direction [C] for every image, or one per image [B, C] (a concept bank: image i climbs row i).
    """

    def fn(c: Context) -> torch.Tensor:
        return along(_unit_maps(c.act(layer_name), layer_name), vector, c.views, f"layer {layer_name!r}")

    return Objective(fn, (layer_name,), f"direction({layer_name})")


def along(acts: torch.Tensor, vector: torch.Tensor, views: int, where: str) -> torch.Tensor:
    """The activation maps [N, C, H, W] along `vector` (one [C] for all, or [B, C] one per image, repeated per
    view: N = views · B, view-major), averaged over positions: [N]."""
    v = torch.as_tensor(vector, dtype=acts.dtype, device=acts.device)
    rows = v.reshape(-1, v.shape[-1]) if v.dim() == 2 else v.flatten()[None]
    if rows.shape[-1] != acts.shape[1]:
        raise FeatvisError(f"direction has {rows.shape[-1]} entries; {where} has {acts.shape[1]} channels")
    if rows.shape[0] > 1:  # one per image; views are laid out view-major, as in _per_image
        if rows.shape[0] * views == acts.shape[0]:
            rows = rows.repeat(views, 1)
        elif rows.shape[0] != acts.shape[0]:
            raise FeatvisError(f"{rows.shape[0]} directions for a batch of {acts.shape[0] // views}; give one, or one "
                               "per image")
    return (acts * rows[:, :, None, None]).sum(1).mean((1, 2))


def diversity(layer_name: str) -> Objective:
    """Minus the cosine similarity of each image's Gram matrix to the others' (Olah et al. 2017): a batch of
    images for one objective spreads out over different features."""

    def fn(c: Context) -> torch.Tensor:
        a = c.act(layer_name)
        n, ch = a.shape[:2]
        b = n // c.views  # images per view: each view's images are compared with each other
        if b < 2:
            return torch.zeros(n, device=a.device, dtype=a.dtype)
        flat = a.reshape(c.views, b, ch, -1)
        gram = torch.nn.functional.normalize((flat @ flat.transpose(-1, -2)).reshape(c.views, b, -1), dim=-1)
        sim = gram @ gram.transpose(1, 2)  # [views, b, b]
        return (-(sim.sum(-1) - sim.diagonal(dim1=1, dim2=2)) / (b - 1)).reshape(n)

    return Objective(fn, (layer_name,), f"diversity({layer_name})")


def l2(weight: float = 1.0, center: float = 0.5) -> Objective:
    """Minus the squared distance of the image from mid-grey (a penalty: add it, it is already negative)."""
    return Objective(lambda c: -weight * (c.images - center).pow(2).flatten(1).sum(1), (), f"l2({weight:g})")


def total_variation(weight: float = 1.0) -> Objective:
    """Minus the total variation of the image (a smoothness penalty)."""

    def fn(c: Context) -> torch.Tensor:
        x = c.images
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1) + \
            (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
        return -weight * tv

    return Objective(fn, (), f"tv({weight:g})")
