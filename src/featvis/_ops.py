"""Small differentiable image operations shared by the algorithm families (no PIL, no numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from featvis.errors import FeatvisError


def gaussian_kernel1d(sigma: float, size: int | None = None, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A normalized 1-D Gaussian; default size covers ±3σ (odd)."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float, size: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflect padding (zero-free edges); differentiable."""
    if sigma <= 0:
        return images
    k = gaussian_kernel1d(sigma, size, device=images.device, dtype=images.dtype)
    c = images.shape[1]
    pad = k.numel() // 2
    h, w = images.shape[-2:]
    mode = "reflect" if pad < min(h, w) else "replicate"
    x = F.pad(images, (pad, pad, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad, pad), mode=mode)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


Seed = int | Sequence[int]
"""One seed for a whole batch, or one per image (the task runner derives those from each item's identity, so an
image gets the same random draws whatever batch it lands in)."""


def random_draw(kind: str, seed: Seed, shape: Sequence[int], *, batch_dim: int = 0, device=None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`torch.rand` ("uniform") or `torch.randn` ("normal") of `shape`, reproducibly.

    With one int seed everything comes from one generator (the batch's draws depend on its composition). With a
    sequence of seeds — one per index along `batch_dim` — each slice has its own generator, so image i's noise
    depends only on seed[i].
    """
    draw = {"uniform": torch.rand, "normal": torch.randn}[kind]
    if _single(seed):
        gen = torch.Generator(device=device).manual_seed(int(seed))
        return draw(tuple(shape), generator=gen, device=device, dtype=dtype)
    seeds = [int(s) for s in seed]
    if len(seeds) != shape[batch_dim]:
        raise FeatvisError(f"got {len(seeds)} seeds for {shape[batch_dim]} images; give one seed or one per image")
    part = [s for i, s in enumerate(shape) if i != batch_dim]
    slices = [draw(tuple(part), generator=torch.Generator(device=device).manual_seed(s), device=device, dtype=dtype)
              for s in seeds]
    return torch.stack(slices, dim=batch_dim)


def first_seed(seed: Seed) -> int:
    """A single int from a seed or per-image seeds (for draws that are shared by the whole batch)."""
    return int(seed) if _single(seed) else int(next(iter(seed), 0))


def _single(seed: object) -> bool:
    return not isinstance(seed, (Sequence, torch.Tensor)) or (isinstance(seed, torch.Tensor) and seed.ndim == 0)
