"""Captum's Lime and KernelShap fed featvis's coalitions, so the two can be compared on identical samples
(tests/attribution/test_surrogate.py and benchmarks/surrogate_crosscheck.py, which puts this folder on its path)."""

from __future__ import annotations

import torch


def _replay(rows: torch.Tensor):
    """A Captum perturb generator yielding the given coalitions [N, M] one at a time, as [1, M] long."""

    def generator(original_inp, **kwargs):
        for row in rows:
            yield row.view(1, -1).long().to(original_inp.device)

    return generator


def captum_lime(forward, rows: torch.Tensor | None = None, alpha: float = 1.0):
    """Captum `Lime` with its default kernel (cosine distance of the images, width 1) and a ridge of `alpha` (the
    lime package's regressor), on replayed coalitions `rows` or, with None, Captum's own Bernoulli draws."""
    from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
    from captum.attr import Lime

    model = SkLearnRidge(alpha=alpha) if alpha > 0 else SkLearnLinearRegression()
    return Lime(forward, interpretable_model=model, perturb_func=None if rows is None else _replay(rows))


def captum_kernel_shap(forward, rows: torch.Tensor | None = None):
    """Captum `KernelShap` (its Shapley sampling, 10⁶ weights, LinearRegression) on replayed coalitions `rows`."""
    from captum.attr import KernelShap

    if rows is None:
        return KernelShap(forward)

    class Replayed(KernelShap):
        def kernel_shap_perturb_generator(self, original_inp, **kwargs):
            yield from _replay(rows)(original_inp, **kwargs)  # a generator function, as Captum checks

    return Replayed(forward)


def segment_values(attr: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Per-segment values [M] of a Captum map [1, 3, H, W] that is constant on each segment of labels [H, W]."""
    flat = attr[0, 0].flatten().double()
    return torch.zeros(count, dtype=torch.float64).scatter_(0, labels.flatten(), flat)
