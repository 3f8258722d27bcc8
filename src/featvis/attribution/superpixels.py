"""Superpixels for the surrogate methods (LIME, KernelSHAP): a regular grid, or SLIC in CIELAB.

SLIC (Achanta et al. 2012, "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", TPAMI) is k-means
in (L, a, b, y, x) with the position weighted by m / S (m the compactness, S the grid interval), each pixel compared
only with the centres of the 3 × 3 grid cells around its own (the paper's 2S × 2S window), all pixels and images at
once. Defaults follow scikit-image's `slic` (compactness 10, 10 iterations, Lab input, no pre-smoothing);
scikit-image is not a dependency. As its `enforce_connectivity`, every superpixel ends as one 4-connected piece:
each keeps its largest component and stray fragments join the superpixels around them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from featvis.errors import FeatvisError

SEGMENTERS = ("grid", "slic")
COMPACTNESS, ITERATIONS = 10.0, 10  # scikit-image slic defaults (compactness, max_num_iter)
# sRGB (D65) -> XYZ, and the D65 white point (the sRGB standard, IEC 61966-2-1; scikit-image's constants)
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIELAB [B, 3, H, W] (L in [0, 100]) of sRGB images [B, 3, H, W] in [0, 1]."""
    linear = torch.where(images > 0.04045, ((images + 0.055) / 1.055) ** 2.4, images / 12.92)
    m = torch.tensor(RGB_TO_XYZ, device=images.device, dtype=images.dtype)
    white = torch.tensor(WHITE_D65, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", m, linear) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def grid_shape(cells: int, h: int, w: int) -> tuple[int, int]:
    """Rows and columns of a grid of about `cells` cells with near-square cells on an H × W image."""
    rows = max(1, min(h, round(math.sqrt(cells * h / w))))
    return rows, max(1, min(w, round(cells / rows)))


def grid_labels(rows: int, cols: int, h: int, w: int, device=None) -> torch.Tensor:
    """Cell index [H, W] of each pixel on a rows × cols grid (cells differ by at most one pixel)."""
    cy = torch.arange(h, device=device) * rows // h
    cx = torch.arange(w, device=device) * cols // w
    return cy[:, None] * cols + cx[None, :]


def slic(images: torch.Tensor, segments: int = 64, compactness: float = COMPACTNESS,
         iterations: int = ITERATIONS) -> torch.Tensor:
    """SLIC superpixel labels [B, H, W] (long, at most `segments`·(1 + rounding) distinct values per image).

    Example:
        >>> labels = slic(x, segments=64)
    """
    b, _, h, w = images.shape
    rows, cols = grid_shape(segments, h, w)
    k = rows * cols
    step = math.sqrt(h * w / k)  # S, the grid interval
    ys = torch.arange(h, device=images.device, dtype=images.dtype)
    xs = torch.arange(w, device=images.device, dtype=images.dtype)
    pos = torch.stack(torch.broadcast_tensors(ys[:, None], xs[None, :])) * (compactness / step)  # [2, H, W]
    feats = torch.cat([rgb_to_lab(images), pos.expand(b, -1, -1, -1)], 1).flatten(2).transpose(1, 2)  # [B, HW, 5]
    cells = grid_labels(rows, cols, h, w, images.device).flatten()  # [HW]
    offsets = torch.tensor([-1, 0, 1], device=images.device)
    cand_y = (cells // cols)[:, None, None] + offsets[None, :, None]  # [HW, 3, 1]
    cand_x = (cells % cols)[:, None, None] + offsets[None, None, :]  # [HW, 1, 3]
    candidates = (cand_y.clamp(0, rows - 1) * cols + cand_x.clamp(0, cols - 1)).flatten(1)  # [HW, 9]
    labels = cells.expand(b, -1)
    centres = _means(feats, labels, k, torch.zeros(b, k, 5, device=images.device, dtype=images.dtype))
    sq = feats.pow(2).sum(-1, keepdim=True)  # [B, HW, 1]
    for _ in range(iterations):
        # D² = d_lab² + (m/S)² d_xy² = |f|² − 2 f·c + |c|², only over the 3 × 3 cells' centres
        dist = sq - 2 * feats @ centres.transpose(1, 2) + centres.pow(2).sum(-1)[:, None]  # [B, HW, K]
        nearest = dist.gather(2, candidates.expand(b, -1, -1)).argmin(-1, keepdim=True)  # [B, HW, 1]
        labels = candidates.expand(b, -1, -1).gather(2, nearest)[..., 0]  # [B, HW]
        centres = _means(feats, labels, k, centres)
    return connected(labels.view(b, h, w))


def _means(feats: torch.Tensor, labels: torch.Tensor, k: int, previous: torch.Tensor) -> torch.Tensor:
    """Mean feature [B, K, 5] of each cluster; an emptied cluster keeps its previous centre."""
    sums = torch.zeros_like(previous).scatter_add_(1, labels[..., None].expand(-1, -1, feats.shape[-1]), feats)
    counts = torch.zeros(previous.shape[:2], device=feats.device, dtype=feats.dtype)
    counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=feats.dtype))
    return torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], previous)


def _neighbours(t: torch.Tensor, fill: int) -> list[torch.Tensor]:
    """The 4-neighbours of every pixel of [B, H, W] (up, down, left, right), `fill` beyond the border."""
    p = F.pad(t, (1, 1, 1, 1), value=fill)
    return [p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]


def components(labels: torch.Tensor) -> torch.Tensor:
    """4-connected components [B, H, W] of equal labels, each named by its smallest pixel index: min-label
    propagation with hooking and pointer jumping (Shiloach & Vishkin 1982), a few dozen passes, not a diameter's."""
    b, h, w = labels.shape
    big = h * w
    comp = torch.arange(big, device=labels.device).expand(b, -1).clone()  # [B, HW]
    same = [near == labels for near in _neighbours(labels, -1)]
    for _ in range(big):
        grid = comp.view(b, h, w)
        best = grid
        for keep, c in zip(same, _neighbours(grid, big), strict=True):
            best = torch.where(keep, torch.minimum(best, c), best)
        best = best.flatten(1).scatter_reduce(1, comp, best.flatten(1), "amin")  # hook: the root takes it too
        best = best.gather(1, best).gather(1, best.gather(1, best))  # pointer jumping: follow links to a root
        if torch.equal(best, comp):
            break
        comp = best
    return comp.view(b, h, w)


def connected(labels: torch.Tensor) -> torch.Tensor:
    """Labels with every segment one 4-connected piece (scikit-image's enforce_connectivity, in effect): each
    label keeps its largest component; the stray fragments grow into the labels around them."""
    b, h, w = labels.shape
    comp = components(labels).flatten(1)  # [B, HW]
    flat = labels.flatten(1)
    size = torch.zeros_like(comp).scatter_add_(1, comp, torch.ones_like(comp)).gather(1, comp)
    key = size * (h * w) + comp  # the largest component wins, the smaller index breaks ties
    best = torch.zeros(b, int(flat.max()) + 1, dtype=key.dtype, device=key.device)
    best = best.scatter_reduce(1, flat, key, "amax")
    out = torch.where(key == best.gather(1, flat), flat, -1).view(b, h, w)
    while (out < 0).any():  # fill fragments from their assigned neighbours, a ring per pass
        for near in _neighbours(out, -1):
            out = torch.where((out < 0) & (near >= 0), near, out)
    return out


def compact(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels renumbered 0..Mᵢ − 1 per image (order kept) and the counts Mᵢ [B]."""
    out, counts = torch.empty_like(labels), []
    for i, lab in enumerate(labels):
        values, inverse = torch.unique(lab, return_inverse=True)
        out[i] = inverse
        counts.append(values.numel())
    return out, torch.tensor(counts, device=labels.device)


def make_segments(images: torch.Tensor, segments="grid", cells: int = 8,
                  compactness: float = COMPACTNESS) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Segment labels [B, H, W] (0..Mᵢ − 1), their counts Mᵢ [B], and the design width M (the most segments any
    image of this size can have: it depends on the size alone, so a batch and its singles draw alike).

    `segments`: "grid" (cells × cells), "slic" (about cells² superpixels) or a label tensor [H, W] or [B, H, W].
    """
    b, _, h, w = images.shape
    if isinstance(segments, torch.Tensor):
        labels = segments.to(images.device).long()
        if labels.ndim == 2:
            labels = labels.expand(b, -1, -1)
        if labels.shape != (b, h, w) or labels.min() < 0:
            raise FeatvisError(f"segments of shape {tuple(segments.shape)} must be non-negative labels [H, W] or "
                               f"[B, H, W] matching images of shape {tuple(images.shape)}")
        labels, counts = compact(labels)
        return labels, counts, int(counts.max())
    if segments == "grid":
        labels = grid_labels(min(cells, h), min(cells, w), h, w, images.device).expand(b, -1, -1)
        width = min(cells, h) * min(cells, w)
        return labels, torch.full((b,), width, device=images.device), width
    if segments == "slic":
        rows, cols = grid_shape(cells * cells, h, w)
        labels, counts = compact(slic(images, cells * cells, compactness))
        return labels, counts, rows * cols
    raise FeatvisError(f"unknown segments {segments!r}; use one of {', '.join(SEGMENTERS)} or a label tensor")
