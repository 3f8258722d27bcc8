"""Small differentiable image operations shared by the algorithm families (no PIL, no numpy)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
