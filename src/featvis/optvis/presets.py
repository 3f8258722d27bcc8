"""Presets: the lab's class visualization, Lucid's recipe, MACO, Yosinski et al.'s four regularization settings,
and plain pixels (the unregularized baseline) — each one combination of the optvis parts.

A preset's build function declares its own options as keyword-only parameters (documented under `Args:`);
`visualize` routes every option a build declares to it and the rest to `render`, and refuses unknown ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any

import torch
from torch import nn

from featvis._ops import gaussian_blur, random_draw
from featvis._registry import Option, Range, Registry, options_from
from featvis.errors import did_you_mean
from featvis.optvis import objectives as obj
from featvis.optvis import transforms as T
from featvis.optvis.param import FFTImage, MacoImage, PixelImage, Seed
from featvis.optvis.render import PostStep, RenderResult, check_render, per_image_seeds, render, render_steps


@dataclass(frozen=True)
class RenderSpec:
    """What a preset builds for `render`: everything but the objective, the steps and the seed."""

    param: nn.Module
    transforms: Sequence[T.Transform] = ()
    optimizer: str = "adam"
    lr: float = 0.05
    post_step: Sequence[PostStep] = ()
    penalty: obj.Objective | None = None
    model_size: int | None = None
    views: int = 1

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _render_options() -> dict[str, Option]:
    shown = {**options_from(render_steps), **options_from(render)}
    return {k: o for k, o in shown.items() if k != "options"}


@dataclass(frozen=True)
class Preset:
    """A named recipe: `build(clf, size, batch, seeds, **options) -> RenderSpec`, its default steps, a summary."""

    build: Callable[..., RenderSpec]
    steps: int
    description: str

    @property
    def options(self) -> dict[str, Option]:
        """The options the build function declares (its keyword-only parameters, help from its docstring)."""
        return options_from(self.build)

    def split(self, given: Mapping[str, Any], name: str = "preset") -> tuple[dict[str, Any], dict[str, Any]]:
        """`given` options → (the build's, render's), converted to each option's kind; unknown names fail with a
        did-you-mean."""
        own, shared = self.options, _render_options()
        build, rest = {}, {}
        for key, value in given.items():
            k = key.strip().replace("-", "_")
            if k in own:
                build[k] = own[k].parse(value)
            elif k in shared:
                rest[k] = shared[k].parse(value) if shared[k].kind != "any" else value
            else:
                raise did_you_mean(f"option for preset {name!r}", key, [*own, *shared],
                                   hint=f"{name} takes {', '.join(own) or 'no options of its own'} and render's "
                                        f"{', '.join(shared)}")
        return build, rest


PRESETS: Registry[Preset] = Registry("preset")


def preset(name: str, steps: int, description: str) -> Callable[[Callable[..., RenderSpec]], Callable[..., RenderSpec]]:
    """Register `build(clf, size, batch, seeds, **options) -> RenderSpec` as the preset `name` (its default steps,
    a one-line description); its options are its keyword-only parameters."""

    def deco(build: Callable[..., RenderSpec]) -> Callable[..., RenderSpec]:
        PRESETS.add(name, Preset(build, steps, description))
        return build

    return deco


def _std(clf) -> float:
    return float(clf.std.mean())


@preset("lab", 100, "the lab's: pixels, normalized ascent, L2, jitter 16, blur every 10, clamp")
def _lab(clf, size: int, batch: int, seeds: list[int], *, lr: float = 25.0, l2_reg: float = 1e-3,
         blur_every: int = 10, max_jitter: int = 16) -> RenderSpec:
    """CS231n `create_class_visualization`, converted from normalized units to [0, 1] pixels: the step
    lr·g/‖g‖ becomes lr·std (pixels = mean + std·normalized), the penalty l2_reg·‖(x − mean)/std‖², the
    clamp range [0, 1]. Random init as the lab's randn in normalized space.

    Args:
        lr: the lab's learning rate in normalized units (the step is lr·std·g/‖g‖ in pixels).
        l2_reg: weight of the L2 penalty on the normalized image.
        blur_every: blur (σ 0.5) every this many steps.
        max_jitter: random circular shift of up to this many pixels each step.
    """
    mean, std = clf.mean.cpu(), clf.std.cpu()
    init = (mean + std * random_draw("normal", seeds, (batch, 3, size, size))).clamp(0, 1)
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

    return RenderSpec(param, (T.roll_jitter(max_jitter),), "normalized", lr * _std(clf),
                      post_step=((1, clamp), (blur_every, blur)),
                      penalty=obj.Objective(penalty, (), f"lab-l2({l2_reg:g})"))




LUCID_TRANSFORMS: dict[str, Callable[[], list[T.Transform]]] = {
    "fixed": T.fixed_size_transforms, "lucent": T.lucent_transforms, "standard": T.standard_transforms,
    "none": list}


@preset("lucid", 256, "Fourier + decorrelated colour, pad/jitter/scale/rotate at one size, Adam")
def _lucid(clf, size: int, batch: int, seeds: list[int], *, lr: float = 0.05, transforms: str = "fixed",
           fixed: bool = False) -> RenderSpec:
    """Olah et al. 2017 / Lucid: Fourier + decorrelated colour + sigmoid, transformation robustness, Adam 0.05.

    Lucid's transforms (pad 12, jitter 8, scale 0.90–1.10, rotate ±10°, jitter 4) with scale and rotation done
    as one same-size affine resampling: the model sees one input shape on every step instead of eleven, which
    costs 1.25–1.28x the bare forward+backward per step instead of 1.34–1.42x, at the same recognizability
    (benchmarks/optvis.py).

    Args:
        lr: Adam learning rate.
        transforms: "fixed" (one shape per step), "lucent" (Lucent's list as written), "standard", or "none".
        fixed: also resize what the model sees back to `size` (faster, less recognizable).
    """
    if transforms not in LUCID_TRANSFORMS:
        raise did_you_mean("lucid transforms", transforms, list(LUCID_TRANSFORMS))
    return RenderSpec(FFTImage(size, batch, seed=seeds), tuple(LUCID_TRANSFORMS[transforms]()), "adam", lr,
                      model_size=size if fixed else None)


@preset("lucid-fast", 256, "lucid, with the model at one fixed input size (faster per step)")
def _lucid_fast(clf, size: int, batch: int, seeds: list[int], *, lr: float = 0.05) -> RenderSpec:
    """lucid, with what the model sees resized to the image size (one fixed input size).

    Args:
        lr: Adam learning rate.
    """
    return _lucid(clf, size, batch, seeds, lr=lr, fixed=True)




# MACO (Fel et al. 2023). horama 0.3.0 (`maco_fv.py`, `common.py`) runs NAdam lr 1.0, 1000 steps, 6 crops per
# step of 20–25 % of a 1280 px canvas (its code draws 25–30 %: `delta = rand·(b1 − b0) + b1`, a bug), centres
# N(0.5, 0.15), noise 0.05 in its (−2.5, 2.5) model-input range (its README says 0.1 and image_size 1000). Our
# canvas is the requested size, usually the model's own, so the crops are larger fractions of it; the noise is
# horama's 0.05 rescaled from a range of 5 to our [0, 1] pixels. Crops of 80–100 % of the image reach p 0.79 on
# the first 8 classes of the benchmark draw where 60–90 % reach 0.64 (benchmarks/classvis_quality.py, 200 steps, one
# crop per step); one crop per step keeps a step at one forward+backward (horama's 6 cost 6×; `views` sets it).
Unit = Annotated[float, Range(0.01, 1)]  # a share of the image side (a crop box)
FEATURE_SIDE = 128  # default side of a feature visualization (a class visualization uses the model's input size)
MACO_LR = 1.0
MACO_VIEWS = 1
MACO_BOX = (0.8, 1.0)
MACO_NOISE = 0.05 / 5
MACO_LOC_STD = 0.15


@preset("maco", 256, "MACO: phase-only Fourier with natural-image magnitude, random crops + noise, "
                                       "NAdam; transparency map")
def _maco(clf, size: int, batch: int, seeds: list[int], *, lr: float = MACO_LR, box_min: Unit = MACO_BOX[0],
          box_max: Unit = MACO_BOX[1], noise: float = MACO_NOISE, loc_std: float = MACO_LOC_STD,
          crop_size: int | None = None) -> RenderSpec:
    """MACO (Fel et al., NeurIPS 2023, arXiv 2306.06805): optimize only the Fourier phase, the magnitude fixed to
    natural photos' average; each step the model sees several random crops (+ noise) of the image, resized to
    its input size. The accumulated |∂objective/∂pixel| comes back as `RenderResult.transparency`.

    Args:
        lr: NAdam learning rate on the phase.
        box_min: smallest crop side, as a fraction of the image side.
        box_max: largest crop side, as a fraction of the image side.
        noise: std of the Gaussian (and width of the uniform) noise added to each crop.
        loc_std: std of the crop centres around the image centre, in image fractions.
        crop_size: side the crops are resized to for the model (default: the model's input size).
    """
    return RenderSpec(MacoImage(size, batch, seed=seeds),
                      tuple(T.maco_transforms(crop_size or clf.input_size, (box_min, box_max), noise, loc_std)),
                      "nadam", lr, views=MACO_VIEWS)




@preset("pixel", 256, "plain pixels, no transforms, Adam: the unregularized baseline")
def _pixel(clf, size: int, batch: int, seeds: list[int], *, lr: float = 0.05) -> RenderSpec:
    """Plain sigmoid pixels, no transforms, Adam: the unregularized baseline (tends to adversarial noise).

    Args:
        lr: Adam learning rate.
    """
    return RenderSpec(PixelImage(size, batch, seed=seeds), (), "adam", lr)



# Yosinski, Clune, Nguyen, Fuchs, Lipson 2015, "Understanding Neural Networks Through Deep Visualization",
# Table 1 / deep-visualization-toolbox: (L2 decay, blur radius, blur every, pixel-norm clip %, contribution clip %,
# iterations). Their lr is in Caffe's raw 0–255 gradient units; we take their steps as the lab's normalized step.
YOSINSKI = {1: (0.0, 0.5, 4, 50, 0, 500), 2: (0.3, 0.0, 0, 20, 0, 750), 3: (1e-4, 1.0, 4, 0, 0, 1000),
            4: (0.0, 0.5, 4, 0, 90, 1000)}
YOSINSKI_LR = 0.1  # normalized step length in [0, 1] pixel units


def _yosinski(k: int):
    decay, radius, every, norm_pct, contrib_pct, _ = YOSINSKI[k]

    def build(clf, size: int, batch: int, seeds: list[int], *, lr: float = YOSINSKI_LR) -> RenderSpec:
        """Pixels from grey + 0.1·noise, the lab's normalized step and Yosinski et al.'s regularizers.

        Args:
            lr: normalized step length in [0, 1] pixel units.
        """
        init = (0.5 + 0.1 * random_draw("normal", seeds, (batch, 3, size, size))).clamp(0, 1)
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

        return RenderSpec(param, (), "normalized", lr, post_step=((1, regularize),))

    return build


for _k, (_d, _r, _e, _n, _c, _it) in YOSINSKI.items():
    preset(f"yosinski-{_k}", _it, f"Yosinski et al. 2015 setting {_k}: decay {_d:g}, blur {_r:g} every {_e}, "
           f"norm clip {_n}%, contribution clip {_c}%")(_yosinski(_k))




def visualize(clf, objective: obj.Objective, *, preset: str = "lucid", size: int | None = None, batch: int = 1,
              steps: int | None = None, seed: Seed = 0, titles: Sequence[str] = (), **options: Any) -> RenderResult:
    """Render `objective` with a named preset (its parameterization, transforms, optimizer and regularizers).

    Options the preset's build declares go to it (e.g. `l2_reg` for "lab", `box_min` for "maco"); the others go
    to `render` and override what the preset set (`views`, `model_size`, `lr`, `optimizer`, `callback`, ...).

    Args:
        preset: a name in `PRESETS`.
        size: image side (default: the model's input size).
        batch: number of images.
        steps: optimization steps (default: the preset's).
        seed: an int (image i uses seed + i) or one seed per image.
        titles: one title per image, for figures.

    Example:
        >>> res = visualize(clf, objectives.channel("blocks.10", 7), preset="maco", size=224, steps=128)
    """
    check_render(size=size, steps=steps, batch=batch)
    name = PRESETS.canonical(preset)
    spec = PRESETS.get(name)
    side = clf.input_size if size is None else size  # size=0 is an error, not "the default"
    seeds = per_image_seeds(seed, batch)
    own, rest = spec.split(options, name)
    built = spec.build(clf, side, batch, seeds, **own)
    result = render(clf, objective, **{**built.options(), "steps": spec.steps if steps is None else steps,
                                       "seed": seeds, "titles": titles, **rest})
    result.params.update(preset=name, size=side, seed=seed if isinstance(seed, int) else list(seeds), **own)
    return result


def _same_seed(seed: Seed, batch: int) -> Seed:
    """One int seed → that seed for every image: images with different objectives then start alike and see the
    same transforms, so an image is the same whatever batch (and batch position) it is rendered in."""
    return [int(seed)] * batch if isinstance(seed, int) else seed


def class_visualization(clf, target: int | str | Sequence[int | str], *, preset: str = "lab", steps: int | None = None,
                        size: int | None = None, seed: Seed = 0, **options: Any) -> RenderResult:
    """Synthesize images that maximize class scores, one image per class (a list renders them in one batch).

    Each image climbs its own class's logit (Simonyan et al. 2013); batch-mates never interact, and with one int
    seed every image starts from the same draw, so a class's image does not depend on the batch it is in.

    Args:
        target: a class (index or name) or a list of classes.
        preset: "lab" (CS231n, default here), "lucid" (recommended), "maco", "pixel", "yosinski-1".."yosinski-4".
        steps: optimization steps (default: the preset's: lab 100, lucid 256, maco 256).
        size: image side (default: the model's input size).
        seed: an int, or one seed per class.

    Example:
        >>> res = class_visualization(clf, "tarantula", preset="lucid", steps=200)
    """
    targets = [target] if isinstance(target, (int, str)) else list(target)
    idx = [clf.labels.lookup(t) for t in targets]
    titles = [f"{clf.labels[i]} ({i})" for i in idx]
    return visualize(clf, obj.class_logit(idx), preset=preset, size=size, batch=len(idx), steps=steps,
                     seed=_same_seed(seed, len(idx)), titles=titles, **options)


def feature_visualization(clf, layer: str, channels: int | Sequence[int], *, neuron: bool = False,
                          preset: str = "lucid", steps: int | None = None, size: int | None = None, seed: Seed = 0,
                          **options: Any) -> RenderResult:
    """Images that maximally excite channels (or their centre neurons) of a layer, one image per channel.

    Args:
        layer: a layer name (see `featvis.list_layers`).
        channels: a channel index or a list (one image each).
        neuron: maximize only the centre neuron of each channel.
        preset: a name in `PRESETS`.
        size: image side (default FEATURE_SIDE, 128).
        seed: an int, or one seed per channel.

    Example:
        >>> res = feature_visualization(clf, "blocks.8", [3, 7], preset="maco", size=224)
    """
    from featvis.layers import find_layer, layer_label

    name = find_layer(clf, layer)[0]
    chans = [channels] if isinstance(channels, int) else list(channels)
    objective = obj.neuron(name, chans) if neuron else obj.channel(name, chans)
    shown = layer_label(clf, name)
    titles = [f"{shown}:{c}{' (centre neuron)' if neuron else ''}" for c in chans]
    return visualize(clf, objective, preset=preset, size=FEATURE_SIDE if size is None else size, batch=len(chans),
                     steps=steps, seed=_same_seed(seed, len(chans)), titles=titles, **options)
