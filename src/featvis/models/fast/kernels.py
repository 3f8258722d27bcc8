"""The modules and autograd Functions the fast copy is made of, beside the user's own modules it shares.

Measured timings behind the choices here are in benchmarks/results/fast_path_timings.md (not in these comments,
where they would go stale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featvis.models.fast import _compat, serving

# Below this batch the fused conv + ReLU6 call is slower than conv then clamp on CPU (benchmarks/results/
# fast_path_timings.md, "FUSE_MIN_BATCH").
FUSE_MIN_BATCH = 4
CLAMPED = "_featvis_relu6"  # attribute set on a fused convolution's output: its ReLU6 is already applied


class _ChannelsLast(torch.autograd.Function):
    """NCHW → channels-last copy whose backward hands the gradient back contiguous (NCHW), so an input gradient
    has the layout of the input it belongs to (`.view` works on it as on the user's network's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _SameConv2d(nn.Module):
    """A folded convolution with TensorFlow's dynamic "same" padding, as `Conv2dDynamicSamePadding` and timm's
    `Conv2dSame` compute it: pad max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0), the smaller half before. At stride 1 the
    two halves are equal ((k − 1)·d even) for every input size, so the conv pads itself: no padded copy of the
    activations forward, and none of its gradient backward (the largest non-conv cost in Lite0's profile).

    A stride-2 depthwise conv on an even size pads one more after than before (k = 3: 0 and 1). There it runs a
    kernel one tap larger, the new first tap zero, with the larger half on both sides: the same sums (the zero tap
    adds exact zeros), the same output size, and no padded copy. oneDNN's depthwise kernels take any size, and
    this more than halves those convs' forward+backward; a dense conv keeps the padded copy, where the larger
    kernel's input backward costs more than the copy (benchmarks/results/fast_path_timings.md, "_SameConv2d")."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride, dilation, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        spans = [(k - 1) * d for k, d in zip(weight.shape[-2:], self.dilation, strict=True)]
        self.padding = tuple(p // 2 for p in spans) if self.stride == (1, 1) and all(p % 2 == 0 for p in spans) \
            else None
        self.widen = groups > 1 and self.dilation == (1, 1)
        # Per-module cache, no lock: two threads may both make a wide weight (the same values) and one is kept.
        self._wide: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, padding = self.operands(x)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(input, weight, padding) of the plain convolution that computes this one on `x`."""
        if self.padding is not None:
            return x, self.weight, list(self.padding)
        left, right, top, bottom = self.pads(x)
        if left == right and top == bottom:  # e.g. stride 2 on an odd size: the conv pads itself
            return x, self.weight, [top, left]
        extra = (bottom - top, right - left)
        if self.widen and set(extra) <= {0, 1}:
            return x, self._widened(extra), [bottom, right]
        return F.pad(x, [left, right, top, bottom]), self.weight, [0, 0]

    def _widened(self, extra: tuple[int, int]) -> torch.Tensor:
        """The weight with a zero first row/column added where `extra` says (one more padding after than before)."""
        weight = self._wide.get(extra)
        if weight is None or weight.device != self.weight.device or weight.dtype != self.weight.dtype:
            with torch.inference_mode(False):  # cached: made under inference mode it could never be used in a backward
                weight = F.pad(self.weight.detach(), (extra[1], 0, extra[0], 0))
                if self.weight.is_contiguous(memory_format=torch.channels_last):
                    weight = weight.contiguous(memory_format=torch.channels_last)
            self._wide[extra] = weight
        return weight

    def pads(self, x: torch.Tensor) -> list[int]:
        """F.pad's [left, right, top, bottom] for this input size."""
        pads = []
        for i, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride),
                              reversed(self.dilation), strict=True):
            p = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
            pads += [p // 2, p - p // 2]
        return pads


class _ConvReLU6Fn(torch.autograd.Function):
    """relu6(conv(x) + b) in one oneDNN call (the clamp is a post-op: no separate pass over the activations); the
    backward masks the gradient where 0 < y < 6 and runs the convolution's input backward (weights are frozen).

    With `private` (the gradient arriving here is a new tensor from the next convolution's backward, which nothing
    else reads: `plan.conv_reads_only`) the mask is applied in place: no new buffer the size of the activations
    (which cost more than a copy of them: benchmarks/results/fast_path_timings.md, "in-place mask")."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, private):
        y = _compat.conv_hardtanh(x, weight, bias, padding, stride, dilation, groups, 0.0, 6.0)
        ctx.save_for_backward(x, weight, y)
        ctx.conf = (stride, padding, dilation, groups, private)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, private = ctx.conf
        # in place only on a plain CPU tensor: not under create_graph, nor vmap (is_grads_batched), which have no out=
        in_place = private and grad.stride() == y.stride() and not torch.is_grad_enabled() \
            and _compat.is_plain_cpu(grad)
        g = _compat.hardtanh_backward(grad, y, 0.0, 6.0, in_place=in_place)
        gx = _compat.conv_input_grad(g, x, weight, stride, padding, dilation, groups)
        return gx, None, None, None, None, None, None, None


class _ConvReLU6(nn.Module):
    """A folded convolution followed by its ReLU6, fused on CPU float32 from batch FUSE_MIN_BATCH (else run as the
    two ops)."""

    def __init__(self, conv: nn.Module, private: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.private = private  # the output's gradient may be masked in place (see _ConvReLU6Fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.shape[0] < FUSE_MIN_BATCH or x.device.type != "cpu" or x.dtype != torch.float32 \
                or conv.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            y = F.hardtanh(conv(x), 0.0, 6.0)
        else:
            x, weight, padding = _operands(conv, x)
            # While the copy serves a layer's hooks, whoever holds the gradients is no longer only the next
            # convolution (a captured gradient, a forward stopped early): never mask one in place then.
            private = self.private and not serving.active()
            y = _ConvReLU6Fn.apply(x, weight, conv.bias, list(conv.stride), padding, list(conv.dilation), conv.groups,
                                   private)
        setattr(y, CLAMPED, True)
        return y


def _operands(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input, weight, padding) of the plain convolution that computes `conv` (a folded one) on `x`."""
    if isinstance(conv, _SameConv2d):
        return conv.operands(x)
    if hasattr(conv, "static_padding"):
        x = conv.static_padding(x)
    return x, conv.weight, list(conv.padding)


class _SkipClamped(nn.Module):
    """A ReLU6 that passes a fused convolution's output through (ReLU6 is idempotent: relu6(relu6(z)) = relu6(z))."""

    def __init__(self, relu: nn.Module) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, CLAMPED, False) else self.relu(x)


class _ActTail(nn.Module):
    """What is left of a BatchNormAct2d whose BatchNorm was folded into the conv before it: its activation, or
    nothing where that conv already applied it (a fused ReLU6)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.drop, self.act = bn.drop, bn.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, CLAMPED, False) else self.act(self.drop(x))
