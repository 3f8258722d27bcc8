"""Feature accentuation (Hamblin, Fel, Saha, Konkle, Alvarez 2024, arXiv 2402.10039): image-seeded feature
visualization. Start from a real photo and raise a channel's (or a class's) activation while staying close to
the photo, so the result shows *what* in this image the feature responds to, where it does.

The recipe follows the paper's reference code (Faccent): the image is parameterized by the photo's own Fourier
phase (and a gain on its magnitude) in decorrelated colour (`PhotoSpectrum`), the model sees random crops + noise
of it each step, and a regularizer keeps the image's activations at a layer close to the photo's: the mean over
positions of the L2 distance between the two activation vectors (Faccent's `l2_compare`), weighted by `reg`.
Two departures, both to keep it cheap and exact: the photo's activations are computed once, on the full photo,
and compared with the image's full view (Faccent passes the photo through the same random crops every step,
doubling the work), and the distance is smoothed near zero (√(d² + ε²) − ε) because the image starts exactly at
the photo, where the plain norm has no gradient; `reg` is then an absolute weight instead of Faccent's ratio of
the two gradients at the first step (which is undefined at an exact start).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from featvis._progress import update
from featvis._types import Result
from featvis.errors import FeatvisError
from featvis.layers import capture, default_layer, find_layer, forward_until, layer_label
from featvis.models.classifier import frozen
from featvis.optvis import transforms as T
from featvis.optvis.param import PhotoSpectrum
from featvis.optvis.render import per_image_seeds

LOGITS = ("logits", "<logits>")  # layer names that mean "a class logit" (channel = the class)
DIST_EPS = 1e-3  # smoothing of the per-position distance near zero


@dataclass(frozen=True, repr=False)
class AccentuationResult(Result):
    """Photos, their accentuations, and the feature's activation before and after.

    `difference` is accentuated − original in [−1, 1]; `before`/`after` are the channel's mean activation (or the
    class logit) on the full images as the model sees them; `transparency` [B, H, W] is the accumulated
    |∂objective/∂pixel| (where the optimization pushed).
    """

    original: torch.Tensor  # [B, 3, H, W]
    accentuated: torch.Tensor  # [B, 3, H, W]
    before: torch.Tensor  # [B]
    after: torch.Tensor  # [B]
    layer: str
    channels: list[int]
    steps: int
    seconds: float
    transparency: torch.Tensor | None = None
    params: dict = field(default_factory=dict)

    @property
    def difference(self) -> torch.Tensor:
        return self.accentuated - self.original

    @property
    def psnr(self) -> torch.Tensor:
        """PSNR in dB of each accentuation against its photo (higher: closer)."""
        mse = self.difference.pow(2).flatten(1).mean(1).clamp_min(1e-12)
        return 10 * torch.log10(1 / mse)


def _target(clf, layer: str | None, channel, batch: int) -> tuple[str | None, list[int]]:
    values = [channel] * batch if isinstance(channel, (int, str)) else list(channel)
    if len(values) != batch:
        raise FeatvisError(f"got {len(values)} channels for {batch} images; give one, or one per image")
    if layer is None or layer in LOGITS:
        return None, [clf.labels.lookup(v) for v in values]
    if any(isinstance(v, str) for v in values):
        raise FeatvisError(f"channels of layer {layer!r} are integers, got {values}; for a class use layer='logits'")
    return find_layer(clf, layer)[0], [int(v) for v in values]


def _forward(clf, x: torch.Tensor, layers: list[str], logits: bool) -> tuple[dict, torch.Tensor | None]:
    if logits:
        with capture(clf, layers) as cap:
            out = clf(x)
        return {n: cap.act(n) for n in layers}, out
    return forward_until(clf, x, layers), None


def _activation(acts: dict, logits: torch.Tensor | None, layer: str | None, channels: list[int]) -> torch.Tensor:
    """Each image's class logit or channel mean; several views per image are laid out view-major."""
    out = logits if layer is None else acts[layer]
    assert out is not None
    idx = torch.tensor(channels, device=out.device).repeat(out.shape[0] // len(channels))
    picked = out[torch.arange(out.shape[0], device=out.device), idx]
    return picked if layer is None else picked.mean((1, 2))


def _distance(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over positions of the (smoothed) L2 distance between channel vectors: [B]."""
    d2 = (a - ref).pow(2).sum(1)
    d = torch.sqrt(d2 + DIST_EPS**2) - DIST_EPS
    return d.flatten(1).mean(1)


def accentuate(clf, images: torch.Tensor, layer: str | None, channel: int | str | Sequence[int | str], *,
               steps: int = 96, lr: float = 0.05, reg: float = 0.5, reg_layer: str | None = None, views: int = 4,
               box_min: float = 0.25, box_max: float = 1.0, noise: float = 0.02, gain: bool = True,
               model_size: int | None = None, seed: int | Sequence[int] = 0) -> AccentuationResult:
    """Accentuate a feature in real photos: raise a channel's mean activation (or a class logit) while staying
    close to the photo (Hamblin et al. 2024).

    Args:
        images: [B, 3, H, W] photos in [0, 1] (e.g. from `fv.load_image`).
        layer: the layer of the channel, or "logits" (or None) for a class.
        channel: a channel index, a class (index or name) when layer is "logits", or one per image.
        steps: optimization steps (Adam).
        lr: Adam learning rate on the photo's phase and magnitude gain.
        reg: weight of the distance to the photo's activations at `reg_layer` (0: plain image-seeded ascent).
        reg_layer: where closeness is measured (default: `layer` itself; for a class, the model's last feature
            map). "pixels" measures it as the pixel-space L2 distance instead (horama's choice).
        views: random crops the model sees per step.
        box_min: smallest crop side, as a fraction of the image side.
        box_max: largest crop side (crops stay inside the image).
        noise: std of the Gaussian noise (and width of the uniform noise) added to each crop.
        gain: also learn a gain on the photo's Fourier magnitude (Faccent's `use_mag_alpha`).
        model_size: side of what the model sees, crops and full view (default: the model's input size).
        seed: an int (image i uses seed + i) or one seed per image.

    Returns:
        An `AccentuationResult`: original, accentuated, difference, activation before and after.

    Example:
        >>> x = fv.load_image("cat.jpg", clf)
        >>> res = fv.accentuate(clf, x, "blocks.8", 17)
        >>> float(res.after[0] / res.before[0])
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise FeatvisError(f"accentuate needs images [B, 3, H, W], got {tuple(images.shape)}")
    if steps < 0 or views < 1 or reg < 0:
        raise FeatvisError(f"steps, views and reg must be >= 0, >= 1, >= 0; got {steps}, {views}, {reg}")
    device = clf.device
    photos = images.detach().to(device).float().clamp(0, 1)
    b = photos.shape[0]
    target_layer, channels = _target(clf, layer, channel, b)
    logits = target_layer is None
    if reg_layer == "pixels":
        reg_name = None
    elif reg_layer is not None:
        reg_name = find_layer(clf, reg_layer)[0]
    else:
        reg_name = target_layer if target_layer is not None else find_layer(clf, default_layer(clf))[0]
    layers = list(dict.fromkeys(n for n in (target_layer, reg_name) if n is not None))
    side = model_size or clf.input_size

    def full_view(x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] == side and x.shape[-2] == side else F.interpolate(
            x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)

    param = PhotoSpectrum(photos, gain=gain).to(device)
    chain = T.compose([T.random_crops(side, (box_min, box_max), None), T.noise(noise)])
    gens = [torch.Generator().manual_seed(s) for s in per_image_seeds(seed, b)]
    opt = torch.optim.Adam([p for p in param.parameters()], lr=lr)
    with frozen(clf), torch.no_grad():
        acts0, logits0 = _forward(clf, full_view(photos), layers, logits)
        if target_layer is not None:
            width = acts0[target_layer].shape[1]
            bad = [c for c in channels if not 0 <= c < width]
            if bad:
                raise FeatvisError(f"channel {bad[0]} is out of range for layer {target_layer!r} with {width} channels")
        before = _activation(acts0, logits0, target_layer, channels)
        ref = acts0.get(reg_name) if reg_name is not None else None
    transparency = torch.zeros(b, *photos.shape[-2:], device=device)
    t0 = time.perf_counter()
    for step in range(steps):
        with frozen(clf):
            x = param()
            crops = torch.cat([chain(x, gens) for _ in range(views)])
            acts, out = _forward(clf, torch.cat([crops, full_view(x)]), layers, logits)
            crop_acts = {n: a[: views * b] for n, a in acts.items()}
            score = _activation(crop_acts, None if out is None else out[: views * b], target_layer,
                                channels).view(views, b).mean(0)
            if reg > 0:
                if reg_name is None:
                    dist = (x - photos).pow(2).flatten(1).sum(1).add(DIST_EPS**2).sqrt() - DIST_EPS
                else:
                    dist = _distance(acts[reg_name][views * b:], ref)
                score = score - reg * dist
            *grads, pixel_grads = torch.autograd.grad(-score.sum(), [*param.parameters(), x])
            transparency += pixel_grads.abs().mean(1)
            for p, g in zip(param.parameters(), grads, strict=True):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
        update("accentuate", step + 1, steps)
    seconds = time.perf_counter() - t0
    with frozen(clf), torch.no_grad():
        final = param().detach()
        acts1, logits1 = _forward(clf, full_view(final), layers, logits)
        after = _activation(acts1, logits1, target_layer, channels)
    params = {"steps": steps, "lr": lr, "reg": reg, "reg_layer": reg_layer or (reg_name or "pixels"),
              "views": views, "box": [box_min, box_max], "noise": noise, "gain": gain, "model_size": side,
              "seed": seed if isinstance(seed, int) else list(seed)}
    name = target_layer or "logits"
    if not math.isfinite(float(after.sum())):
        raise FeatvisError("accentuation diverged (non-finite activation); lower lr")
    shown = layer_label(clf, name) if isinstance(name, str) and name != "logits" else name
    return AccentuationResult(photos.cpu(), final.cpu(), before.cpu(), after.cpu(), shown, channels, steps, seconds,
                              transparency.cpu(), params)
