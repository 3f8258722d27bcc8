"""LIME and KernelSHAP on superpixels: a weighted linear model of the score over which segments are kept.

Both methods switch segments (a grid, SLIC superpixels or the caller's labels; `superpixels.py`) on and off, show the
model each coalition z ∈ {0, 1}ᴹ as x ⊙ z + x₀ ⊙ (1 − z), and fit score ≈ c + Σₛ φₛ zₛ by weighted least squares; the
map paints each segment's φₛ on its pixels. They differ in the draws and the weights, each as Captum 0.9 does it:

- LIME (Ribeiro, Singh, Guestrin 2016): every segment kept with probability ½; weight exp(−d² / 2w²) of the cosine
  distance d between the perturbed and the original image (Captum's `get_exp_kernel_similarity_function`, w = 1;
  `distance="segments"` measures it between z and the all-ones vector, as `lime_image` does, whose width is 0.25);
  ridge with α = 1 (the `lime` package's `Ridge(alpha=1)`; Captum's default is a Lasso, α = 0.01).
- KernelSHAP (Lundberg & Lee 2017): the full and the empty coalition first, then coalition sizes k drawn with
  p(k) ∝ (M − 1) / (k (M − k)) and k segments uniformly at random, so that the Shapley kernel is in the sampling
  and the other weights are 1; the full and empty coalitions' infinite weight is Captum's 10⁶; plain least squares
  (minimum norm when under-determined, as sklearn's LinearRegression).

All coalitions of all images go through the model in batches; the fits of all images are one batched solve
(float64, `torch.linalg.pinv`). Seeds: one int draws the same coalitions for every image, one per image its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from featvis._ops import Seed, _single, random_draw
from featvis._progress import update
from featvis._registry import Count, Range
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.attribution.integrated import make_baseline
from featvis.attribution.superpixels import COMPACTNESS, make_segments
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

SAMPLES, CELLS = 256, 8  # coalitions per image; an 8 × 8 grid (or about 64 SLIC superpixels)
KERNEL_WIDTH = 1.0  # Captum's exponential kernel width (lime_image: 0.25, on the segment vector)
ALPHA = 1.0  # ridge penalty of the `lime` package's default regressor, Ridge(alpha=1)
INF_WEIGHT = 1e6  # Captum KernelShap's stand-in for the infinite weight of the empty and full coalitions
DISTANCES = ("image", "segments")
Samples = Annotated[int, Range(2)]  # a fit needs at least two coalitions (KernelSHAP: the full and the empty one)


@dataclass(frozen=True)
class SurrogateFit:
    """A fitted surrogate: segments, the coalitions shown to the model, its scores and the linear model."""

    labels: torch.Tensor  # [B, H, W] segment of each pixel, 0..Mᵢ − 1
    counts: torch.Tensor  # [B] segments Mᵢ per image
    coalitions: torch.Tensor  # [B, N, M] 0/1, columns ≥ Mᵢ zero
    scores: torch.Tensor  # [B, N] the model's score of each coalition
    weights: torch.Tensor  # [B, N] the sample weights of the fit
    coefficients: torch.Tensor  # [B, M] φ, float64 (0 beyond Mᵢ)
    intercept: torch.Tensor  # [B] c, float64

    def map(self) -> torch.Tensor:
        """Each segment's coefficient painted on its pixels, [B, H, W]."""
        b, h, w = self.labels.shape
        return self.coefficients.gather(1, self.labels.flatten(1)).view(b, h, w)


def draw_coalitions(kind: str, seed: Seed, batch: int, samples: int, counts: torch.Tensor, width: int,
                    device=None) -> torch.Tensor:
    """Coalitions [B, N, M] (0/1 float) for "lime" or "kernel-shap", from uniform draws [1 or B, N, M + 1]; a
    segment beyond an image's count Mᵢ is never on, so the draws depend on the image size, not on the batch."""
    b = 1 if _single(seed) else batch
    u = random_draw("uniform", seed, (b, samples, width + 1), device=device, dtype=torch.float64)
    u = u.expand(batch, -1, -1)
    m = counts.to(device).view(-1, 1, 1)  # [B, 1, 1]
    present = torch.arange(width, device=device).view(1, 1, -1) < m  # [B, 1, M]
    if kind == "lime":  # Captum's default_perturb_func: each feature on with probability ½
        return ((u[..., 1:] < 0.5) & present).to(torch.float64)
    # KernelSHAP: k ~ p(k) ∝ (M − 1) / (k (M − k)), k = 1..M − 1, by inverse CDF; then the k smallest draws
    k = torch.arange(1, width, device=device, dtype=torch.float64).view(1, -1)  # [1, M − 1]
    p = torch.where(k < m[:, 0], 1 / (k * (m[:, 0] - k)).clamp_min(1e-12), torch.zeros_like(k))  # [B, M − 1]
    cdf = (p.cumsum(-1) / p.sum(-1, keepdim=True).clamp_min(1e-300))[:, None]  # [B, 1, M − 1]
    size = ((u[..., :1] >= cdf).sum(-1, keepdim=True) + 1).clamp(max=m)  # [B, N, 1]
    ranks = u[..., 1:].masked_fill(~present, 2.0).argsort(-1).argsort(-1)
    z = (ranks < size).to(torch.float64)
    z[:, 0] = present[:, 0].to(torch.float64)  # Captum yields the full coalition first, then the empty one
    z[:, 1] = 0
    return z


def coalition_scores(clf, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, z: torch.Tensor,
                     fill: torch.Tensor, score: str, batch_size: int | None, name: str) -> torch.Tensor:
    """The score [B, N] of each image with only its coalition's segments kept (the rest `fill`)."""
    fn = score_fn(score)
    b, _, h, w = images.shape
    n_all = z.shape[1]
    chunk = batch_size or default_chunk(clf, images, backward=False)
    per_call = max(1, chunk // b)  # coalitions per model call; each call holds per_call · B images
    index = labels.view(b, 1, h * w)
    out = torch.empty(b, n_all, device=images.device, dtype=torch.float64)
    with torch.no_grad(), frozen(clf):
        for start in range(0, n_all, per_call):
            zc = z[:, start:start + per_call].to(images.dtype)  # [B, n, M]
            n = zc.shape[1]
            keep = zc.gather(2, index.expand(-1, n, -1)).view(b, n, 1, h, w)
            x = (images[:, None] * keep + fill[:, None] * (1 - keep)).flatten(0, 1)  # [B·n, 3, H, W]
            out[:, start:start + n] = fn(clf(x), targets.repeat_interleave(n)).view(b, n).double()
            update(name, start + n, n_all)
    return out


def lime_weights(images: torch.Tensor, fill: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor,
                 z: torch.Tensor, distance: str, kernel_width: float) -> torch.Tensor:
    """exp(−d² / 2w²) [B, N] of the cosine distance d of each coalition's image to the image ("image", Captum's)
    or of z to all ones ("segments", lime_image's); per-segment sums make it exact without building the images."""
    if distance == "image":
        b = images.shape[0]
        x, f = images.double().flatten(2), fill.double().flatten(2)  # [B, 3, HW]
        idx = labels.flatten(1)
        seg = torch.zeros(b, 3, z.shape[-1], dtype=torch.float64, device=images.device)

        def sums(v):  # per-segment sums [B, M] of a per-pixel quantity [B, 3, HW]
            return seg.zero_().scatter_add_(2, idx[:, None].expand(-1, 3, -1), v).sum(1)

        xx, xf, ff = sums(x * x), sums(x * f), sums(f * f)
        dot = z @ xx[..., None] + (1 - z) @ xf[..., None]  # [B, N, 1]: <x, x_z>
        norm = (z @ xx[..., None] + (1 - z) @ ff[..., None]).clamp_min(0).sqrt()
        cos = dot / (xx.sum(-1).sqrt().view(-1, 1, 1).clamp_min(1e-8) * norm.clamp_min(1e-8))  # torch's eps
        d = 1 - cos[..., 0]
    elif distance == "segments":
        # cos(z, 1) = Σz / (√Σz · √M); the empty coalition is at distance 1 (sklearn's cosine distance)
        d = 1 - (z.sum(-1) / counts.double().view(-1, 1)).sqrt()
    else:
        raise FeatvisError(f"unknown lime distance {distance!r}; use one of {', '.join(DISTANCES)}")
    return torch.exp(-d.pow(2) / (2 * kernel_width ** 2))


def weighted_fit(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                 alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """min Σₙ wₙ (yₙ − c − zₙ·φ)² + α |φ|², batched: (φ [B, M], c [B]), float64. The intercept is free (weighted
    centring, as sklearn's fit_intercept); α = 0 gives the minimum-norm solution."""
    z, y, weights = z.double(), y.double(), weights.double()
    wn = weights / weights.sum(-1, keepdim=True)
    z_mean = (wn[..., None] * z).sum(1, keepdim=True)  # [B, 1, M]
    y_mean = (wn * y).sum(1, keepdim=True)  # [B, 1]
    root = weights.sqrt()
    a = (z - z_mean) * root[..., None]  # [B, N, M]
    r = (y - y_mean) * root
    if alpha > 0:  # ridge as least squares on rows √α·I with targets 0
        m = z.shape[-1]
        a = torch.cat([a, (alpha ** 0.5) * torch.eye(m, dtype=a.dtype, device=a.device).expand(a.shape[0], -1, -1)], 1)
        r = torch.cat([r, r.new_zeros(r.shape[0], m)], 1)
    coef = (torch.linalg.pinv(a) @ r[..., None])[..., 0]
    return coef, y_mean[:, 0] - (z_mean[:, 0] * coef).sum(-1)


def surrogate_fit(clf, images: torch.Tensor, target=None, *, kind: str = "lime", segments="grid",
                  cells: int = CELLS, compactness: float = COMPACTNESS, samples: int = SAMPLES,
                  baseline="mean", distance: str = "image", kernel_width: float = KERNEL_WIDTH,
                  alpha: float = ALPHA, seed: Seed = 0, score: str = "logit",
                  batch_size: int | None = None) -> SurrogateFit:
    """The fitted surrogate of `lime` (kind="lime") or `kernel-shap` (kind="kernel-shap"), options as theirs."""
    images, targets = prepare_inputs(clf, images, target)
    if kind not in ("lime", "kernel-shap"):
        raise FeatvisError(f"unknown surrogate {kind!r}; use lime or kernel-shap")
    if samples < 2 or cells < 1 or kernel_width <= 0 or alpha < 0:
        raise FeatvisError(f"{kind} needs samples >= 2, cells >= 1, kernel_width > 0 and alpha >= 0; got "
                           f"{samples}, {cells}, {kernel_width}, {alpha}")
    labels, counts, width = make_segments(images, segments, cells, compactness)
    fill = make_baseline(clf, images, baseline, seed)
    z = draw_coalitions(kind, seed, images.shape[0], samples, counts, width, images.device)
    y = coalition_scores(clf, images, targets, labels, z, fill, score, batch_size, kind)
    if kind == "lime":
        weights = lime_weights(images, fill, labels, counts, z, distance, kernel_width)
    else:
        on = z.sum(-1)
        edge = (on == 0) | (on == counts.view(-1, 1))
        weights, alpha = torch.where(edge, INF_WEIGHT, 1.0).double(), 0.0
    coef, intercept = weighted_fit(z, y, weights, alpha)
    return SurrogateFit(labels, counts, z, y, weights, coef, intercept)


@ATTRIBUTIONS.register("lime")
def lime(clf, images: torch.Tensor, target=None, *, segments="grid", cells: Count = CELLS,
         compactness: float = COMPACTNESS, samples: Samples = SAMPLES, baseline="mean", distance: str = "image",
         kernel_width: float = KERNEL_WIDTH, alpha: float = ALPHA, seed: Seed = 0, score: str = "logit",
         batch_size: int | None = None) -> torch.Tensor:
    """LIME: the coefficients of a locally weighted ridge model of the score over which segments are kept.

    Ribeiro, Singh, Guestrin 2016, "Why Should I Trust You?": Explaining the Predictions of Any Classifier.

    Args:
        segments: "grid" (cells × cells, default), "slic" (about cells² SLIC superpixels) or labels [H, W] / [B, H, W].
        cells: grid side; SLIC aims at cells² superpixels.
        compactness: SLIC's m: higher gives squarer superpixels, lower follows colour (scikit-image's 10).
        samples: coalitions per image (each one forward); every segment is kept with probability ½.
        baseline: what fills a removed segment: "mean" colour (default), "black", "blur", "noise" or a tensor.
        distance: "image" (cosine distance of the perturbed image to the image, Captum's) or "segments" (of the
            coalition to all ones, lime_image's, whose kernel width is 0.25).
        kernel_width: width w of the exponential kernel exp(−d² / 2w²) (Captum's 1.0).
        alpha: ridge penalty (the lime package's 1.0; 0 for plain weighted least squares).

    Returns:
        [B, H, W], each segment's coefficient on its pixels: positive where keeping it raises the score.

    Example:
        >>> sal = lime(clf, x, "tabby", segments="slic", samples=512, seed=[1, 2])
    """
    return surrogate_fit(clf, images, target, kind="lime", segments=segments, cells=cells, compactness=compactness,
                         samples=samples, baseline=baseline, distance=distance, kernel_width=kernel_width,
                         alpha=alpha, seed=seed, score=score, batch_size=batch_size).map().to(images.dtype)


@ATTRIBUTIONS.register("kernel-shap", aliases=("kernelshap", "shap"))
def kernel_shap(clf, images: torch.Tensor, target=None, *, segments="grid", cells: Count = CELLS,
                compactness: float = COMPACTNESS, samples: Samples = SAMPLES, baseline="mean", seed: Seed = 0,
                score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """KernelSHAP: Shapley values of the segments, by least squares on coalitions drawn from the Shapley kernel.

    Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions".

    Args:
        segments: "grid" (cells × cells, default), "slic" (about cells² SLIC superpixels) or labels [H, W] / [B, H, W].
        cells: grid side; SLIC aims at cells² superpixels.
        compactness: SLIC's m: higher gives squarer superpixels, lower follows colour (scikit-image's 10).
        samples: coalitions per image, the full and the empty one included (each one forward).
        baseline: what fills a removed segment: "mean" colour (default), "black", "blur", "noise" or a tensor.

    Returns:
        [B, H, W], each segment's Shapley value on its pixels; they sum to score(x) − score(baseline).

    Example:
        >>> sal = kernel_shap(clf, x, "tabby", samples=512, seed=[1, 2])
    """
    return surrogate_fit(clf, images, target, kind="kernel-shap", segments=segments, cells=cells,
                         compactness=compactness, samples=samples, baseline=baseline, seed=seed, score=score,
                         batch_size=batch_size).map().to(images.dtype)
