"""The folded copy: each planned (conv, BatchNorm) pair as one convolution, in a copy of the user's network that
shares every module it does not change."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from featvis.models.fast import _compat, known
from featvis.models.fast.kernels import _ActTail, _ConvReLU6, _SameConv2d, _SkipClamped


def folded_copy(net: nn.Module, mods: dict[str, nn.Module], pairs: list[tuple[str, str]], channels_last: bool,
                fused: dict[str, str] | None = None, private: set[str] | frozenset = frozenset()
                ) -> tuple[nn.Module, list[str]]:
    """A copy of `net` with each pair's conv folded and BatchNorm replaced by Identity; every other module is the
    user's own. `fused` convs (name → its ReLU6's name) also apply their ReLU6, and those ReLU6 modules pass a
    tensor that is already clamped through. Returns (the copy, the names of the containers it duplicated, root ""
    first)."""
    replaced: dict[str, nn.Module] = {}
    fused = fused or {}
    for conv_name, bn_name in pairs:
        replaced[conv_name] = fold(mods[conv_name], mods[bn_name], channels_last)
        if conv_name in fused:
            replaced[conv_name] = _ConvReLU6(replaced[conv_name], conv_name in private)
        replaced[bn_name] = _ActTail(mods[bn_name]) if known.is_bn_act(mods[bn_name]) else nn.Identity()
    for relu_name in set(fused.values()) - {b for _, b in pairs}:  # a BatchNormAct2d's tail skips itself
        replaced[relu_name] = _SkipClamped(mods[relu_name])
    containers = sorted({".".join(n.split(".")[:i]) for n in replaced for i in range(n.count(".") + 1)},
                        key=lambda n: (n.count("."), n) if n else (-1, ""))
    copies = {n: _compat.shallow_copy(mods[n]) for n in containers}
    for name, new in copies.items():
        for child in _compat.child_names(new):
            full = f"{name}.{child}" if name else child
            if full in copies:
                _compat.set_child(new, child, copies[full])
            elif full in replaced:
                _compat.set_child(new, child, replaced[full])
    return copies[""], containers


def fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, channels_last: bool) -> nn.Module:
    """conv followed by eval-mode BatchNorm as one conv: w·γ/√(σ² + ε) and β + (b − μ)·γ/√(σ² + ε), by PyTorch's
    own `fuse_conv_bn_weights`, fed float64 and stored in the conv's dtype.

    The helper computes in its inputs' dtype; in float32 it rounds the scale and the bias several times, so it is
    given float64 copies (as featvis folded before using it) and its result is cast to the conv's dtype. Its
    float64 arithmetic (γ·rsqrt(σ² + ε)) differs from γ/sqrt(σ² + ε) by at most an ulp of float64, which the cast to
    float32 rounds away: the folded weights are bit-identical to featvis's own formula on the shipped models
    (tests/models/test_fast_fold.py)."""
    with torch.no_grad():
        gamma, beta = (None if p is None else p.double() for p in (bn.weight, bn.bias))
        bias = conv.bias.double() if conv.bias is not None else None
        w64, b64 = fuse_conv_bn_weights(conv.weight.double(), bias, bn.running_mean.double(),
                                        bn.running_var.double(), bn.eps, gamma, beta)
        weight = w64.detach().to(conv.weight.dtype)
        if channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        new_bias = b64.detach().to(conv.weight.dtype)
    if known.is_dynamic_same(conv):
        return _SameConv2d(weight, new_bias, conv.stride, conv.dilation, conv.groups)
    folded = _compat.shallow_copy(conv)
    _compat.set_parameter(folded, "weight", nn.Parameter(weight, requires_grad=False))
    _compat.set_parameter(folded, "bias", nn.Parameter(new_bias, requires_grad=False))
    return folded
