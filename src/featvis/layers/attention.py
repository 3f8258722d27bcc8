"""Attention maps: every self-attention layer's probabilities recorded while a block runs (Chefer et al. 2021)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from featvis.errors import FeatvisError
from featvis.layers.lookup import root


def is_attention(module: nn.Module) -> bool:
    """A self-attention module: torch's MultiheadAttention, or any module class named *Attention* (timm's)."""
    # By name beyond torch's own class: attention modules come from many packages (timm, torchvision's ViT blocks,
    # users' own ViTs) with no common base class to test against; capture_attention then checks what it supports.
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


@dataclass
class AttentionCapture:
    """What `capture_attention` recorded: each self-attention call's probabilities, in forward order."""

    probs: list[torch.Tensor] = field(default_factory=list)  # each [B, heads, N, N]; rows (queries) sum to 1
    layers: list[str] = field(default_factory=list)  # the attention module of each entry


def _timm_style(module: nn.Module) -> bool:
    """timm's Attention: q·k softmax on its unfused path goes through its `attn_drop` module."""
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module) \
        and hasattr(module, "qkv")


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record every self-attention layer's probabilities softmax(q·kᵀ/√d), [B, heads, N, N], while the block runs.

    The recorded tensors are the ones the model multiplies with the values, so `torch.autograd.grad(score, probs)`
    gives their gradients (Chefer et al. 2021). Supported, and refused otherwise with one line:

    - timm's `Attention` (ViT, DeiT, DeiT-distilled, register and DINOv2 models): run on timm's own unfused path
      (`fused_attn = False` for the duration, restored after), whose softmax output passes its `attn_drop` module.
    - `torch.nn.MultiheadAttention` used as self-attention (torchvision's ViT): its forward is replaced for the
      duration by an explicit one with the same math (no masks, no bias_k/bias_v), which records them.
    """
    net = root(model)
    found = [(n, m) for n, m in net.named_modules() if n and is_attention(m)]
    if not found:
        raise FeatvisError(f"this model ({type(net).__name__}) has no self-attention layers; attention maps need a "
                           "vision transformer (use gradcam or gradient for it)")
    unsupported = [(n, m) for n, m in found if not (_timm_style(m) or isinstance(m, nn.MultiheadAttention))
                   and not any(_timm_style(c) or isinstance(c, nn.MultiheadAttention) for c in m.children())]
    if unsupported:
        n, m = unsupported[0]
        raise FeatvisError(f"attention maps support timm's Attention and torch.nn.MultiheadAttention, not "
                           f"{type(m).__name__} ({n})")
    cap = AttentionCapture()
    handles = []
    fused = [(m, m.fused_attn) for _, m in found if _timm_style(m)]
    swapped = [(n, m) for n, m in found if isinstance(m, nn.MultiheadAttention)]

    def record(name: str):
        def hook(_module, _inputs, output):
            cap.probs.append(output)
            cap.layers.append(name)

        return hook

    try:
        for m, _ in fused:
            m.fused_attn = False
        for n, m in found:
            if _timm_style(m):
                handles.append(m.attn_drop.register_forward_hook(record(n)))
        for n, m in swapped:
            m.forward = _explicit_attention(m, n, cap)
        yield cap
    finally:
        for h in handles:
            h.remove()
        for m, flag in fused:
            m.fused_attn = flag
        for _, m in swapped:
            m.__dict__.pop("forward", None)


def _explicit_attention(m: nn.MultiheadAttention, name: str, cap: AttentionCapture):
    """nn.MultiheadAttention's self-attention written out, recording the probabilities (same math as
    torch.nn.functional.multi_head_attention_forward: q scaled by 1/√head_dim, softmax over keys)."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or is_causal or not (query is key is value):
            raise FeatvisError(f"attention maps need plain self-attention; {name} was called with masks or separate "
                               "keys/values")
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise FeatvisError(f"attention maps do not support {name}'s MultiheadAttention options (kdim/vdim, "
                               "bias_k/bias_v or add_zero_attn)")
        x = query if m.batch_first else query.transpose(0, 1)
        b, n, c = x.shape
        heads = m.num_heads
        qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias)
        qkv = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head_dim]
        q, k, v = qkv.unbind(0)
        probs = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)  # [B, heads, N, N]
        cap.probs.append(probs)
        cap.layers.append(name)
        dropped = F.dropout(probs, m.dropout) if m.training and m.dropout > 0 else probs
        out = (dropped @ v).transpose(1, 2).reshape(b, n, c)  # [B, N, heads*head_dim]
        out = m.out_proj(out)
        out = out if m.batch_first else out.transpose(0, 1)
        weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
        return out, weights

    return forward
