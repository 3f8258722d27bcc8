"""Image statistics for judging visualizations: the radially averaged power spectrum and its log-log slope.

Natural photos have power falling as 1/f^α with α ≈ 2 (van der Schaaf & van Hateren 1996; Field 1987); an
unregularized visualization is flatter (too much high-frequency energy), an over-blurred one steeper. MACO
(Fel et al. 2023) fixes the magnitude spectrum, so its slope is the photos' by construction.
"""

from __future__ import annotations

import math

import torch

from featvis.errors import FeatvisError

DEFAULT_BAND = (0.02, 0.25)  # cycles per pixel: above the few lowest bins, below JPEG/aliasing territory


def radial_power(images: torch.Tensor, *, window: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The power spectrum of each image's luminance (channel mean), averaged over rings of equal frequency.

    Args:
        images: [B, C, H, W] (or [B, H, W]).
        window: multiply by a 2-D Hann window first, so the image border's discontinuity does not add a cross of
            1/f² power along the axes.

    Returns:
        (freqs [K] in cycles per pixel for integer radii 1 … min(H, W) // 2, power [B, K]).
    """
    x = images if images.ndim == 3 else images.mean(1)
    if x.ndim != 3 or min(x.shape[-2:]) < 8:
        raise FeatvisError(f"radial_power needs images [B, C, H, W] of at least 8 px, got {tuple(images.shape)}")
    x = x.double()
    h, w = x.shape[-2:]
    x = x - x.mean((-2, -1), keepdim=True)
    if window:
        x = x * (torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device)[:, None]
                 * torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device)[None, :])
    power = torch.fft.fft2(x).abs().pow(2) / (h * w)
    fy = torch.fft.fftfreq(h, dtype=x.dtype, device=x.device)[:, None]
    fx = torch.fft.fftfreq(w, dtype=x.dtype, device=x.device)[None, :]
    n = min(h, w)
    radius = torch.round(torch.sqrt(fy * fy + fx * fx) * n).long()  # ring index, in units of 1/n cycles per pixel
    k = n // 2
    keep = (radius >= 1) & (radius <= k)
    idx = radius[keep] - 1
    sums = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device).index_add_(1, idx, power[:, keep])
    counts = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, idx, torch.ones_like(idx, dtype=x.dtype))
    freqs = torch.arange(1, k + 1, dtype=x.dtype, device=x.device) / n
    return freqs, sums / counts


def spectrum_slope(images: torch.Tensor, *, band: tuple[float, float] = DEFAULT_BAND,
                   window: bool = True) -> torch.Tensor:
    """The slope of log power against log frequency (least squares over the rings in `band`), per image.

    Natural images give about −2; white noise 0.

    Args:
        images: [B, C, H, W] in any range.
        band: (low, high) frequencies in cycles per pixel to fit over (at most 0.5, Nyquist).
        window: Hann-window the images first (see `radial_power`).

    Returns:
        [B] slopes (float64).

    Example:
        >>> spectrum_slope(fv.samples.load("chelsea"))   # ≈ −2
    """
    lo, hi = band
    if not 0 < lo < hi <= 0.5:
        raise FeatvisError(f"band {band} must satisfy 0 < low < high <= 0.5 (cycles per pixel)")
    freqs, power = radial_power(images, window=window)
    sel = (freqs >= lo) & (freqs <= hi)
    if int(sel.sum()) < 3:
        raise FeatvisError(f"band {band} holds {int(sel.sum())} frequency rings for a "
                           f"{images.shape[-1]} px image; widen it or use a larger image")
    lx = freqs[sel].log()
    ly = power[:, sel].clamp_min(1e-30).log()
    lx_c = lx - lx.mean()
    return (ly - ly.mean(1, keepdim=True)) @ lx_c / lx_c.pow(2).sum()


def power_law_noise(size: int, alpha: float, batch: int = 1, *, seed: int = 0) -> torch.Tensor:
    """Gaussian noise whose power falls as 1/f^α (random phase), [B, 1, size, size], zero mean, unit variance: a
    test signal with a known `spectrum_slope` of −α."""
    gen = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    f = torch.sqrt(fy * fy + fx * fx)
    amp = torch.where(f > 0, f.clamp_min(1 / size) ** (-alpha / 2), torch.zeros_like(f))
    phase = 2 * math.pi * torch.rand(batch, 1, *f.shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(batch, 1, *f.shape, generator=gen, dtype=torch.float64).abs()  # Rayleigh-like magnitudes
    x = torch.fft.irfft2(torch.polar(amp * noise, phase), s=(size, size))
    x = x - x.mean((-2, -1), keepdim=True)
    return (x / x.std(dim=(-2, -1), keepdim=True)).float()
