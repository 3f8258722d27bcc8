"""Transforms applied to the image before the model sees it at each step; a visualization that survives them
is robust rather than adversarial noise. Each is `(images, gen) -> images`, differentiable, and random only
through `gen`, so a seeded render is reproducible.

`gen` is one `torch.Generator` (one draw shared by the batch) or a sequence with one generator per image: then
every image gets its own draw, and an image's render does not depend on which batch it is in. Transforms that
change the shape by a random amount (`random_scale`) cannot differ per image and use the first image's draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from featvis._ops import gaussian_blur
from featvis.errors import FeatvisError

Generators = torch.Generator | Sequence[torch.Generator] | None
Transform = Callable[[torch.Tensor, Generators], torch.Tensor]

LUCID_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))  # 0.90 … 1.10 (Lucid's standard_transforms)
LUCID_DEGREES = tuple(range(-10, 11)) + 5 * (0,)  # −10 … 10°, with extra weight on 0


def _each(gen: Generators, batch: int, draw: Callable[[torch.Generator | None], object]) -> list:
    """One draw per image: from each image's generator, or one shared draw repeated."""
    if gen is None or isinstance(gen, torch.Generator):
        return [draw(gen)] * batch
    if len(gen) != batch:
        raise FeatvisError(f"got {len(gen)} generators for {batch} images; give one, or one per image")
    return [draw(g) for g in gen]


def _first(gen: Generators) -> torch.Generator | None:
    return gen if gen is None or isinstance(gen, torch.Generator) else gen[0]


def _choice(options: Sequence, gen: torch.Generator | None):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def _crop_each(x: torch.Tensor, offsets: list[tuple[int, int]], h: int, w: int) -> torch.Tensor:
    if len(set(offsets)) == 1:
        dy, dx = offsets[0]
        return x[..., dy:dy + h, dx:dx + w]
    return torch.stack([x[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side with a constant (Lucid: 12 px of grey)."""
    return lambda x, gen: F.pad(x, (width,) * 4, value=value)


def jitter(d: int) -> Transform:
    """Random translation by cropping: the output is d pixels smaller (Lucid's jitter)."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        if d <= 0:
            return x
        offsets = _each(gen, x.shape[0], lambda g: tuple(int(v) for v in torch.randint(d + 1, (2,), generator=g)))
        h, w = x.shape[-2:]
        return _crop_each(x, offsets, h - d, w - d)

    return fn


def roll_jitter(d: int) -> Transform:
    """Random circular shift by up to ±d pixels (the lab's jitter, `torch.roll`)."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        shifts = _each(gen, x.shape[0], lambda g: tuple(int(v) for v in torch.randint(-d, d + 1, (2,), generator=g)))
        if len(set(shifts)) == 1:
            return torch.roll(x, shifts=shifts[0], dims=(-2, -1))
        return torch.stack([torch.roll(x[i], shifts=s, dims=(-2, -1)) for i, s in enumerate(shifts)])

    return fn


def translate(d: int) -> Transform:
    """Shift by 0 … d−1 pixels right and down at the same size, filling with black (Lucent's `jitter`, kornia's
    `translate`)."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        offsets = _each(gen, x.shape[0], lambda g: tuple(int(v) for v in torch.randint(d, (2,), generator=g)))
        h, w = x.shape[-2:]
        padded = F.pad(x, (d, 0, d, 0))
        return _crop_each(padded, [(d - dy, d - dx) for dy, dx in offsets], h, w)

    return fn


def random_scale(scales: Sequence[float], *, align_corners: bool = False, pad_to_size: bool = False) -> Transform:
    """Resize by a factor picked from `scales` (bilinear); one factor for the batch (the shape changes).

    With `pad_to_size` a shrunk image is padded back with black to at least its size (Lucent's `random_scale`).
    """

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        s = float(_choice(scales, _first(gen)))
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        size = [max(1, math.ceil(v * s)) if pad_to_size else max(1, round(v * s)) for v in (h, w)]
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        if pad_to_size:
            py, px = max(0, math.ceil((h - size[0]) / 2)), max(0, math.ceil((w - size[1]) / 2))
            out = F.pad(out, (px, px, py, py))
        return out

    return fn


def _affine(x: torch.Tensor, thetas: list[tuple[float, ...]], size: tuple[int, int] | None = None,
            padding: str = "border") -> torch.Tensor:
    """Resample each image with its own 2×3 inverse map (output → input, normalized coordinates)."""
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device).view(-1, 2, 3)
    out_size = [x.shape[0], x.shape[1], *(size or x.shape[-2:])]
    grid = F.affine_grid(theta, out_size, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def random_rotate(degrees: Sequence[float], *, padding: str = "border") -> Transform:
    """Rotate about the centre by an angle picked from `degrees` (bilinear; `padding` "border" or "zeros")."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        angles = _each(gen, x.shape[0], lambda g: math.radians(float(_choice(degrees, g))))
        if not any(angles):
            return x
        return _affine(x, [(math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a), 0.0) for a in angles],
                       padding=padding)

    return fn


def blur(sigma: float) -> Transform:
    return lambda x, gen: gaussian_blur(x, sigma)


def compose(transforms: Sequence[Transform]) -> Transform:
    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        for t in transforms:
            x = t(x, gen)
        return x

    return fn


def standard_transforms() -> list[Transform]:
    """Lucid's transformation robustness: pad 12, jitter 8, scale 0.90–1.10, rotate −10..10°, jitter 4."""
    return [pad(12), jitter(8), random_scale(LUCID_SCALES), random_rotate(LUCID_DEGREES), jitter(4)]


def lucent_transforms() -> list[Transform]:
    """Lucent's `standard_transforms` as written: pad 12 grey, shift 0–7 px with black fill, resize by 0.90–1.10
    (align_corners, black padding when shrunk), rotate −10..10° with black fill, shift 0–3 px. The model sees
    248–273 px for a 224 px image."""
    return [pad(12), translate(8), random_scale(LUCID_SCALES, align_corners=True, pad_to_size=True),
            random_rotate(LUCID_DEGREES, padding="zeros"), translate(4)]


def random_affine(scales: Sequence[float], degrees: Sequence[float]) -> Transform:
    """Random scale and rotation about the centre in one resampling, keeping the image size: the model then
    sees one input shape on every step (no per-shape kernel planning), unlike a resize followed by a rotation."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        draws = _each(gen, x.shape[0], lambda g: (float(_choice(scales, g)), math.radians(float(_choice(degrees, g)))))
        if all(s == 1.0 and a == 0.0 for s, a in draws):
            return x
        # the grid samples the input: the inverse scale zooms by s
        return _affine(x, [(math.cos(a) / s, -math.sin(a) / s, 0.0, math.sin(a) / s, math.cos(a) / s, 0.0)
                           for s, a in draws])

    return fn


def fixed_size_transforms() -> list[Transform]:
    """Lucid's robustness (pad 12, jitter 8, scale 0.90–1.10, rotate −10..10°, jitter 4) with scale and rotation
    done as one same-size affine resampling, so every step feeds the model the same shape."""
    return [pad(12), jitter(8), random_affine(LUCID_SCALES, LUCID_DEGREES), jitter(4)]


def random_crops(size: int | None = None, box: tuple[float, float] = (0.2, 0.25),
                 loc_std: float | None = 0.15) -> Transform:
    """A random crop of each image, resized to `size` × `size` (default: the image's side) — MACO's augmentation
    (Fel et al. 2023; horama `common.py`): side a fraction of the image drawn uniformly from `box`, centre drawn
    from N(0.5, loc_std) per axis in image fractions; crops reaching past the border see black there, as horama's
    `roi_align` does. With `loc_std=None` the centre is uniform over the positions that keep the crop inside the
    image (Faccent's `box_crop_2`). Draw it several times per step with render's `views`."""
    lo, hi = box
    if not 0 < lo <= hi:
        raise FeatvisError(f"crop box {box} must be fractions 0 < low <= high")

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        def draw(g):
            f = lo + (hi - lo) * torch.rand(1, generator=g).item()
            if loc_std is None:
                cy, cx = (f / 2 + (1 - min(f, 1.0)) * torch.rand(2, generator=g)).tolist()
            else:
                cy, cx = (0.5 + loc_std * torch.randn(2, generator=g)).tolist()
            return f, cx, cy

        boxes = _each(gen, x.shape[0], draw)
        side = size or x.shape[-1]
        # output → input in normalized coordinates [-1, 1]: scale by the crop fraction, move to its centre
        return _affine(x, [(f, 0.0, 2 * cx - 1, 0.0, f, 2 * cy - 1) for f, cx, cy in boxes], (side, side), "zeros")

    return fn


def noise(sigma: float) -> Transform:
    """Add Gaussian noise of std σ and uniform noise of width σ (MACO's augmentation; horama adds both)."""

    def fn(x: torch.Tensor, gen: Generators) -> torch.Tensor:
        if sigma <= 0:
            return x
        shape = x.shape[1:]

        def draw(g):
            return (torch.randn(shape, generator=g) + torch.rand(shape, generator=g) - 0.5) * sigma

        drawn = _each(gen, x.shape[0], draw)
        return x + torch.stack(drawn).to(x)

    return fn


def maco_transforms(size: int | None = None, box: tuple[float, float] = (0.2, 0.25), noise_std: float = 0.05,
                    loc_std: float = 0.15) -> list[Transform]:
    """MACO's per-view augmentation: a random crop resized to the model's side, then noise."""
    return [random_crops(size, box, loc_std), noise(noise_std)]
