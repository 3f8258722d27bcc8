"""Curve areas and bootstrap intervals, shared by the evaluation of attributions and of concepts (no numpy)."""

from __future__ import annotations

import math

import torch

RESAMPLES = 2000  # bootstrap resamples of the mean
CONFIDENCE = 0.95


def auc(values: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves [..., n+1] on x in [0, 1] (the RISE protocol's normalized AUC)."""
    n = values.shape[-1] - 1
    return (values.sum(-1) - (values[..., 0] + values[..., -1]) / 2) / n


def bootstrap_interval(values: torch.Tensor, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       generator: torch.Generator | None = None) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` [n] (float64)."""
    n = values.shape[0]
    if n == 0:
        return math.nan, math.nan
    idx = torch.randint(0, n, (resamples, n), generator=generator)
    means = values.detach().cpu().double()[idx].mean(1)
    tail = (1 - confidence) / 2
    q = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(q[0]), float(q[1])
