"""HSIC attribution: how strongly the score depends on each grid cell being kept (Novello, Fel, Vigouroux 2022).

N binary masks over a d = s × s grid (a Sobol sequence rounded to {0, 1}, Xplique's default, or the paper's Latin
hypercube) perturb the image as in `sobol` (nearest-upsampled, x ⊙ M + x₀ ⊙ (1 − M)); each cell's score is the
Hilbert-Schmidt Independence Criterion between its mask value and the model's score over the N samples, the biased
estimator of Gretton et al. 2005, HSICᵢ = tr(Kᵢ H L H) / (N − 1)², with H = I − 11ᵀ/N, the input kernel of
Xplique's BinaryEstimator kᵢ(x, x′) = 1.5 − (xᵢ − x′ᵢ)² and an RBF output kernel l(y, y′) = exp(−(y − y′)² / 2σ²)
whose width σ is the median of the outputs (Xplique's choice, interpolated as its percentile). Xplique divides by N
instead of (N − 1)²: a constant factor, the same map. N forwards per image (Xplique's default nb_design 500)
instead of Sobol's N·(d + 2).
"""

from __future__ import annotations

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, prepare_inputs
from featvis.attribution.integrated import make_baseline
from featvis.attribution.sobol import masked_scores, per_image_seeds, sobol_points, to_image
from featvis.errors import FeatvisError

CELLS, DESIGNS = 8, 500  # Xplique's HsicAttributionMethod defaults (grid_size, nb_design)
SAMPLERS = ("sobol", "latin-hypercube")


def hsic_design(cells: int, designs: int, seed: int, sampler: str = "sobol") -> torch.Tensor:
    """Binary masks [N, d], d = cells²: a scrambled, seeded Sobol sequence (Xplique's TFSobolSequence(binary=True))
    or a Latin hypercube (the paper's; McKay et al. 1979), rounded to {0, 1}."""
    d = cells * cells
    if sampler == "sobol":
        points = sobol_points(d, designs, seed)
    elif sampler == "latin-hypercube":
        gen = torch.Generator().manual_seed(seed)
        strata = torch.rand(d, designs, generator=gen).argsort(-1).T  # [N, d]: one stratum per sample and column
        points = (strata + torch.rand(designs, d, generator=gen)) / designs
    else:
        raise FeatvisError(f"unknown hsic sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    return points.round()


def hsic_scores(masks: torch.Tensor, outputs: torch.Tensor, width: float | None = None) -> torch.Tensor:
    """HSIC [B, d] between each mask column and the scores, float64: masks [1 or B, N, d], outputs [B, N].

    With kᵢ(x, x′) = 1.5 − (xᵢ − x′ᵢ)², tr(Kᵢ Lc) = 2 xᵢᵀ Lc xᵢ exactly for a centred Lc = HLH (its rows and columns
    sum to zero, so the terms in xⱼ² alone and the constant vanish): O(d·N²) without the [d, N, N] Gram tensor.
    """
    y = outputs.double()
    n = y.shape[1]
    if width is None:  # Xplique: the median of the outputs, interpolated (tfp.stats.percentile(y, 50, "linear"):
        # for an even N the mean of the two middle values, not torch.median's lower one); squared below
        width = y.quantile(0.5, dim=-1).abs()
        width = torch.where(width > 0, width, y.std(-1).clamp_min(1e-12))  # a zero median would make L = I
    else:
        width = torch.full((y.shape[0],), float(width), dtype=y.dtype, device=y.device)
    gram = torch.exp(-(y[:, :, None] - y[:, None, :]).pow(2) / (2 * width.view(-1, 1, 1) ** 2))  # [B, N, N]
    centred = gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True) + gram.mean((1, 2), keepdim=True)
    x = masks.double().expand(y.shape[0], -1, -1)  # [B, N, d]
    return 2 * torch.einsum("bnd,bnm,bmd->bd", x, centred, x) / (n - 1) ** 2


def hsic_cells(clf, images: torch.Tensor, target=None, *, cells: int = CELLS, designs: int = DESIGNS,
               sampler: str = "sobol", baseline="black", width: float | None = None, seed: Seed = 0,
               score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """The cells' HSIC [B, s²] (float64, before upsampling); options as `hsic`."""
    images, targets = prepare_inputs(clf, images, target)
    if designs < 2:
        raise FeatvisError(f"hsic designs={designs} must be at least 2 (HSIC compares samples)")
    flat = torch.stack([hsic_design(cells, designs, s, sampler) for s in per_image_seeds(seed, images.shape[0])])
    flat = flat.to(images.device)  # [1 or B, N, d]
    fill = make_baseline(clf, images, baseline, seed)
    masks = flat.view(flat.shape[0], designs, cells, cells)
    return hsic_scores(flat, masked_scores(clf, images, targets, masks, fill, score, batch_size, "hsic"), width)


@ATTRIBUTIONS.register("hsic")
def hsic(clf, images: torch.Tensor, target=None, *, cells: Count = CELLS, designs: Count = DESIGNS,
         sampler: str = "sobol", baseline="black", width: float | None = None, seed: Seed = 0,
         score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """HSIC attribution: each grid cell's dependence (Hilbert-Schmidt Independence Criterion) with the score.

    Novello, Fel, Vigouroux 2022, "Making Sense of Dependence: Efficient Black-box Explanations Using Dependence
    Measure" (NeurIPS).

    Args:
        cells: grid side s; one score per cell, d = s² (Xplique's grid_size: 8).
        designs: number of binary masks N, one forward each (Xplique's nb_design: 500).
        sampler: "sobol" (rounded scrambled Sobol points, Xplique's default) or "latin-hypercube" (the paper's).
        baseline: what a masked-out pixel becomes: "black" (Xplique's inpainting), "blur", "mean", "noise", a tensor.
        width: σ of the RBF output kernel; None: the median of the outputs per image (Xplique).
        seed: seeds the design: one int (one design for the batch) or one per image.
        score: what is explained: "logit" (default, the raw output as Xplique's operator), "log-prob" or "prob".

    Returns:
        [B, H, W], the cells' HSIC (≥ 0, larger where the score depends more on the cell) upsampled bicubically.

    Example:
        >>> dep = hsic(clf, x, "tabby", designs=500, seed=3)
    """
    cell_maps = hsic_cells(clf, images, target, cells=cells, designs=designs, sampler=sampler, baseline=baseline,
                           width=width, seed=seed, score=score, batch_size=batch_size)
    return to_image(cell_maps, cells, tuple(images.shape[-2:]), clf.dtype)
