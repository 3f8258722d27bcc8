"""Parameterizations: nn.Modules whose parameters are optimized and whose forward() returns images
[B, 3, H, W] in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn

from featvis.errors import FeatvisError

# Square root of ImageNet's colour correlation, as an SVD factor (Lucid, `optvis/param/color.py`); dividing by
# the largest column norm keeps the map's scale ≤ 1. Optimizing in these decorrelated coordinates gives
# colours that co-vary as in natural images (Olah et al. 2017).
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
FFT_DECAY = 1.0  # spectrum scaled by 1/f^decay: natural images have a 1/f amplitude spectrum
FFT_SD = 0.01  # initial spectrum scale (Lucid)


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


class PixelImage(nn.Module):
    """Plain pixels. With to_valid="clamp" the parameters *are* the image (the lab's parameterization)."""

    def __init__(self, size: int, batch: int = 1, *, sd: float = 0.01, decorrelate: bool = False,
                 to_valid: str = "sigmoid", init: torch.Tensor | None = None, generator=None) -> None:
        super().__init__()
        self.decorrelate, self.mode = decorrelate, to_valid
        if init is not None:
            pixels = init.detach().clone().float()
        elif to_valid == "clamp":
            pixels = (0.5 + sd * torch.randn(batch, 3, size, size, generator=generator)).clamp(0, 1)
        else:
            pixels = sd * torch.randn(batch, 3, size, size, generator=generator)
        self.pixels = nn.Parameter(pixels)

    def forward(self) -> torch.Tensor:
        return to_valid(self.pixels, self.decorrelate, self.mode)


class FFTImage(nn.Module):
    """Images parameterized by their Fourier spectrum, scaled by 1/f^decay (Olah et al. 2017), so that
    gradient steps change low frequencies as readily as high ones."""

    def __init__(self, size: int, batch: int = 1, *, sd: float = FFT_SD, decay: float = FFT_DECAY,
                 decorrelate: bool = True, to_valid: str = "sigmoid", generator=None) -> None:
        super().__init__()
        self.h = self.w = size
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay
        # Lucid's normalization: scale by sqrt(w·h) so the initial pixel spread does not depend on size.
        self.register_buffer("scale", scale * math.sqrt(size * size), persistent=False)
        self.spectrum = nn.Parameter(sd * torch.randn(batch, 3, *freqs.shape, 2, generator=generator))
        self.decorrelate, self.mode = decorrelate, to_valid

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=(self.h, self.w), norm="backward")  # TF irfft2d: divides by h·w, like Lucid
        return to_valid(x / 4, self.decorrelate, self.mode)  # /4: Lucid's constant, keeps sigmoid unsaturated


def image(size: int, batch: int = 1, *, fft: bool = True, decorrelate: bool = True, sd: float | None = None,
          generator=None) -> nn.Module:
    """The recommended parameterization: Fourier + decorrelated colour + sigmoid (Lucid's `param.image`)."""
    if fft:
        return FFTImage(size, batch, sd=sd or FFT_SD, decorrelate=decorrelate, generator=generator)
    return PixelImage(size, batch, sd=sd or 0.01, decorrelate=decorrelate, generator=generator)
