"""Parameterizations: nn.Modules whose parameters are optimized and whose forward() returns images
[B, 3, H, W] in [0, 1].

Random initial values come from `seed`: one int (one generator for the batch) or one seed per image (each image's
start depends only on its own seed, whatever batch it is rendered in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from featvis._ops import random_draw
from featvis.errors import FeatvisError

# Square root of ImageNet's colour correlation, as an SVD factor (Lucid, `optvis/param/color.py`); dividing by
# the largest column norm keeps the map's scale ≤ 1. Optimizing in these decorrelated coordinates gives
# colours that co-vary as in natural images (Olah et al. 2017).
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
FFT_DECAY = 1.0  # spectrum scaled by 1/f^decay: natural images have a 1/f amplitude spectrum
FFT_SD = 0.01  # initial spectrum scale (Lucid)
MACO_SPECTRUM = "maco_spectrum.pt"  # made by scripts/maco_spectrum.py from public-domain photos (see its header)
STANDARDIZE_EPS = 1e-4  # horama's `standardize`

Seed = int | Sequence[int]


def _color_matrix(device=None, dtype=torch.float32) -> torch.Tensor:
    m = torch.tensor(COLOR_CORRELATION_SVD_SQRT, device=device, dtype=dtype)
    return m / m.norm(dim=0).max()


def to_valid(x: torch.Tensor, decorrelate: bool, mode: str) -> torch.Tensor:
    """Unbounded image-like tensor → [0, 1]: optional colour de-correlation, then sigmoid or clamp."""
    if decorrelate:
        x = torch.einsum("bchw,dc->bdhw", x, _color_matrix(x.device, x.dtype))
    if mode == "sigmoid":
        return torch.sigmoid(x)
    if mode == "clamp":
        return x.clamp(0, 1)
    raise FeatvisError(f"unknown valid-range mapping {mode!r}; use 'sigmoid' or 'clamp'")


def _draw(kind: str, shape: tuple[int, ...], seed: Seed | None, generator: torch.Generator | None) -> torch.Tensor:
    if seed is None:
        return (torch.randn if kind == "normal" else torch.rand)(shape, generator=generator)
    return random_draw(kind, seed, shape)


class PixelImage(nn.Module):
    """Plain pixels. With to_valid="clamp" the parameters *are* the image (the lab's parameterization)."""

    def __init__(self, size: int, batch: int = 1, *, sd: float = 0.01, decorrelate: bool = False,
                 to_valid: str = "sigmoid", init: torch.Tensor | None = None, seed: Seed | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.decorrelate, self.mode = decorrelate, to_valid
        if init is not None:
            pixels = init.detach().clone().float()
        elif to_valid == "clamp":
            pixels = (0.5 + sd * _draw("normal", (batch, 3, size, size), seed, generator)).clamp(0, 1)
        else:
            pixels = sd * _draw("normal", (batch, 3, size, size), seed, generator)
        self.pixels = nn.Parameter(pixels)

    def forward(self) -> torch.Tensor:
        return to_valid(self.pixels, self.decorrelate, self.mode)


class FFTImage(nn.Module):
    """Images parameterized by their Fourier spectrum, scaled by 1/f^decay (Olah et al. 2017), so that
    gradient steps change low frequencies as readily as high ones."""

    def __init__(self, size: int, batch: int = 1, *, sd: float = FFT_SD, decay: float = FFT_DECAY,
                 decorrelate: bool = True, to_valid: str = "sigmoid", seed: Seed | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.h = self.w = size
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay
        # Lucid's normalization: scale by sqrt(w·h) so the initial pixel spread does not depend on size.
        self.register_buffer("scale", scale * math.sqrt(size * size), persistent=False)
        self.spectrum = nn.Parameter(sd * _draw("normal", (batch, 3, *freqs.shape, 2), seed, generator))
        self.decorrelate, self.mode = decorrelate, to_valid

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="backward")  # TF irfft2d: divides by h·w, like Lucid
        return to_valid(x / 4, self.decorrelate, self.mode)  # /4: Lucid's constant, keeps sigmoid unsaturated


@lru_cache(maxsize=1)
def _maco_template() -> torch.Tensor:
    with resources.files("featvis.optvis").joinpath(MACO_SPECTRUM).open("rb") as f:
        data = torch.load(f, weights_only=True)
    return data["magnitude"].float()


def maco_magnitude(size: int, template: torch.Tensor | None = None) -> torch.Tensor:
    """The natural-image Fourier magnitude [3, size, size // 2 + 1] (decorrelated colour channels, rfft2 layout)
    for a `size` × `size` image, resampled from the shipped template as a function of cycles per pixel.

    The rows of an rfft2 array run 0 … N/2, −N/2 … −1: they are shifted to increasing frequency before the
    bilinear resampling and shifted back after, so no row is interpolated across the wrap.
    """
    t = _maco_template() if template is None else template
    if t.shape[-2] == size and t.shape[-1] == size // 2 + 1:
        return t.clone()
    shifted = torch.fft.fftshift(t, dim=-2)[None]
    out = F.interpolate(shifted, size=(size, size // 2 + 1), mode="bilinear", align_corners=True)[0]
    return torch.fft.ifftshift(out, dim=-2).clamp_min(0)


class MacoImage(nn.Module):
    """MACO (Fel et al., NeurIPS 2023, arXiv 2306.06805): only the Fourier *phase* is optimized; the magnitude is
    fixed to the average spectrum of natural photos, so the image keeps natural-image energy at every frequency
    and the optimization can only move where the structure is.

    forward, as horama's `maco_preconditioner`: phase standardized (zero mean, unit variance) → spectrum =
    magnitude·e^{iφ} → inverse FFT → standardized → colour re-correlation → sigmoid. Both standardizations run per
    image here (horama's run over the whole tensor, which would couple the images of a batch). Standardizing the
    phase also anneals the step: as the raw phase spreads, a fixed NAdam step turns the image less.

    Args:
        size: image side in pixels (any size: the magnitude template is resampled).
        batch: number of images.
        seed: an int, or one seed per image (the initial phase is N(0, 1), as horama's).
        magnitude: a [3, size, size // 2 + 1] magnitude to use instead of the shipped one.
    """

    def __init__(self, size: int, batch: int = 1, *, seed: Seed = 0, magnitude: torch.Tensor | None = None) -> None:
        super().__init__()
        if size < 2:
            raise FeatvisError(f"MACO needs an image side of at least 2 px, got {size}")
        self.h = self.w = size
        mag = maco_magnitude(size) if magnitude is None else magnitude.detach().float()
        if mag.shape != (3, size, size // 2 + 1):
            raise FeatvisError(f"MACO magnitude has shape {tuple(mag.shape)}; a {size} px image needs "
                               f"(3, {size}, {size // 2 + 1})")
        self.register_buffer("magnitude", mag, persistent=False)
        self.phase = nn.Parameter(random_draw("normal", seed, (batch, 3, size, size // 2 + 1)))

    def forward(self) -> torch.Tensor:
        phase = _standardize(self.phase)
        mag = self.magnitude.to(phase.dtype)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho")
        return to_valid(_standardize(x), True, "sigmoid")


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per image (horama's `standardize`, per batch element)."""
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - flat.mean(1).view(shape)) / (flat.std(1).view(shape) + STANDARDIZE_EPS)


LOGIT_EPS = 1e-3  # pixels are clamped to [ε, 1 − ε] before the logit, so a seed photo is reproduced to within ε


class PhotoSpectrum(nn.Module):
    """An image parameterized by the Fourier phase (and a gain on the magnitude) of a given photo, starting exactly
    at that photo — feature accentuation's parameterization (Hamblin, Fel et al. 2024, arXiv 2402.10039; Faccent's
    `fourier_phase` with an init image).

    The photo is mapped into the space the image is made in (logit, then colour de-correlation) and transformed;
    its magnitude is kept (times 2·sigmoid(gain), 1 at the start, when `gain`) and its phase is the parameter.

    Args:
        images: [B, 3, H, W] in [0, 1], the seed photos.
        gain: also learn a per-frequency gain on the magnitude, in (0, 2).
    """

    def __init__(self, images: torch.Tensor, *, gain: bool = True) -> None:
        super().__init__()
        if images.ndim != 4 or images.shape[1] != 3:
            raise FeatvisError(f"PhotoSpectrum needs images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.detach().float()
        self.h, self.w = x.shape[-2:]
        z = torch.logit(x.clamp(LOGIT_EPS, 1 - LOGIT_EPS))
        d = torch.einsum("bchw,dc->bdhw", z, torch.linalg.inv(_color_matrix(x.device, torch.float64)).float())
        spec = torch.fft.rfft2(d, norm="ortho")
        self.register_buffer("magnitude", spec.abs(), persistent=False)
        self.phase = nn.Parameter(spec.angle())
        self.gain = nn.Parameter(torch.zeros_like(spec.real)) if gain else None

    def forward(self) -> torch.Tensor:
        mag = self.magnitude if self.gain is None else self.magnitude * 2 * torch.sigmoid(self.gain)
        spec = torch.complex(mag * torch.cos(self.phase), mag * torch.sin(self.phase))
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho")
        return to_valid(x, True, "sigmoid")


def image(size: int, batch: int = 1, *, fft: bool = True, decorrelate: bool = True, sd: float | None = None,
          seed: Seed | None = None, generator: torch.Generator | None = None) -> nn.Module:
    """The recommended parameterization: Fourier + decorrelated colour + sigmoid (Lucid's `param.image`)."""
    if fft:
        return FFTImage(size, batch, sd=sd or FFT_SD, decorrelate=decorrelate, seed=seed, generator=generator)
    return PixelImage(size, batch, sd=sd or 0.01, decorrelate=decorrelate, seed=seed, generator=generator)
