"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das, Saenko 2018, BMVC).

A black-box method: show the model the image through many random smooth masks and credit each pixel with the
mean score of the masks that kept it, saliency = Σᵢ p(class | x ⊙ Mᵢ) · Mᵢ / (N · p₁). Masks follow the paper and its
reference code (eclique/RISE, `generate_masks`): an s × s binary grid with cells kept with probability p₁, upsampled
bilinearly to (s + 1) · ⌈H / s⌉ and cropped at a random shift of less than one cell. Masked-out pixels take the
model's mean colour (0 in normalized space, as the reference multiplies the normalized tensor). No gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from featvis._ops import Seed, _single, random_draw
from featvis._progress import update
from featvis._registry import Count, Fraction
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

MASKS, CELLS, KEEP = 4000, 7, 0.5  # N, s, p₁ of the paper's ResNet-50 runs (the reference notebook: 6000, 8, 0.1)


def mask_draws(seed: Seed, batch: int, masks: int, cells: int, device=None) -> torch.Tensor:
    """Uniform draws [b, masks, s·s + 2]: the grid cells, then the two shifts (b = 1 for one shared seed)."""
    b = 1 if _single(seed) else batch
    return random_draw("uniform", seed, (b, masks, cells * cells + 2), device=device)


def make_masks(draws: torch.Tensor, cells: int, keep: float, size: tuple[int, int]) -> torch.Tensor:
    """Smooth masks [n, H, W] in [0, 1] from draws [n, s·s + 2] (see `mask_draws`)."""
    h, w = size
    cell_h, cell_w = math.ceil(h / cells), math.ceil(w / cells)
    grid = (draws[:, : cells * cells] < keep).to(torch.float32).view(-1, 1, cells, cells)
    up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = (draws[:, -2] * cell_h).long().clamp(max=cell_h - 1).tolist()
    dx = (draws[:, -1] * cell_w).long().clamp(max=cell_w - 1).tolist()
    return torch.stack([up[i, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])


@ATTRIBUTIONS.register("rise")
def rise(clf, images: torch.Tensor, target=None, *, masks: Count = MASKS, cells: Count = CELLS,
         keep: Fraction = KEEP,
         seed: Seed = 0, score: str = "prob", batch_size: int | None = None) -> torch.Tensor:
    """RISE: the mean score of the class over random smooth masks, each pixel weighted by how much it was kept.

    Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models".

    Args:
        masks: number of random masks N per image (the paper: 4000; quality grows with N, cost is N forwards).
        cells: grid size s of the low-resolution masks (the paper: 7).
        keep: probability p₁ that a grid cell is kept (the paper: 0.5).
        seed: seeds the masks: one int (the same masks for every image, as the reference code) or one per image.
        score: what the masks are scored by: "prob" (the paper's softmax probability), "logit" or "log-prob".

    Returns:
        [B, H, W], the expected score given that the pixel is kept (Σ p·M / (N·p₁)).

    Example:
        >>> sal = rise(clf, x, "tabby", masks=2000, seed=[11, 12])
    """
    images, targets = prepare_inputs(clf, images, target)
    if masks < 1 or cells < 1 or not 0 < keep <= 1:
        raise FeatvisError(f"rise needs masks >= 1, cells >= 1 and 0 < keep <= 1; got {masks}, {cells}, {keep}")
    fn = score_fn(score)
    b, _, h, w = images.shape
    draws = mask_draws(seed, b, masks, cells, images.device)  # [1 or B, N, s·s + 2]
    fill = clf.mean.to(images).view(1, 3, 1, 1)
    chunk = batch_size or default_chunk(clf, images, backward=False)
    per_call = max(1, chunk // b)  # masks per model call; each call holds per_call · B masked images
    sal = torch.zeros(b, h, w, device=images.device, dtype=images.dtype)
    with torch.no_grad(), frozen(clf):
        for start in range(0, masks, per_call):
            n = min(per_call, masks - start)
            d = draws[:, start:start + n]
            m = make_masks(d.flatten(0, 1), cells, keep, (h, w)).to(images).view(d.shape[0], n, 1, h, w)
            m = m.expand(b, -1, -1, -1, -1)  # [B, n, 1, H, W]
            x = (images[:, None] * m + fill * (1 - m)).flatten(0, 1)  # [B·n, 3, H, W]
            s = fn(clf(x), targets.repeat_interleave(n)).view(b, n)
            sal += (s.to(images.dtype)[:, :, None, None] * m[:, :, 0]).sum(1)
            update("rise", start + n, masks)
    return sal / (masks * keep)
