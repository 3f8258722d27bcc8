"""Layers: find them by dotted name, capture their activations and gradients, run a model only up to one.

This is the only module that registers hooks. Every hook lives inside a `with` block and is removed in
`finally`. Gradients are captured with *tensor* hooks set from a forward hook — never module backward hooks,
which break on in-place ReLU and on activation modules reused in several places (captum #156, #199, #914).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from featvis.errors import FeatvisError, closest


def root(model: nn.Module) -> nn.Module:
    """The network whose submodules carry the layer names (a Classifier's inner `net`)."""
    from featvis.models.classifier import Classifier

    return model.net if isinstance(model, Classifier) else model


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in root(model).named_modules() if name]


def _strip(name: str) -> str:
    return ".".join(part.lstrip("_") for part in name.split("."))


def find_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The submodule called `name` (dotted PyTorch name; leading underscores optional: `blocks.3` = `_blocks.3`).

    Returns:
        (canonical name, module). Unknown names raise an error listing the closest names.
    """
    modules = dict(root(model).named_modules())
    key = name.strip().removeprefix("net.") if isinstance(name, str) else name
    if not isinstance(key, str) or not key:
        raise FeatvisError(f"layer name must be a non-empty string, got {name!r}")
    if key in modules and key:
        return key, modules[key]
    stripped = [n for n in modules if n and _strip(n) == _strip(key)]
    if len(stripped) == 1:
        return stripped[0], modules[stripped[0]]
    near = ", ".join(closest(key, [n for n in modules if n]))
    raise FeatvisError(f"unknown layer {name!r}; near names: {near} (run `featvis layers` to list all)")


def to_spatial(t: torch.Tensor) -> torch.Tensor:
    """Feature maps as [B, C, H, W]: transformer tokens [B, 1+HW, C] or [B, HW, C] are reshaped (CLS dropped)."""
    if t.ndim != 3:
        return t
    n = t.shape[1]
    for skip in (1, 0):  # a CLS token first is the common layout (ViT, DeiT)
        side = round((n - skip) ** 0.5)
        if side > 0 and side * side == n - skip:
            return t[:, skip:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    return t


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@dataclass
class Capture:
    """What `capture` recorded: every call's activation (and gradient) per layer name."""

    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grad_calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def act(self, name: str | None = None) -> torch.Tensor:
        """The activation of the layer's last call, as [B, C, H, W] when it is spatial or token-shaped."""
        return to_spatial(self._last(self.calls, name, "activation"))

    def grad(self, name: str | None = None) -> torch.Tensor:
        """The gradient with respect to that activation (after a backward pass), same shape as `act`."""
        return to_spatial(self._last(self.grad_calls, name, "gradient"))

    def _last(self, store: dict[str, list[torch.Tensor]], name: str | None, what: str) -> torch.Tensor:
        if name is None:
            if len(store) != 1:
                raise FeatvisError(f"name the layer: {what}s were captured for {sorted(store)}")
            name = next(iter(store))
        if not store.get(name):
            raise FeatvisError(f"no {what} captured for layer {name!r}; did the forward (and backward) pass run?")
        return store[name][-1]


@contextlib.contextmanager
def capture(model: nn.Module, layers: str | Sequence[str], *, grads: bool = False,
            detach: bool = False, as_leaf: bool = False) -> Iterator[Capture]:
    """Record the outputs (and, with `grads`, the output gradients) of named layers while the block runs.

    Downstream layers receive a clone of each captured output, so an in-place op after the layer (ReLU(inplace))
    cannot overwrite what was captured. Hooks are removed on exit, also after an exception: run the backward
    pass inside the block. With `as_leaf`, each captured output is replaced by a detached copy that requires grad:
    differentiate with respect to it, and run the model on inputs that don't require grad, so that no graph is
    recorded before the layer.

    Example:
        >>> with capture(clf, "blocks.10", grads=True) as cap:
        ...     clf(x)[:, 281].sum().backward()
        >>> cap.act(), cap.grad()
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    cap = Capture({name: [] for name, _ in found}, {name: [] for name, _ in found} if grads else {})
    handles = []  # module hooks and tensor hooks; all removed on exit (a tensor hook left on the graph would
    # close a Python↔autograd reference cycle that gc cannot collect: the leak of grad-cam #88)

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = _first_tensor(output)
            if out is None:
                return None
            if detach:
                cap.calls[name].append(out.detach().clone())
                return None
            if as_leaf:
                leaf = out.detach().clone().requires_grad_(True)
                cap.calls[name].append(leaf)
                onward = leaf.clone()  # downstream in-place ops must not touch the leaf itself
                return onward if isinstance(output, torch.Tensor) else (onward, *output[1:])
            cap.calls[name].append(out)
            if grads and out.requires_grad:
                handles.append(out.register_hook(cap.grad_calls[name].append))
            replaced = out.clone()
            return replaced if isinstance(output, torch.Tensor) else (replaced, *output[1:])

        return hook

    try:
        for name, module in found:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield cap
    finally:
        for h in handles:
            h.remove()


class _Stop(BaseException):
    pass


def forward_until(model: nn.Module, images: torch.Tensor, layers: str | Sequence[str]):
    """Run `model` on `images` only until the named layer(s) have produced output, then stop.

    Later layers never run, so an objective on an early layer costs a fraction of a full forward.
    A module called several times stops the pass at its first call.

    Returns:
        The activation ([B, C, H, W] for spatial or token outputs), or a dict of them for a list of names.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = _first_tensor(output)
            if out is not None and name not in acts:
                acts[name] = out
            if len(acts) == len(found):
                raise _Stop

        return hook

    try:
        for name, module in found:
            handles.append(module.register_forward_hook(make_hook(name)))
        with contextlib.suppress(_Stop):
            model(images)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, _ in found if n not in acts]
    if missing:
        raise FeatvisError(f"layer(s) {missing} did not run in the forward pass; pick layers the model uses")
    if isinstance(layers, str):
        return to_spatial(acts[found[0][0]])
    return {n: to_spatial(acts[n]) for n, _ in found}


@dataclass(frozen=True)
class LayerInfo:
    """A layer as `featvis layers` lists it."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # output shape for one input image; None if it did not run
    calls: int  # how many times it ran in one forward pass (>1: a reused module)
    params: int
    order: int  # position in execution order (when its forward finished)


_LAYER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def list_layers(model: nn.Module, size: int | None = None, filter: str | None = None) -> list[LayerInfo]:
    """Every named layer with its output shape, found by one probe forward pass on a blank image."""
    side = size or getattr(getattr(model, "preprocess", None), "size", 224)
    cached = _LAYER_CACHE.get(model, {}).get(side)
    if cached is None:
        cached = _probe(model, side)
        _LAYER_CACHE.setdefault(model, {})[side] = cached
    if filter:
        cached = [info for info in cached if filter.lower() in info.name.lower() or filter.lower() in info.type.lower()]
    return cached


def _probe(model: nn.Module, side: int) -> list[LayerInfo]:
    modules = [(n, m) for n, m in root(model).named_modules() if n]
    shapes: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {n: 0 for n, _ in modules}
    order: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            counts[name] += 1
            out = _first_tensor(output)
            if out is not None:
                shapes[name] = tuple(to_spatial(out).shape[1:])
            order[name] = len(order) if name not in order else order[name]

        return hook

    from featvis.models.classifier import frozen

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        with frozen(model), torch.no_grad():
            model(torch.full((1, 3, side, side), 0.5, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    infos = [LayerInfo(n, type(m).__name__, shapes.get(n), counts[n], sum(p.numel() for p in m.parameters()),
                       order.get(n, -1)) for n, m in modules]
    return infos


def default_layer(model: nn.Module) -> str:
    """The last spatial feature layer (the usual Grad-CAM layer): the last module, in execution order, whose
    output is a feature map larger than 1×1, skipping activation modules that are reused in several places."""
    spatial = [i for i in list_layers(model) if i.shape is not None and len(i.shape) == 3
               and i.shape[1] * i.shape[2] > 1 and i.calls == 1]
    if not spatial:
        raise FeatvisError("this model has no spatial feature layer (no [C, H, W] output); name a layer")
    return max(spatial, key=lambda i: i.order).name


@contextlib.contextmanager
def swapped_forward(model: nn.Module, types: tuple[type, ...], make_forward) -> Iterator[int]:
    """Temporarily replace the forward of every submodule of the given types with `make_forward(module)`.

    Used by modified-backward methods (guided backprop) so that the gradient rule applies to every call of a
    reused activation module and ignores `inplace=True`. The original forwards are restored on exit.

    Yields:
        how many modules were swapped.
    """
    swapped = [m for m in root(model).modules() if isinstance(m, types)]
    try:
        for m in swapped:
            m.forward = make_forward(m)
        yield len(swapped)
    finally:
        for m in swapped:
            m.__dict__.pop("forward", None)
