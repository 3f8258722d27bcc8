"""The algorithms behind dataset examples (OpenAI Microscope / Lucid's "dataset examples"): how strongly each unit of
a layer responds to an image and where, the effective receptive field of a unit, and the crop of an image around a
response. The examples task streams them over a data set (featvis.tasks.examples)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RF_MASS = 0.9  # share of the centre unit's input-gradient mass that a patch holds


def unit_responses(acts: torch.Tensor, *, neuron: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Per image and channel of `acts` ([B, C, H, W], or [B, C] for a layer without positions): the response that
    ranks examples (the spatial maximum, or the centre neuron's value), where it is (a row-major grid index), the
    spatial mean, and the grid (H, W).

    Returns:
        (response [B, C], position [B, C] long, mean [B, C], (H, W)).
    """
    b, c = acts.shape[:2]
    if acts.ndim == 2:
        return acts, torch.zeros_like(acts, dtype=torch.long), acts, (1, 1)
    h, w = acts.shape[-2:]
    if neuron:
        flat = acts[:, :, h // 2, w // 2]
        pos = torch.full((b, c), (h // 2) * w + w // 2, dtype=torch.long, device=acts.device)
    else:
        flat, pos = acts.flatten(2).max(-1)  # [B, C] spatial max and where
    return flat, pos, acts.mean((2, 3)), (h, w)


def receptive_field(clf, layer: str, size: int, mass: float = RF_MASS) -> int:
    """The side of the *effective* receptive field of `layer`'s centre unit: the smallest centred square that holds
    `mass` of the |input gradient| of the unit (Luo et al. 2016: the effective field is far smaller than the
    theoretical one, which on deep layers covers most of the image)."""
    from featvis.layers import forward_until
    from featvis.models.classifier import frozen

    x = torch.full((1, 3, size, size), 0.5, device=clf.device, requires_grad=True)
    with frozen(clf):
        acts = forward_until(clf, x, layer)
        h, w = acts.shape[-2:]
        grad = torch.autograd.grad(acts[0, :, h // 2, w // 2].sum(), x)[0].abs().sum((0, 1))
    total = float(grad.sum())
    if total == 0:
        return size
    cy, cx = (size * (h // 2 + 0.5) / h), (size * (w // 2 + 0.5) / w)
    for half in range(2, size // 2 + 1):
        y0, y1 = max(0, int(cy - half)), min(size, int(cy + half))
        x0, x1 = max(0, int(cx - half)), min(size, int(cx + half))
        if float(grad[y0:y1, x0:x1].sum()) >= mass * total:
            return 2 * half
    return size


def patch_around(img: torch.Tensor, pos: int, grid: tuple[int, int], rf: int, side: int) -> torch.Tensor:
    """The receptive-field crop of `img` [3, S, S] around grid position `pos` of a `grid` feature map (row-major),
    resized to `side` × `side`."""
    s = img.shape[-1]
    h, w = grid
    y, x = divmod(int(pos), w)
    cy, cx = (y + 0.5) * s / h, (x + 0.5) * s / w
    half = max(4, min(rf, s) // 2)
    top = int(min(max(cy - half, 0), s - 2 * half))
    left = int(min(max(cx - half, 0), s - 2 * half))
    crop = img[:, top:top + 2 * half, left:left + 2 * half]
    return F.interpolate(crop[None], size=(side, side), mode="bilinear", align_corners=False)[0].clamp(0, 1)
