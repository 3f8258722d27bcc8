"""Max-sensitivity and infidelity (Yeh, Hsieh, Suggala, Inouye, Ravikumar 2019, "On the (In)fidelity and Sensitivity
of Explanations", NeurIPS; arXiv 1901.09392), defined as `captum.metrics.sensitivity_max` and `infidelity` compute
them, and batched: every perturbed copy of every image goes through the model (or the method) in full chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from featvis._ops import Seed, random_draw
from featvis._progress import update
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, score_fn
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

SENSITIVITY_RADIUS = 0.02  # L∞ radius in [0, 1] pixel units (≈ 5/255): Captum's default `perturb_radius`
SENSITIVITY_SAMPLES = 10  # Captum's default `n_perturb_samples`
INFIDELITY_SAMPLES = 16
SQUARE = 1 / 7  # side of the removed square as a fraction of the image side (32 px at 224: one RISE grid cell)


def sensitivity_perturbations(images: torch.Tensor, *, radius: float, samples: int, seed: Seed) -> torch.Tensor:
    """Copies [B, n, 3, H, W] uniformly perturbed in the L∞ ball of `radius`, clipped to the pixel box [0, 1]."""
    noise = random_draw("uniform", seed, (images.shape[0], samples, *images.shape[1:]), device=images.device)
    return (images[:, None] + radius * (2 * noise.to(images) - 1)).clamp(0, 1)


def max_sensitivity(clf, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, method: str | Callable, *,
                    options: Mapping[str, Any] | None = None, radius: float = SENSITIVITY_RADIUS,
                    samples: int = SENSITIVITY_SAMPLES, seed: Seed = 0) -> torch.Tensor:
    """max over perturbations δ (‖δ‖∞ ≤ radius) of ‖Φ(x + δ) − Φ(x)‖_F / ‖Φ(x)‖_F, per image; lower is better.

    Args:
        maps: Φ(x) [B, H, W], computed with the same method and options.
        method: a registered attribution method (or such a function); `options` go to it.
        radius: L∞ radius of the uniform perturbations (pixels stay in [0, 1]).
        samples: perturbations per image.
        seed: seeds the perturbations (one int, or one per image).

    A deterministic method explains all B·n copies in one call (it batches them itself). A randomized method (one
    with a `seed` option) is called once per perturbation on the same B images with the same options, so its own
    draws (noise, masks, baselines) are those of Φ(x): the metric measures the input's effect, not Monte-Carlo noise.

    Returns:
        [B].
    """
    fn = ATTRIBUTIONS.get(method) if isinstance(method, str) else method
    opts = dict(options or {})
    b = images.shape[0]
    perturbed = sensitivity_perturbations(images, radius=radius, samples=samples, seed=seed)
    randomized = "seed" in getattr(fn, "options", {})
    if randomized:
        expl = []
        for k in range(samples):
            expl.append(fn(clf, perturbed[:, k], targets, **opts))
            update("max-sensitivity", k + 1, samples)
        expl_t = torch.stack(expl, 1)  # [B, n, H, W]
    else:
        expl_t = fn(clf, perturbed.flatten(0, 1), targets.repeat_interleave(samples), **opts)
        expl_t = expl_t.view(b, samples, *expl_t.shape[1:])
    diff = (expl_t - maps[:, None].to(expl_t)).flatten(2).norm(dim=2)  # [B, n]
    norm = maps.flatten(1).norm(dim=1).to(diff)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)  # Captum's convention for an all-zero map
    return (diff / norm[:, None]).amax(1)


def _squares(images: torch.Tensor, samples: int, square: float, seed: Seed
             ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Yeh et al.'s random squares: top and left [B, n] and the side (rows, columns)."""
    b, _, h, w = images.shape
    side_h, side_w = max(1, round(square * h)), max(1, round(square * w))
    pos = random_draw("uniform", seed, (b, samples, 2), device=images.device)
    top = (pos[..., 0] * (h - side_h + 1)).long().clamp(max=h - side_h)
    left = (pos[..., 1] * (w - side_w + 1)).long().clamp(max=w - side_w)
    return top, left, side_h, side_w


def _remove(clf, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side_h: int, side_w: int
            ) -> torch.Tensor:
    """images [m, 3, H, W] with the square at (top, left) [m] set to the model's mean colour."""
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    t, lf = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = ((rows >= t) & (rows < t + side_h) & (cols >= lf) & (cols < lf + side_w))[:, None]
    return torch.where(inside, clf.mean.to(images).view(1, 3, 1, 1), images)


def square_perturbations(clf, images: torch.Tensor, *, samples: int, square: float,
                         seed: Seed) -> tuple[torch.Tensor, torch.Tensor]:
    """Yeh et al.'s square removal: (perturbations I, perturbed images x − I), each [B, n, 3, H, W]; a random square
    of side `square`·side is set to the model's mean colour (0 in normalized space)."""
    b = images.shape[0]
    top, left, side_h, side_w = _squares(images, samples, square, seed)
    perturbed = _remove(clf, images.repeat_interleave(samples, 0), top.flatten(), left.flatten(), side_h, side_w)
    perturbed = perturbed.view(b, samples, *images.shape[1:])
    return images[:, None] - perturbed, perturbed


def infidelity(clf, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, *,
               samples: int = INFIDELITY_SAMPLES, square: float = SQUARE, score: str = "logit", normalize: bool = True,
               seed: Seed = 0, perturb: Callable | None = None, batch_size: int | None = None) -> torch.Tensor:
    """E_I[(Iᵀ Φ − (f(x) − f(x − I)))²] over random square removals I, per image; lower is better.

    Args:
        maps: Φ [B, H, W] (broadcast over colour channels) or [B, 3, H, W].
        samples: perturbations per image.
        square: side of the removed square, as a fraction of the image side.
        score: f, the class score explained ("logit" as Captum's forward output, "log-prob" or "prob").
        normalize: scale Φ by the optimal β first (Captum's `normalize=True`), so the map's scale does not count.
        seed: seeds the squares' positions (one int, or one per image).
        perturb: replaces the square removal: `(images) -> (perturbations, perturbed)`, each [B, n, 3, H, W].

    Returns:
        [B].
    """
    fn = score_fn(score)
    b = images.shape[0]
    chunk = batch_size or default_chunk(clf, images, backward=False)
    phi = (maps[:, None] if maps.ndim == 3 else maps).to(images)  # [B, 1 or 3, H, W]
    cls = targets.repeat_interleave(samples)

    def scored(n: int, classes: torch.Tensor, batch: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """f of the n images batch(i, j) makes for items i..j, `chunk` at a time."""
        return torch.cat([fn(clf(batch(i, min(i + chunk, n))), classes[i:i + chunk]) for i in range(0, n, chunk)])

    with torch.no_grad(), frozen(clf):
        base = scored(b, targets, lambda i, j: images[i:j])
        if perturb is None:
            # Iᵀ Φ of a square removal is Σ over the square of (x − fill)·Φ: four lookups in a summed-area table, so
            # the perturbations are never stored; each chunk of perturbed images is made just before its forward.
            top, left, side_h, side_w = _squares(images, samples, square, seed)
            v = ((images - clf.mean.to(images).view(1, 3, 1, 1)) * phi).sum(1).double()
            sat = F.pad(v.cumsum(1).cumsum(2), (1, 0, 1, 0))
            idx = torch.arange(b, device=images.device)[:, None]
            bottom, right = top + side_h, left + side_w
            dot = (sat[idx, bottom, right] - sat[idx, top, right] - sat[idx, bottom, left] + sat[idx, top, left])
            dot = dot.to(images.dtype)
            src = torch.arange(b, device=images.device).repeat_interleave(samples)
            top, left = top.flatten(), left.flatten()
            scores = scored(b * samples, cls, lambda i, j: _remove(clf, images[src[i:j]], top[i:j], left[i:j],
                                                                    side_h, side_w))
        else:
            pert, perturbed = perturb(images)
            if pert.shape[:2] != (b, samples) or perturbed.shape != pert.shape:
                raise FeatvisError(f"perturbations have shape {tuple(pert.shape)}; expected [{b}, {samples}, 3, H, W]")
            dot = (pert * phi[:, None]).flatten(2).sum(2)  # [B, n]: Iᵀ Φ
            flat = perturbed.flatten(0, 1)
            scores = scored(b * samples, cls, lambda i, j: flat[i:j])
    delta = (base[:, None] - scores.view(b, samples)).to(dot)  # f(x) − f(x − I)
    if normalize:
        denom = dot.pow(2).sum(1)
        beta = torch.where(denom != 0, (dot * delta).sum(1) / torch.where(denom != 0, denom, 1), 0.0)
        dot = beta[:, None] * dot
    return (dot - delta).pow(2).mean(1)
