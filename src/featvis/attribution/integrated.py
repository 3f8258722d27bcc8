"""Integrated Gradients (Sundararajan, Taly, Yan 2017, "Axiomatic Attribution for Deep Networks")."""

from __future__ import annotations

import torch

from featvis._ops import Seed, gaussian_blur, random_draw
from featvis._registry import Count
from featvis.attribution._base import (
    ATTRIBUTIONS,
    default_chunk,
    input_gradients,
    prepare_inputs,
    reduce_channels,
    score_fn,
)
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

BASELINES = ("black", "blur", "noise", "mean")
BLUR_SIGMA = 0.1  # blurred baseline: σ as a fraction of the image side (Sturmfels et al. 2020, Distill)


def quadrature(steps: int, method: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α in [0, 1] and weights w with Σ w f(α) ≈ ∫₀¹ f. Gauss–Legendre via Golub–Welsch, or trapezoid."""
    if steps < 2:
        raise FeatvisError(f"integrated-gradients needs steps >= 2, got {steps}")
    if method == "riemann-trapezoid":
        alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
    elif method == "gausslegendre":
        k = torch.arange(1, steps, dtype=torch.float64)
        off = k / torch.sqrt(4 * k * k - 1)
        jacobi = torch.diag(off, 1) + torch.diag(off, -1)
        nodes, vecs = torch.linalg.eigh(jacobi)
        alphas, weights = (nodes + 1) / 2, vecs[0] ** 2  # weights 2·v₀² on [-1, 1], halved on [0, 1]
    else:
        raise FeatvisError(f"unknown quadrature {method!r}; use 'gausslegendre' or 'riemann-trapezoid'")
    return alphas.to(device=device, dtype=torch.float32), weights.to(device=device, dtype=torch.float32)


def make_baseline(clf, images: torch.Tensor, baseline, seed: Seed = 0) -> torch.Tensor:
    """The reference input: "black", "blur" (heavy Gaussian blur), "noise" (uniform), "mean" colour, or a tensor."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images).expand_as(images)
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "mean":
        return clf.mean.to(images).expand_as(images).clone()
    if baseline == "blur":
        return gaussian_blur(images, BLUR_SIGMA * max(images.shape[-2:]))
    if baseline == "noise":
        return random_draw("uniform", seed, images.shape, device=images.device, dtype=images.dtype)
    raise FeatvisError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} or a tensor")


@ATTRIBUTIONS.register("integrated-gradients", aliases=("ig", "integrated"))
def integrated_gradients(clf, images: torch.Tensor, target=None, *, baseline="black", steps: Count = 50,
                         rule: str = "gausslegendre", score: str = "logit", reduce: str = "sum", seed: Seed = 0,
                         batch_size: int | None = None, return_delta: bool = False):
    """Integrated Gradients: (x − x′) · ∫₀¹ ∇F(x′ + α(x − x′)) dα, by quadrature over `steps` points.

    Args:
        baseline: "black" (default), "blur", "noise" (uniform, seeded), "mean" (the model's mean colour) or a tensor.
        steps: quadrature points per image; all of them go through the model in chunks of `batch_size`.
        rule: quadrature rule, "gausslegendre" (default, as Captum) or "riemann-trapezoid".
        reduce: channel reduction; "sum" keeps completeness (Σ map = F(x) − F(x′)); "none" for [B, 3, H, W].
        return_delta: also return the completeness error Σ attr − (F(x) − F(x′)), per image.

    Returns:
        [B, H, W], or (map, delta [B]) with return_delta.

    Example:
        >>> ig, delta = integrated_gradients(clf, x, "tabby", steps=64, return_delta=True)
    """
    images, targets = prepare_inputs(clf, images, target)
    base = make_baseline(clf, images, baseline, seed)
    alphas, weights = quadrature(steps, rule, images.device)
    b = images.shape[0]
    diff = images - base
    total = torch.zeros_like(images)
    chunk = batch_size or default_chunk(clf, images)
    per_call = max(1, chunk // b) if b < chunk else 1  # path points per model call
    for start in range(0, steps, per_call):
        a = alphas[start:start + per_call].view(-1, 1, 1, 1, 1)
        path = (base[None] + a * diff[None]).flatten(0, 1)  # [n·B, 3, H, W]
        grads = input_gradients(clf, path, targets.repeat(a.shape[0]), score=score, batch_size=chunk)
        total += (grads.view(a.shape[0], *images.shape) * weights[start:start + per_call].view(-1, 1, 1, 1, 1)).sum(0)
    attr = diff * total
    out = reduce_channels(attr, reduce)
    if not return_delta:
        return out
    with torch.no_grad(), frozen(clf):
        fn = score_fn(score)
        gap = fn(clf(images), targets) - fn(clf(base), targets)
    return out, attr.flatten(1).sum(1) - gap
