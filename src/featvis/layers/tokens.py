"""Token layouts: how a vision transformer lays out its tokens, and token tensors as [B, C, H, W] feature maps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from featvis.layers.lookup import root


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out its tokens: `prefix` non-patch tokens first (class, distillation,
    register tokens), then the patch grid row by row. `grid` is (rows, cols) when the model fixes it; `readout`
    are the prefix tokens the classifier head reads (empty: it averages the patch tokens)."""

    prefix: int
    grid: tuple[int, int] | None = None
    readout: tuple[int, ...] = (0,)


# Without model metadata, a token tensor [B, N, C] is read as the largest square grid with the rest as prefix
# tokens: that covers a class token, a distillation token and up to 4 register tokens + class (DINOv2-reg, Darcet
# et al. 2024) on a square grid, and leaves other 3-D tensors (1-D convolutions, sequences) alone.
MAX_GUESSED_PREFIX = 8


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The model's own token layout: timm's `num_prefix_tokens` / `patch_embed.grid_size` / `global_pool`, or
    torchvision's VisionTransformer (one class token, image_size // patch_size grid). None if it has neither."""
    net = root(model)
    prefix = getattr(net, "num_prefix_tokens", None)
    if isinstance(prefix, int) and not isinstance(prefix, bool):  # timm VisionTransformer and its relatives
        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        dynamic = getattr(net, "dynamic_img_size", False) or getattr(getattr(net, "patch_embed", None),
                                                                      "dynamic_img_pad", False)
        grid = tuple(int(g) for g in grid) if grid is not None and not dynamic else None
        pool = getattr(net, "global_pool", "token")
        if pool == "token" and prefix > 0:
            readout = (0, 1) if getattr(net, "head_dist", None) is not None else (0,)  # DeiT-distilled averages both
        else:
            readout = ()  # "avg" and friends: the head reads the mean of the patch tokens
        return TokenLayout(prefix, grid, readout)  # type: ignore[arg-type]
    if isinstance(getattr(net, "class_token", None), torch.Tensor) and hasattr(net, "patch_size") \
            and hasattr(net, "image_size"):  # torchvision.models.VisionTransformer
        side = int(net.image_size) // int(net.patch_size)
        return TokenLayout(1, (side, side), (0,))
    return None


def to_spatial(t: torch.Tensor, layout: TokenLayout | nn.Module | None = None) -> torch.Tensor:
    """Feature maps as [B, C, H, W]: transformer tokens [B, prefix + HW, C] are reshaped, prefix tokens dropped.

    Args:
        layout: the model's `TokenLayout` (or the model, to read it from); without it the largest square grid
            is taken, with at most `MAX_GUESSED_PREFIX` tokens before it.
    """
    if t.ndim != 3:
        return t
    if isinstance(layout, nn.Module):
        layout = token_layout(layout)
    b, n, c = t.shape
    if layout is not None:
        # The prefix tokens are there after the patch embedding; its own output has only the grid.
        for prefix in (layout.prefix, 0):
            grid = _grid(n - prefix, layout.grid)
            if grid is not None:
                break
        else:
            return t
    else:
        side = math.isqrt(n)
        prefix, grid = n - side * side, (side, side)
        if side < 2 or prefix > MAX_GUESSED_PREFIX:
            return t
    h, w = grid
    return t[:, prefix:].transpose(1, 2).reshape(b, c, h, w)  # [B, HW, C] -> [B, C, H, W], row-major grid


def _grid(tokens: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    if grid is not None and grid[0] * grid[1] == tokens:
        return grid
    side = math.isqrt(max(tokens, 0))
    return (side, side) if side > 0 and side * side == tokens else None
