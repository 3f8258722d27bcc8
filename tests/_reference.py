"""Slow, obviously correct reference implementations for oracle tests."""

from __future__ import annotations

import torch


def finite_difference_saliency(fn, x: torch.Tensor, c: int, pixels: list[tuple[int, int, int]], h: float = 1e-6):
    """Central differences of fn(x)[0, c] with respect to single pixels (float64)."""
    out = []
    for ch, i, j in pixels:
        xp, xm = x.clone(), x.clone()
        xp[0, ch, i, j] += h
        xm[0, ch, i, j] -= h
        out.append(((fn(xp)[0, c] - fn(xm)[0, c]) / (2 * h)).item())
    return torch.tensor(out, dtype=torch.float64)


def road_impute_reference(img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """ROAD's linear imputation (no noise), in float64 with a dense solve: a line-by-line port of the reference
    `NoisyLinearImputer.setup_sparse_system` (tleemann/road_evaluation, vendored in pytorch-grad-cam).

    img: [C, H, W]; keep: [H, W] bool (True = known). Returns the imputed [C, H, W].
    """
    weights = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
               ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]
    c, h, w = img.shape
    flat = img.reshape(c, -1).double()
    known = keep.reshape(-1)
    unknown = torch.nonzero(~known).flatten().tolist()
    index = {p: i for i, p in enumerate(unknown)}
    n = len(unknown)
    a = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, c, dtype=torch.float64)
    for i, p in enumerate(unknown):
        y, x = divmod(p, w)
        total = 1.0
        for (dy, dx), wt in weights:
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                total -= wt  # neighbours outside the image drop out
                continue
            q = yy * w + xx
            if known[q]:
                rhs[i] -= wt * flat[:, q]
            else:
                a[i, index[q]] = wt
        a[i, i] = -total
    out = flat.clone()
    if n:
        out[:, unknown] = torch.linalg.solve(a, rhs).t()
    return out.view(c, h, w)


def bilinear_upsample_reference(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a 2-D grid [h, w] to `size` with pixel centres aligned (align_corners=False, edges
    clamped), written out per output pixel in float64."""
    h, w = grid.shape
    out = torch.empty(size, dtype=torch.float64)
    sy, sx = h / size[0], w / size[1]
    for i in range(size[0]):
        y = max((i + 0.5) * sy - 0.5, 0.0)
        y0 = min(int(y), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size[1]):
            x = max((j + 0.5) * sx - 0.5, 0.0)
            x0 = min(int(x), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
            bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out
