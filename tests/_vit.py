"""Tiny pre-norm vision transformers in timm's and torchvision's layouts, and a hand-written forward that
returns the attention probabilities as tensors of its own graph (the oracle for rollout and Chefer et al.)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TimmStyleAttention(nn.Module):
    """timm's `Attention`, reduced: qkv projection; fused (SDPA) path by default, unfused path through attn_drop."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.fused_attn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
            x = self.attn_drop(attn) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); `attention="torch"` calls nn.MultiheadAttention as torchvision."""

    def __init__(self, dim: int, heads: int, attention: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.torch_mha = attention == "torch"
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if self.torch_mha \
            else TimmStyleAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        y = self.attn(y, y, y, need_weights=False)[0] if self.torch_mha else self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.grid_size = (size // patch, size // patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, HW, C]


class TinyAttnViT(nn.Module):
    """Class token + `registers` register tokens + patches, `depth` pre-norm blocks, final norm, head on the class
    token (or on the mean of the patch tokens with global_pool="avg"). timm's metadata attributes included."""

    def __init__(self, classes: int = 5, patch: int = 8, dim: int = 16, size: int = 32, depth: int = 2,
                 heads: int = 2, registers: int = 0, attention: str = "timm", global_pool: str = "token",
                 seed: int = 0, metadata: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch_embed = PatchEmbed(patch, dim, size)
        n = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + registers + n, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        if metadata:
            self.num_prefix_tokens = 1 + registers
            self.global_pool = global_pool
        self._pool = global_pool
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)
        b = t.shape[0]
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), t], 1) + self.pos_embed
        t = self.norm(self.blocks(t))
        prefix = 1 + self.reg_token.shape[1]
        return self.head(t[:, 0] if self._pool == "token" else t[:, prefix:].mean(1))


def reference_forward(vit: TinyAttnViT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, attention probabilities [B, heads, N, N] per block), written out from the weights."""
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    b = t.shape[0]
    t = torch.cat([vit.cls_token.expand(b, -1, -1), vit.reg_token.expand(b, -1, -1), t], 1) + vit.pos_embed
    probs = []
    for blk in vit.blocks:
        y = blk.norm1(t)
        if blk.torch_mha:
            w, bias, out = blk.attn.in_proj_weight, blk.attn.in_proj_bias, blk.attn.out_proj
            heads = blk.attn.num_heads
        else:
            w, bias, out, heads = blk.attn.qkv.weight, blk.attn.qkv.bias, blk.attn.proj, blk.attn.num_heads
        n, c = y.shape[1], y.shape[2]
        d = c // heads
        q, k, v = (y @ w.T + bias).split(c, dim=-1)
        q, k, v = (z.view(b, n, heads, d).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1)
        probs.append(a)
        t = t + out((a @ v).transpose(1, 2).reshape(b, n, c))
        t = t + blk.mlp(blk.norm2(t))
    t = vit.norm(t)
    prefix = 1 + vit.reg_token.shape[1]
    return vit.head(t[:, 0] if vit._pool == "token" else t[:, prefix:].mean(1)), probs
