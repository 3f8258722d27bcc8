"""Planning the fast copy: which (conv, BatchNorm) pairs fold and which convolutions apply their ReLU6, found by one
traced forward of the user's network and checked against it on the probe image.

The trace registers forward hooks on the user's network for one call, removed in `finally`: the one place outside
featvis.layers that makes hooks, because models/ must not import layers/ (which sits above it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from featvis.models.fast import _compat, known
from featvis.models.fast.fold import folded_copy
from featvis.models.fast.kernels import FUSE_MIN_BATCH
from featvis.models.fast.serving import first_tensor

PROBE_RTOL = 1e-3  # folded copy vs the user's network on the probe image, relative to the largest |logit|


@dataclass(frozen=True)
class Call:
    """One call of a submodule during `trace_calls`: its first input tensor and its output."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: object


def trace_calls(model: nn.Module, images: torch.Tensor, types: tuple[type, ...] = (nn.Module,),
                net: nn.Module | None = None) -> tuple[list[Call], object]:
    """Run `model(images)` once, as it is (mode and gradient mode untouched), recording every call of a submodule
    of `net` (default: `model`) of the given types, in the order the calls finished. The hooks are removed on return.

    Returns:
        (the calls, the model's output).
    """
    calls: list[Call] = []
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            calls.append(Call(name, module, first_tensor(inputs), output))

        return hook

    try:
        for name, module in (model if net is None else net).named_modules():
            if name and isinstance(module, types):
                handles.append(module.register_forward_hook(make_hook(name)))
        out = model(images)
    finally:
        for h in handles:
            h.remove()
    return calls, out


@dataclass(frozen=True)
class Plan:
    """What the copy changes: `pairs` (conv, BatchNorm) to fold, `fused` conv → the ReLU6 it applies, `private`
    the fused convs whose incoming gradient may be masked in place; `problem` says why less than found is done."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    fused: dict[str, str] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    problem: str | None = None


def plan(net: nn.Module, x: torch.Tensor, fuse: bool = False) -> Plan | None:
    """The (conv, BatchNorm) pairs to fold: the BatchNorm reads the conv's output and nothing else does, each
    module runs once. With `fuse`, also the folded convs whose BatchNorm output goes to a ReLU6 and nowhere else
    (conv name → ReLU6 module name): they apply the ReLU6 themselves (oneDNN post-op). Found by one traced forward
    of the first image; checked by comparing the copy's logits and input gradient with the network's on it (no
    pairs and a `problem` when the logits differ: run the user's network; no fusion when the gradient does). None
    when the network's output is not a tensor with a gradient."""
    with torch.inference_mode(False), torch.enable_grad():
        probe = x[:1].detach().clone().requires_grad_(True)
        calls, out = trace_calls(net, probe, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Hardtanh))
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return None
        readers = _readers(out.grad_fn)
        runs: dict[int, int] = {}
        for c in calls:
            runs[id(c.module)] = runs.get(id(c.module), 0) + 1
        made_by = {id(c.output): c for c in calls if isinstance(c.module, nn.Conv2d)}
        relu_of = {id(c.input): c for c in calls if is_relu6(c.module)}
        pairs, fused, private = [], {}, set()
        for c in calls:
            conv = made_by.get(id(c.input)) if _compat.is_batchnorm(c.module) else None
            if conv is None or conv.output is not c.input or runs[id(c.module)] != 1 or runs[id(conv.module)] != 1:
                continue
            if foldable(conv.module, c.module) and len(readers.get(c.input.grad_fn, ())) == 1:
                pairs.append((conv.name, c.name))
                if not fuse or not fusable_conv(conv.module):
                    continue
                if known.is_bn_act(c.module):  # timm's BatchNorm + activation in one module: its ReLU6 is its own
                    relu = c if is_relu6(c.module.act, inplace_ok=True) else None
                else:
                    relu = relu_of.get(id(c.output))
                    if relu is None or relu.input is not c.output or not isinstance(c.output, torch.Tensor) \
                            or len(readers.get(c.output.grad_fn, ())) != 1:
                        relu = None
                if relu is not None:
                    fused[conv.name] = relu.name
                    if conv_reads_only(readers, relu.output):
                        private.add(conv.name)
        if not pairs:
            return Plan()
        mods = dict(net.named_modules())
        copy, _ = folded_copy(net, mods, pairs, bool(fused), fused, private)
        got = copy(probe.detach().contiguous(memory_format=torch.channels_last) if fused else probe.detach())
        err = (got.detach() - out.detach()).abs().max()
        scale = out.detach().abs().max().clamp_min(1e-6)
        if not bool(err <= PROBE_RTOL * scale):
            return Plan(problem=f"folding BatchNorm changes its logits by {float(err):.3g} (> {PROBE_RTOL:g} of the "
                        "largest); running it as it is")
        if fused and not fused_gradient_ok(net, folded_copy(net, mods, pairs, True)[0], copy, probe.detach()):
            return Plan(pairs, problem="the fused ReLU6 changes its input gradient; folding without fusing")
    return Plan(pairs, fused, private)


def fused_gradient_ok(net: nn.Module, apart: nn.Module, copy: nn.Module, probe: torch.Tensor, side: int = 64
                      ) -> bool:
    """The fused convolutions' backward is featvis's own: the copy's input gradient must match `apart`'s (the same
    folded copy with every ReLU6 apart) within PROBE_RTOL, or within twice what rounding alone moves it (`apart`
    against the user's `net`: in a network with drawn weights a ReLU6 corner flipped by rounding moves gradients by
    more than PROBE_RTOL; a wrong backward moves them by far more). Checked at a batch where the fused call runs
    (FUSE_MIN_BATCH) and, to keep it cheap, on the probe shrunk to `side` px (full size where the network refuses
    that)."""
    small = F.interpolate(probe, size=(min(side, probe.shape[-2]), min(side, probe.shape[-1])), mode="bilinear",
                          align_corners=False, antialias=True)
    for x in (small, probe):
        batch = x.repeat(FUSE_MIN_BATCH, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        try:  # all three at the same batch: oneDNN's kernels, and so the rounding, change with the batch size
            g_net, g_apart, g_copy = (_input_grad_of_first(model, batch) for model in (net, apart, copy))
        except RuntimeError:  # e.g. a fixed input size: try the full-size probe
            continue
        allowed = torch.maximum(PROBE_RTOL * g_apart.abs().sum(), 2 * (g_apart - g_net).abs().sum())
        return bool((g_copy - g_apart).abs().sum() <= allowed.clamp_min(1e-12))
    return False


def _input_grad_of_first(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    b = batch.clone().requires_grad_(True)
    return torch.autograd.grad(model(b)[:1].sum(), b)[0][:1]


def _readers(output_fn) -> dict:
    """The autograd nodes that read each node's output, over the graph that produced `output_fn`."""
    readers: dict = {}
    stack, seen = [output_fn], {output_fn}
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            readers.setdefault(nxt, []).append(fn)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return readers


def conv_reads_only(readers: dict, t: object) -> bool:
    """`t`'s gradient comes from one convolution's input backward (through a zero-padding at most): a new tensor no
    other node holds, which the fused ReLU6's backward may mask in place."""
    node = t.grad_fn if isinstance(t, torch.Tensor) else None
    for _ in range(2):
        got = readers.get(node, ())
        if len(got) != 1:
            return False
        node = got[0]
        if _compat.is_conv_backward(node):
            return True
        if not _compat.is_pad_backward(node):
            return False
    return False


def foldable(conv: nn.Module, bn: nn.Module) -> bool:
    conv_ok = (type(conv).forward is nn.Conv2d.forward or known.is_same_padding(conv)) \
        and conv.weight.dim() == 4 and conv.weight.shape[0] == bn.num_features
    bn_ok = (type(bn).forward is _compat.batchnorm_forward() or known.is_bn_act(bn)) and bn.track_running_stats \
        and bn.running_mean is not None and bn.running_var is not None
    return conv_ok and bn_ok


def is_relu6(m: nn.Module, inplace_ok: bool = False) -> bool:
    return isinstance(m, nn.Hardtanh) and type(m).forward is nn.Hardtanh.forward and m.min_val == 0.0 \
        and m.max_val == 6.0 and (inplace_ok or not m.inplace)


def fusable_conv(conv: nn.Module) -> bool:
    if known.is_static_same(conv):
        return isinstance(getattr(conv, "static_padding", None), (nn.ZeroPad2d, nn.Identity)) \
            and not isinstance(conv.padding, str)
    if known.is_dynamic_same(conv):
        return True
    return type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros" \
        and not isinstance(conv.padding, str)

