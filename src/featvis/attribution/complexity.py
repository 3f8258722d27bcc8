"""Complexity of a map: sparseness as the Gini index (Chalasani, Chen, Chowdhury, Jha, Wu 2020, "Concise
Explanations of Neural Networks using Adversarial Training", ICML; as Quantus's `Sparseness`), and the discrete
entropy of its histogram (the complexity measure of Hedström et al. 2024's efficient MPRT)."""

from __future__ import annotations

import torch

ENTROPY_BINS = 100  # Quantus's default histogram for `discrete_entropy`


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of |map| per image, in [0, 1 − 1/n]: 0 when every pixel counts the same, → 1 when one pixel holds
    all the attribution; higher is sparser. G = Σᵢ (2i − n − 1) aᵢ / (n Σ aᵢ), a sorted ascending, i = 1..n.

    Returns:
        [B] (0 for an all-zero map).
    """
    a = maps.flatten(1).abs().double().sort(dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    g = ((2 * i - n - 1) * a).sum(1) / (n * torch.where(total > 0, total, torch.ones_like(total)))
    return torch.where(total > 0, g, torch.zeros_like(g)).to(torch.float32)


def entropy(maps: torch.Tensor, bins: int = ENTROPY_BINS) -> torch.Tensor:
    """Shannon entropy (nats) of the histogram of |map| over `bins` equal bins between its min and max, per image."""
    a = maps.flatten(1).abs().float()
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    idx = ((a - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(a.shape[0], bins, device=a.device).scatter_add_(1, idx, torch.ones_like(a))
    p = counts / a.shape[1]
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
