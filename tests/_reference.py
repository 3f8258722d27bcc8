"""Slow, obviously correct reference implementations for oracle tests."""

from __future__ import annotations

import torch


def finite_difference_saliency(fn, x: torch.Tensor, c: int, pixels: list[tuple[int, int, int]], h: float = 1e-6):
    """Central differences of fn(x)[0, c] with respect to single pixels (float64)."""
    out = []
    for ch, i, j in pixels:
        xp, xm = x.clone(), x.clone()
        xp[0, ch, i, j] += h
        xm[0, ch, i, j] -= h
        out.append(((fn(xp)[0, c] - fn(xm)[0, c]) / (2 * h)).item())
    return torch.tensor(out, dtype=torch.float64)
