"""Sobol attribution: total-order Sobol indices of the score over a grid of mask cells (Fel et al., NeurIPS 2021).

Each of the d = s × s cells of a low-resolution mask is a random variable Mᵢ ∈ [0, 1]; the image is seen through
the nearest-upsampled mask, x ⊙ M + x₀ ⊙ (1 − M) (Xplique's "inpainting" perturbation, x₀ = 0 there), and the
total-order index Sᵀᵢ is the share of the score's variance that involves Mᵢ, alone or with other cells. The design
follows the paper and Xplique's `SobolAttributionMethod` (grid 8, nb_design 32, a Sobol quasi-Monte-Carlo sequence
of dimension 2d split into matrices A and B, and the d matrices Cᵢ = A with column i taken from B): N·(d + 2)
forwards per image. Sᵀᵢ by the Jansen (1999) estimator, Σⱼ (f(Aⱼ) − f(Cᵢⱼ))² / (2N·Var f(A)); the cell map is
upsampled bicubically to the image as Xplique does. The sequence is scrambled (Owen) and seeded, so seeds give
independent estimates; Xplique draws the unscrambled sequence (one fixed design).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.quasirandom import SobolEngine

from featvis._ops import Seed, _single
from featvis._progress import update
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.attribution.integrated import make_baseline
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

CELLS, DESIGNS = 8, 32  # Xplique's SobolAttributionMethod defaults (grid_size, nb_design), as in Fel et al. 2021
VAR_EPS = 1e-12  # floor on Var f(A), as Xplique's estimators: a constant score gives zero indices, not NaN


def per_image_seeds(seed: Seed, batch: int) -> list[int]:
    """One seed for the batch ([seed]: one design shared by all images) or one per image (checked)."""
    if _single(seed):
        return [int(seed)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise FeatvisError(f"got {len(seeds)} seeds for {batch} images; give one seed or one per image")
    return seeds


def sobol_points(dimension: int, n: int, seed: int) -> torch.Tensor:
    """n points [n, dimension] of a scrambled (Owen), seeded Sobol sequence in [0, 1)."""
    return SobolEngine(dimension, scramble=True, seed=seed).draw(n, dtype=torch.float32)


def sobol_design(cells: int, designs: int, seed: int) -> torch.Tensor:
    """The replicated design [N·(d + 2), d], d = cells²: A, then B, then C₁ … C_d (Cᵢ = A with column i of B)."""
    d = cells * cells
    ab = sobol_points(2 * d, designs, seed)  # [N, 2d]
    a, b = ab[:, :d], ab[:, d:]
    pick = torch.eye(d, dtype=a.dtype)[:, None, :]  # [d, 1, d]: which column comes from B in Cᵢ
    c = a[None] * (1 - pick) + b[None] * pick  # [d, N, d]
    return torch.cat([a, b, c.flatten(0, 1)])


def jansen_total_order(outputs: torch.Tensor, designs: int) -> torch.Tensor:
    """Total-order indices [B, d] from scores [B, N·(d + 2)] laid out as `sobol_design` (Jansen 1999), in float64.

    Sᵀᵢ = Σⱼ (f(Aⱼ) − f(Cᵢⱼ))² / (2N · Var f(A)), Var with N − 1 degrees of freedom, as Xplique's JansenEstimator.
    """
    y = outputs.double()
    n = designs
    d = y.shape[1] // n - 2
    a, c = y[:, :n], y[:, 2 * n:].reshape(-1, d, n)  # [B, N], [B, d, N]
    var = a.var(-1, correction=1).clamp_min(VAR_EPS)
    return (a[:, None] - c).pow(2).sum(-1) / (2 * n * var[:, None])


def masked_scores(clf, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor,
                  score: str, batch_size: int | None, stage: str) -> torch.Tensor:
    """Scores [B, M] of each image seen through each mask: x ⊙ m + fill ⊙ (1 − m), m the cell mask
    [1 or B, M, s, s] upsampled to the image by nearest neighbour (Xplique's `_batch_perturbations`). All B·M
    perturbed images go through the model in chunks of `batch_size`, built chunk by chunk (never all at once)."""
    fn = score_fn(score)
    b, _, h, w = images.shape
    count = masks.shape[1]
    total = b * count
    chunk = batch_size or default_chunk(clf, images, backward=False)
    out = torch.empty(total, device=images.device, dtype=torch.float32)
    with torch.no_grad(), frozen(clf):
        for start in range(0, total, chunk):
            pair = torch.arange(start, min(start + chunk, total), device=images.device)
            img, j = pair // count, pair % count
            cell = masks[img if masks.shape[0] > 1 else torch.zeros_like(img), j]  # [c, s, s]
            m = F.interpolate(cell[:, None].to(images), size=(h, w), mode="nearest-exact")  # [c, 1, H, W]
            x = images[img] * m + fill[img] * (1 - m)
            out[start:start + pair.numel()] = fn(clf(x), targets[img]).float()
            update(stage, start + pair.numel(), total)
    return out.view(b, count)


def to_image(cell_maps: torch.Tensor, cells: int, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Cell indices [B, d] to maps [B, H, W], upsampled bicubically as Xplique's GSA explainers do."""
    grid = cell_maps.view(-1, 1, cells, cells).to(dtype)
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False)[:, 0]


def sobol_cells(clf, images: torch.Tensor, target=None, *, cells: int = CELLS, designs: int = DESIGNS,
                baseline="black", seed: Seed = 0, score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """The cells' total-order indices [B, s²] (float64, before upsampling); options as `sobol`."""
    images, targets = prepare_inputs(clf, images, target)
    if designs < 2 or designs & (designs - 1):
        raise FeatvisError(f"sobol designs={designs} must be a power of two >= 2 (e.g. 16, 32, 64), as in Xplique")
    masks = torch.stack([sobol_design(cells, designs, s) for s in per_image_seeds(seed, images.shape[0])])
    masks = masks.view(masks.shape[0], -1, cells, cells).to(images.device)  # [1 or B, N·(d + 2), s, s]
    fill = make_baseline(clf, images, baseline, seed)
    return jansen_total_order(masked_scores(clf, images, targets, masks, fill, score, batch_size, "sobol"), designs)


@ATTRIBUTIONS.register("sobol")
def sobol(clf, images: torch.Tensor, target=None, *, cells: Count = CELLS, designs: Count = DESIGNS,
          baseline="black", seed: Seed = 0, score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """Sobol attribution: each grid cell's total-order Sobol index of the score under quasi-Monte-Carlo masks.

    Fel, Cadène, Chalvidal, Cord, Vigouroux, Serre 2021, "Look at the Variance! Efficient Black-box Explanations
    with Sobol-based Sensitivity Analysis" (NeurIPS).

    Args:
        cells: grid side s; one index per cell, d = s² (Xplique's grid_size: 8).
        designs: Xplique's nb_design N, a power of two (Sobol points balance in powers of two; default 32); the
            model sees N·(s² + 2) images per image (2112 at the defaults).
        baseline: what a masked-out pixel moves toward: "black" (Xplique's inpainting, x₀ = 0), "blur" (its
            "blurring"), "mean" colour, "noise" or a tensor.
        seed: seeds the scrambled Sobol design: one int (one design for the batch) or one per image.
        score: what the indices decompose: "logit" (default, the raw output as Xplique's operator), "log-prob", "prob".

    Returns:
        [B, H, W], the cells' total-order indices Sᵀᵢ (≥ 0; in theory Σ Sᵀᵢ ≥ 1, = 1 for an additive score),
        upsampled bicubically.

    Example:
        >>> st = sobol(clf, x, "tabby", cells=8, designs=32, seed=[1, 2])
    """
    cell_maps = sobol_cells(clf, images, target, cells=cells, designs=designs, baseline=baseline, seed=seed,
                            score=score, batch_size=batch_size)
    return to_image(cell_maps, cells, tuple(images.shape[-2:]), clf.dtype)
