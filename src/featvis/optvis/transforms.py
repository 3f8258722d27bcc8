"""Transforms applied to the image before the model sees it at each step; a visualization that survives them
is robust rather than adversarial noise. Each is `(images, generator) -> images`, differentiable, and random
only through the generator, so a seeded render is reproducible."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from featvis._ops import gaussian_blur

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(options: Sequence, gen: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side with a constant (Lucid: 12 px of grey)."""
    return lambda x, gen: F.pad(x, (width,) * 4, value=value)


def jitter(d: int) -> Transform:
    """Random translation by cropping: the output is d pixels smaller (Lucid's jitter)."""

    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if d <= 0:
            return x
        dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=gen))
        h, w = x.shape[-2:]
        return x[..., dy:h - d + dy, dx:w - d + dx]

    return fn


def roll_jitter(d: int) -> Transform:
    """Random circular shift by up to ±d pixels (the lab's jitter, `torch.roll`)."""

    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        oy, ox = (int(v) for v in torch.randint(-d, d + 1, (2,), generator=gen))
        return torch.roll(x, shifts=(oy, ox), dims=(-2, -1))

    return fn


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor picked from `scales` (bilinear)."""

    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = float(_choice(scales, gen))
        if s == 1.0:
            return x
        size = [max(1, round(v * s)) for v in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return fn


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle picked from `degrees` (bilinear, border padding)."""

    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a = math.radians(float(_choice(degrees, gen)))
        if a == 0.0:
            return x
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return fn


def blur(sigma: float) -> Transform:
    return lambda x, gen: gaussian_blur(x, sigma)


def compose(transforms: Sequence[Transform]) -> Transform:
    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for t in transforms:
            x = t(x, gen)
        return x

    return fn


def standard_transforms() -> list[Transform]:
    """Lucid's transformation robustness: pad 12, jitter 8, scale 0.90–1.10, rotate −10..10°, jitter 4."""
    return [pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
            random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4)]


def random_affine(scales: Sequence[float], degrees: Sequence[float]) -> Transform:
    """Random scale and rotation about the centre in one resampling, keeping the image size: the model then
    sees one input shape on every step (no per-shape kernel planning), unlike a resize followed by a rotation."""

    def fn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = float(_choice(scales, gen))
        a = math.radians(float(_choice(degrees, gen)))
        if s == 1.0 and a == 0.0:
            return x
        cos, sin = math.cos(a) / s, math.sin(a) / s  # the grid samples the input: inverse scale zooms by s
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return fn


def fixed_size_transforms() -> list[Transform]:
    """Lucid's robustness (pad 12, jitter 8, scale 0.90–1.10, rotate −10..10°, jitter 4) with scale and rotation
    done as one same-size affine resampling, so every step feeds the model the same shape."""
    return [pad(12), jitter(8), random_affine([1 + (i - 5) / 50 for i in range(11)], list(range(-10, 11)) + 5 * [0]),
            jitter(4)]
