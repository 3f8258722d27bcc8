"""Split a classifier at a layer into g (images → the layer's activations) and h (those activations → logits).

CRAFT (Fel et al., CVPR 2023) factorizes g's output and measures concepts through h. g runs the model only up to
the layer (`featvis.layers.forward_until`). h is the tail of the network's `torch.fx` graph after the layer's call
when the network traces and that tail reads nothing but the layer's output ("fx"); otherwise the full model runs on
a blank input with the layer's output replaced (`featvis.layers.replace_output`, "hook": correct, slower). Either
way `split_at` checks once that h(g(x)) is the classifier's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from featvis.errors import FeatvisError
from featvis.layers import (
    capture,
    default_layer,
    find_layer,
    forward_until,
    layer_label,
    replace_output,
    root,
    tap,
    trace_calls,
)
from featvis.models.freeze import frozen

SPLIT_RTOL = 1e-4  # h(g(x)) vs clf(x), relative to the largest logit: the fast copy's float tolerance is ~1e-5
PROBE_SEED = 0  # the noise images the split is checked on
PROBE_IMAGES = 2


@dataclass(frozen=True, eq=False)
class Split:
    """A classifier cut at one call of a layer: `latent` is g, `head` is h, `head(latent(x)) == clf(x)`.

    `call` counts the layer's calls in one forward (0: the first; a module reused in several places runs more than
    once). `mode` is "fx" (h is the traced tail of the graph) or "hook" (h runs the whole model with the layer's
    output replaced).
    """

    clf: nn.Module
    layer: str
    call: int
    mode: str
    tail: nn.Module | None = None  # the fx GraphModule of the layers after the split (mode "fx")

    @property
    def label(self) -> str:
        """The layer as people read it (with the call where the module runs more than once)."""
        name = layer_label(self.clf, self.layer)
        return f"{name} (call={self.call})" if self.call else name

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """g: the layer's activations [B, C, h, w] for images [B, 3, H, W] in [0, 1]."""
        return forward_until(self.clf, images, self.layer, call=self.call)

    def latent_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g(images) and the logits, from one full forward (no gradients)."""
        with torch.no_grad(), frozen(self.clf), tap(self.clf, self.layer) as seen:
            logits = self.clf(images)
        if len(seen) <= self.call:
            raise FeatvisError(f"layer {self.label!r} ran {len(seen)} time(s) in the forward pass; "
                               f"expected call={self.call}")
        return seen[self.call], logits

    def head(self, acts: torch.Tensor) -> torch.Tensor:
        """h: the logits [B, K] from activations of the layer [B, C, h, w]."""
        with frozen(self.clf):
            acts = acts.to(_dtype(self.clf), copy=True)  # the layers after may work in place (ReLU(inplace))
            if self.tail is not None:
                return self.tail(acts)
            side = self.clf.input_size if hasattr(self.clf, "input_size") else acts.shape[-1]
            blank = torch.zeros(acts.shape[0], 3, side, side, device=acts.device, dtype=_dtype(self.clf))
            with replace_output(self.clf, self.layer, acts, call=self.call):
                return self.clf(blank)


def split_at(clf: nn.Module, layer: str | None = None, *, call: int | None = None) -> Split:
    """Split `clf` at `layer` (default: the last feature map, or where it can be negative the first non-negative
    output after it, as CRAFT needs; `craft_layer`).

    Args:
        layer: a layer name (`featvis layers` lists them); None for the default.
        call: which call of a module that runs several times per forward (0: the first). Default: 0, or for the
            default layer the call found there.

    Returns:
        The Split; `split.mode` says how h runs. A layer that the rest of the network does not read alone (a skip
        connection goes around it) cannot be split: a one-line error says so.

    Example:
        >>> split = split_at(clf)
        >>> logits = split.head(split.latent(images))
    """
    if layer is None:
        layer, found_call = craft_layer(clf)
        call = found_call if call is None else call
    name, _ = find_layer(clf, layer)
    call = 0 if call is None else int(call)
    probe = _probe(clf)
    with torch.no_grad(), frozen(clf):
        acts = forward_until(clf, probe, name, call=call)
        want = clf(probe)
        if acts.dim() != 4:
            raise FeatvisError(f"layer {layer!r} gives activations of shape {tuple(acts.shape)}; CRAFT needs a "
                               "feature map [B, C, h, w]: split at a convolutional layer")
        tail = _fx_tail(root(clf), name, call)
        for mode, candidate in (("fx", tail), ("hook", None)):
            if mode == "fx" and candidate is None:
                continue
            split = Split(clf, name, call, mode, candidate)
            got = split.head(acts)
            if got.shape == want.shape and _close(got, want):
                return split
    raise FeatvisError(f"the layers after {layer!r} read more than its output (a skip connection around it?): "
                       "split at a block's output instead (`featvis layers` lists them)")


def craft_layer(clf: nn.Module) -> tuple[str, int]:
    """The default split for CRAFT: the last feature map (`featvis.layers.default_layer`) when its activations are
    non-negative, else the first non-negative feature map of the same size computed after it (the ReLU that
    follows a last BatchNorm: efficientnet-lite0's `_bn1` → its head ReLU6, the second call of `_swish`).

    Returns:
        (layer name, call).
    """
    name = default_layer(clf)
    calls = probe_calls(clf)
    at = next((i for i, c in enumerate(calls) if c.name == name), None)
    if at is None or calls[at].low >= 0:
        return name, 0
    size = calls[at].output.shape[-2:]
    for c in calls[at + 1:]:
        if c.output.dim() == 4 and c.output.shape[-2:] == size and c.low >= 0:
            return c.name, c.call
    return name, 0


def nearest_nonnegative(clf: nn.Module, layer: str, call: int = 0) -> str | None:
    """The nearest feature map to `layer` (after it first, then before) whose activations on noise are
    non-negative, as words naming where to split; None if there is none."""
    calls = probe_calls(clf)
    reused = {c.name for c in calls if c.call}
    at = next((i for i, c in enumerate(calls) if c.name == layer and c.call == call), None)
    if at is None:  # a container (a whole block) is not among the probed calls: name the default split
        name, default_call = craft_layer(clf)
        label = layer_label(clf, name)
        return f"{label!r} (call={default_call})" if name in reused else repr(label)
    for c in calls[at + 1:] + calls[:at][::-1]:
        if c.output.dim() == 4 and c.output.shape[-1] > 1 and c.low >= 0:
            name = layer_label(clf, c.name)
            return f"{name!r} (call={c.call})" if c.name in reused else repr(name)
    return None


@dataclass(frozen=True)
class ProbedCall:
    """One call of a leaf layer on the probe batch: which call of the module it is, its output and minimum."""

    name: str
    call: int
    output: torch.Tensor
    low: float


def probe_calls(clf: nn.Module) -> list[ProbedCall]:
    """Every leaf layer's calls on a noise batch, in execution order."""
    names = [n for n, m in root(clf).named_modules() if n and not any(True for _ in m.children())]
    probe = _probe(clf)
    with torch.no_grad(), frozen(clf):
        traced, _ = trace_calls(clf, probe)  # the order of the calls
        with capture(clf, names, detach=True) as cap:  # their outputs, cloned before an in-place op changes them
            clf(probe)
    taken: dict[str, int] = {}
    out = []
    for c in traced:
        i = taken.get(c.name, 0)
        if i < len(cap.calls.get(c.name, ())):
            taken[c.name] = i + 1
            t = cap.calls[c.name][i]
            out.append(ProbedCall(c.name, i, t, float(t.min())))
    return out


class _LeafTracer(fx.Tracer):
    """Traces through containers only: every module without children (and the split layer) stays one call."""

    def __init__(self, keep: str) -> None:
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.keep or not any(True for _ in m.children()) or super().is_leaf_module(m, qualname)


class _Unsplittable(Exception):
    """The tail after the split reads something other than the layer's output."""


def _fx_tail(net: nn.Module, layer: str, call: int) -> fx.GraphModule | None:
    """The graph of `net` after call `call` of `layer`, as a module of the layer's output; None where `net` does
    not trace or the tail needs more than that output (the batch size of the input excepted)."""
    try:
        graph = _LeafTracer(layer).trace(net)
    except Exception:  # fx fails in many ways on dynamic code; the hook path covers every network
        return None
    hits = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(hits) <= call:
        return None
    cut = hits[call]
    out_node = next(n for n in graph.nodes if n.op == "output")
    tail = fx.Graph()
    acts = tail.placeholder("acts")
    env: dict[fx.Node, fx.Node] = {cut: acts}
    try:
        needed = _ancestors(out_node, cut)
        for node in graph.nodes:
            if node in needed and node not in env:
                if _is_batch_size(node):
                    env[node] = tail.call_method("size", (acts, 0))
                    continue
                if node.op == "placeholder":
                    raise _Unsplittable(node.name)
                env[node] = tail.node_copy(node, lambda n: env[n])
    except _Unsplittable:
        return None
    tail.lint()
    return fx.GraphModule(net, tail)


def _ancestors(out: fx.Node, cut: fx.Node) -> set[fx.Node]:
    """The nodes `out` is computed from, not looking past `cut` nor into a batch-size read."""
    seen, stack = set(), [out]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node is not cut and not _is_batch_size(node):
            stack.extend(node.all_input_nodes)
    return seen


def _is_batch_size(node: fx.Node) -> bool:
    """`x.size(0)` of the network's input (efficientnet's `bs = inputs.size(0)`): the acts' batch size too."""
    args = node.args
    return (node.op == "call_method" and node.target == "size" and len(args) == 2 and args[1] == 0
            and isinstance(args[0], fx.Node) and args[0].op == "placeholder")


def _probe(clf: nn.Module) -> torch.Tensor:
    side = getattr(clf, "input_size", 224)
    gen = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.rand(PROBE_IMAGES, 3, side, side, generator=gen)
    first = next(clf.parameters(), None)
    return x.to(device=first.device if first is not None else "cpu", dtype=_dtype(clf))


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = float(want.abs().max()) or 1.0
    return float((got.float() - want.float()).abs().max()) <= SPLIT_RTOL * scale


def _dtype(clf: nn.Module) -> torch.dtype:
    return next((p.dtype for p in clf.parameters() if p.is_floating_point()), torch.float32)
