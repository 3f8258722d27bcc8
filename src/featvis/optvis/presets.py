"""Presets: the lab's class visualization, Lucid's recipe, Yosinski et al.'s four regularization settings, and
plain pixels (the unregularized baseline) — each one combination of the optvis parts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from featvis._ops import gaussian_blur
from featvis._registry import Registry
from featvis.optvis import objectives as obj
from featvis.optvis.param import FFTImage, PixelImage
from featvis.optvis.render import RenderResult, render
from featvis.optvis.transforms import fixed_size_transforms, roll_jitter


@dataclass(frozen=True)
class Preset:
    """Builds render options for a classifier: (param, transforms, optimizer, lr, post_step, penalty)."""

    build: Callable[..., dict]
    steps: int
    description: str


PRESETS: Registry[Preset] = Registry("preset")


def _std(clf) -> float:
    return float(clf.std.mean())


def _lab(clf, size: int, batch: int, gen, *, lr: float = 25.0, l2_reg: float = 1e-3, blur_every: int = 10,
         max_jitter: int = 16) -> dict:
    """CS231n `create_class_visualization`, converted from normalized units to [0, 1] pixels: the step
    lr·g/‖g‖ becomes lr·std (pixels = mean + std·normalized), the penalty l2_reg·‖(x − mean)/std‖², the
    clamp range [0, 1]. Random init as the lab's randn in normalized space."""
    mean, std = clf.mean.cpu(), clf.std.cpu()
    init = (mean + std * torch.randn(batch, 3, size, size, generator=gen)).clamp(0, 1)
    param = PixelImage(size, batch, to_valid="clamp", init=init)

    def penalty(c: obj.Context) -> torch.Tensor:
        z = (c.images - clf.mean.to(c.images)) / clf.std.to(c.images)
        return -l2_reg * z.pow(2).flatten(1).sum(1)

    def blur(p: nn.Module, _step: int) -> None:
        with torch.no_grad():
            p.pixels.copy_(gaussian_blur(p.pixels, 0.5))

    def clamp(p: nn.Module, _step: int) -> None:
        with torch.no_grad():
            p.pixels.clamp_(0, 1)

    return {"param": param, "transforms": [roll_jitter(max_jitter)], "optimizer": "normalized", "lr": lr * _std(clf),
            "post_step": [(1, clamp), (blur_every, blur)],
            "penalty": obj.Objective(penalty, (), f"lab-l2({l2_reg:g})")}


PRESETS.add("lab", Preset(_lab, 100, "the lab's: pixels, normalized ascent, L2, jitter 16, blur every 10, clamp"))


def _lucid(clf, size: int, batch: int, gen, *, lr: float = 0.05, fixed: bool = False) -> dict:
    """Olah et al. 2017 / Lucid: Fourier + decorrelated colour + sigmoid, transformation robustness, Adam 0.05.

    Lucid's transforms (pad 12, jitter 8, scale 0.90–1.10, rotate ±10°, jitter 4) with scale and rotation done
    as one same-size affine resampling: the model sees one input shape on every step instead of eleven, which
    costs 1.25–1.28x the bare forward+backward per step instead of 1.34–1.42x, at the same recognizability
    (benchmarks/optvis.py). With `fixed` the image is also resized back to `size` (1.1x, but less recognizable)."""
    return {"param": FFTImage(size, batch, generator=gen), "transforms": fixed_size_transforms(),
            "optimizer": "adam", "lr": lr, "model_size": size if fixed else None}


PRESETS.add("lucid", Preset(_lucid, 256, "Fourier + decorrelated colour, pad/jitter/scale/rotate at one size, Adam"))
PRESETS.add("lucid-fast", Preset(lambda *a, **k: _lucid(*a, fixed=True, **k), 256,
                                 "lucid, with the model at one fixed input size (faster per step)"))


def _pixel(clf, size: int, batch: int, gen, *, lr: float = 0.05) -> dict:
    """Plain sigmoid pixels, no transforms, Adam: the unregularized baseline (tends to adversarial noise)."""
    return {"param": PixelImage(size, batch, generator=gen), "transforms": [], "optimizer": "adam", "lr": lr}


PRESETS.add("pixel", Preset(_pixel, 256, "plain pixels, no transforms, Adam: the unregularized baseline"))

# Yosinski, Clune, Nguyen, Fuchs, Lipson 2015, "Understanding Neural Networks Through Deep Visualization",
# Table 1 / deep-visualization-toolbox: (L2 decay, blur radius, blur every, pixel-norm clip %, contribution clip %,
# iterations). Their lr is in Caffe's raw 0–255 gradient units; we take their steps as the lab's normalized step.
YOSINSKI = {1: (0.0, 0.5, 4, 50, 0, 500), 2: (0.3, 0.0, 0, 20, 0, 750), 3: (1e-4, 1.0, 4, 0, 0, 1000),
            4: (0.0, 0.5, 4, 0, 90, 1000)}
YOSINSKI_LR = 0.1  # normalized step length in [0, 1] pixel units


def _yosinski(k: int):
    decay, radius, every, norm_pct, contrib_pct, _ = YOSINSKI[k]

    def build(clf, size: int, batch: int, gen, *, lr: float = YOSINSKI_LR) -> dict:
        init = (0.5 + 0.1 * torch.randn(batch, 3, size, size, generator=gen)).clamp(0, 1)
        param = PixelImage(size, batch, to_valid="clamp", init=init)
        center = clf.mean.cpu()

        def regularize(p: nn.Module, step: int) -> None:
            with torch.no_grad():
                z = p.pixels - center.to(p.pixels)
                if decay:
                    z.mul_(1 - decay)
                if radius and every and step % every == 0:
                    z.copy_(gaussian_blur(z, radius))
                if norm_pct:
                    norms = z.norm(dim=1, keepdim=True)
                    cut = torch.quantile(norms.flatten(1), norm_pct / 100, dim=1).view(-1, 1, 1, 1)
                    z.mul_((norms >= cut).to(z.dtype))
                if contrib_pct and p.pixels.grad is not None:
                    contrib = (z * p.pixels.grad).sum(1, keepdim=True).abs()
                    cut = torch.quantile(contrib.flatten(1), contrib_pct / 100, dim=1).view(-1, 1, 1, 1)
                    z.mul_((contrib >= cut).to(z.dtype))
                p.pixels.copy_((z + center.to(z)).clamp(0, 1))

        return {"param": param, "transforms": [], "optimizer": "normalized", "lr": lr,
                "post_step": [(1, regularize)]}

    return build


for _k, (_d, _r, _e, _n, _c, _it) in YOSINSKI.items():
    PRESETS.add(f"yosinski-{_k}", Preset(_yosinski(_k), _it, f"Yosinski et al. 2015 setting {_k}: decay {_d:g}, "
                                         f"blur {_r:g} every {_e}, norm clip {_n}%, contribution clip {_c}%"))


def visualize(clf, objective: obj.Objective, *, preset: str = "lucid", size: int | None = None, batch: int = 1,
              steps: int | None = None, seed: int = 0, titles: Sequence[str] = (), **options) -> RenderResult:
    """Render `objective` with a named preset (its parameterization, transforms, optimizer and regularizers)."""
    spec = PRESETS.get(preset)
    gen = torch.Generator().manual_seed(seed)
    side = size or clf.input_size
    built = spec.build(clf, side, batch, gen, **{k: options.pop(k) for k in list(options) if k in ("lr",)})
    penalty = built.pop("penalty", None)
    full = objective + penalty if penalty is not None else objective
    result = render(clf, full, steps=steps or spec.steps, seed=seed, titles=titles, **built, **options)
    result.params.update(preset=PRESETS.canonical(preset), size=side, seed=seed)
    return result


def class_visualization(clf, target: int | str | Sequence[int | str], *, preset: str = "lab", steps: int | None = None,
                        size: int | None = None, seed: int = 0, **options) -> RenderResult:
    """Synthesize images that maximize class scores, one image per class (a list renders them in one batch).

    Args:
        target: a class (index or name) or a list of classes.
        preset: "lab" (CS231n, default here), "lucid" (recommended), "pixel", "yosinski-1".."yosinski-4".
        steps: optimization steps (default: the preset's: lab 100, lucid 256).
        size: image side (default: the model's input size).

    Example:
        >>> res = class_visualization(clf, "tarantula", preset="lucid", steps=200)
    """
    targets = [target] if isinstance(target, (int, str)) else list(target)
    idx = [clf.labels.lookup(t) for t in targets]
    titles = [f"{clf.labels[i]} ({i})" for i in idx]
    return visualize(clf, obj.class_logit(idx), preset=preset, size=size, batch=len(idx), steps=steps, seed=seed,
                     titles=titles, **options)


def feature_visualization(clf, layer: str, channels: int | Sequence[int], *, neuron: bool = False,
                          preset: str = "lucid", steps: int | None = None, size: int | None = None, seed: int = 0,
                          **options) -> RenderResult:
    """Images that maximally excite channels (or their centre neurons) of a layer, one image per channel."""
    from featvis.layers import find_layer

    name = find_layer(clf, layer)[0]
    chans = [channels] if isinstance(channels, int) else list(channels)
    objective = obj.neuron(name, chans) if neuron else obj.channel(name, chans)
    titles = [f"{name}:{c}{' (centre neuron)' if neuron else ''}" for c in chans]
    return visualize(clf, objective, preset=preset, size=size or 128, batch=len(chans), steps=steps, seed=seed,
                     titles=titles, **options)
