"""SmoothGrad, SmoothGrad² and VarGrad over any registered method: `smooth:NAME`, `smooth-sq:NAME`, `vargrad:NAME`.

Smilkov et al. 2017 ("SmoothGrad: removing noise by adding noise") average a map over noisy copies of the image,
SmoothGrad² averages its square, VarGrad (Adebayo et al. 2018) takes its variance over the copies; Captum's
`NoiseTunnel(method)` with nt_type "smoothgrad", "smoothgrad_sq" and "vargrad". Here they are three parametric
families of the attribution registry, each over every method (`featvis saliency --method smooth:integrated-gradients
-O steps=16 -O samples=8`): a separate name per kind rather than a `kind=` option, so one run can compare
`smooth:gradient,vargrad:gradient`. Aliases: `smoothgrad:NAME`, `smoothgrad-sq:NAME` (`smoothgrad2:NAME`).
`smoothgrad`, `smoothgrad-sq` and `vargrad` are the three over `gradient` (featvis.attribution.smoothgrad).

An entry's options are its own (samples, noise, seed) and the inner method's; an inner option that shares a name with
one of its own (expected-gradients' samples) is given as `inner_NAME`. The noise is drawn as SmoothGrad draws it
(σ = noise · (max − min) of each image, one generator per image with per-image seeds), and all `samples × B` noisy
copies go to the inner method as one batch, targets repeated, so its own chunking (`batch_size`) batches them. The
copies are not clipped to [0, 1], as in the paper and Captum. The maps are aggregated per colour channel (the inner
method is asked for reduce="none" where it has a `reduce`) and then reduced, by default as the inner method reduces.
An inner method that draws (RISE, IG's noise baseline) gets one seed per noisy copy, derived from its image's seed.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch

from featvis._ops import Seed, random_draw
from featvis._registry import Count, Spec, options_from
from featvis.attribution._base import ATTRIBUTIONS, prepare_inputs, reduce_channels
from featvis.images import outside_unit_range

NOISE = 0.15  # σ as a fraction of each image's value range: the paper finds 10–20 % best
SAMPLES = 25  # noisy copies per image (the paper sees little change beyond ~50; 25 is the old smoothgrad default)
COPY_SEED_STRIDE = 1_000_003  # a prime: copy k of the image with seed s seeds its inner draws with s·P + k + 1
KINDS = {"smooth": "smoothgrad", "smooth-sq": "smoothgrad-sq", "vargrad": "vargrad"}  # prefix -> aggregate
TITLES = {"smoothgrad": ("SmoothGrad", "the mean"), "smoothgrad-sq": ("SmoothGrad²", "the mean square"),
          "vargrad": ("VarGrad", "the variance")}
OWN = ("samples", "noise", "seed")


def _own(*, samples: Count = SAMPLES, noise: float = NOISE, seed: Seed = 0) -> None:
    """The options every smooth entry takes besides its inner method's.

    Args:
        samples: noisy copies per image, passed to the inner method as one batch (chunked by `batch_size`).
        noise: σ of the Gaussian noise as a fraction of each image's (max − min); 0.15 as the paper recommends.
        seed: seeds the noise (an int, or one per image) and the inner method's own draws; same seed, same map.
    """


OWN_OPTIONS = options_from(_own)


def noisy_copies(images: torch.Tensor, *, samples: int, noise: float, seed: Seed) -> torch.Tensor:
    """`samples` noisy copies of each image, sample-major: [samples·B, 3, H, W] (copy k of image i at k·B + i).

    σ = noise · (max − min) of each image; the noise comes from a seeded generator (one per image when `seed` is a
    list), so reruns are identical and an image's copies do not depend on the rest of the batch.
    """
    b = images.shape[0]
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).clamp_min(1e-6).view(b, 1, 1, 1)
    eps = random_draw("normal", seed, (samples, *images.shape), batch_dim=1, device=images.device,
                      dtype=images.dtype)
    return (images[None] + eps * (noise * span)[None]).flatten(0, 1)  # [samples·B, 3, H, W]


def copy_seeds(seed: Seed, samples: int, b: int) -> Seed:
    """Seeds for the inner method's draws on the noisy copies: one per copy (sample-major) from per-image seeds, or
    one int from one int, each apart from the noise's own seed."""
    mix = lambda s, k: (s * COPY_SEED_STRIDE + k + 1) % 2**63  # noqa: E731
    if isinstance(seed, int) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        return mix(int(seed), 0)
    per_image = [int(s) for s in seed]
    return [mix(s, k) for k in range(samples) for s in per_image]


def aggregate(kind: str, maps: torch.Tensor) -> torch.Tensor:
    """[samples, B, ...] maps to [B, ...]: their mean (smoothgrad), mean square (smoothgrad-sq) or variance."""
    if kind == "smoothgrad":
        return maps.mean(0)
    if kind == "smoothgrad-sq":
        return maps.pow(2).mean(0)
    return maps.var(0, unbiased=False)  # VarGrad: the population variance, as Captum's E[a²] − E[a]²


def smooth_maps(kind: str, inner: Spec, clf, images: torch.Tensor, target=None, *, samples: int = SAMPLES,
                noise: float = NOISE, seed: Seed = 0, batch_size: int | None = None, **options) -> torch.Tensor:
    """`kind` ("smoothgrad", "smoothgrad-sq", "vargrad") of the spec `inner`'s maps over noisy copies of `images`.

    `options` are the inner method's (its `reduce` is applied after aggregation, by default the inner's own).

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").
    """
    images, targets = prepare_inputs(clf, images, target)
    b = images.shape[0]
    noisy = noisy_copies(images, samples=samples, noise=noise, seed=seed)
    per_channel = "reduce" in inner.options
    reduce = options.pop("reduce", inner.options["reduce"].default) if per_channel else None
    if per_channel:
        options["reduce"] = "none"
    if "seed" in inner.options:
        options["seed"] = copy_seeds(seed, samples, b)
    with outside_unit_range():
        maps = inner(clf, noisy, targets.repeat(samples), batch_size=batch_size, **options)
    agg = aggregate(kind, maps.view(samples, b, *maps.shape[1:]))
    return reduce_channels(agg, reduce) if per_channel else agg


def _family(prefix: str):
    kind = KINDS[prefix]
    title, what = TITLES[kind]

    def build(inner_name: str) -> Spec:
        inner = ATTRIBUTIONS.get(inner_name)
        name = f"{prefix}:{inner.name}"
        outer_key = {k: f"inner_{k}" if k in OWN and k != "seed" else k for k in inner.options}
        options = dict(OWN_OPTIONS)
        options.update({outer_key[k]: replace(o, name=outer_key[k]) for k, o in inner.options.items() if k != "seed"})
        inner_key = {v: k for k, v in outer_key.items()}

        def method(clf, images: torch.Tensor, target=None, *, batch_size: int | None = None, **given) -> torch.Tensor:
            own = {k: given.pop(k) for k in OWN if k in given}
            return smooth_maps(kind, inner, clf, images, target, batch_size=batch_size, **own,
                               **{inner_key.get(k, k): v for k, v in given.items()})

        kw = inspect.Parameter.KEYWORD_ONLY
        method.__signature__ = inspect.Signature([  # what with_units and help() read: the options above
            inspect.Parameter("clf", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            *(inspect.Parameter(k, kw, default=o.default) for k, o in options.items()),
            inspect.Parameter("batch_size", kw, default=None)])
        method.__name__ = f"{kind.replace('-', '_')}_{inner.name.replace('-', '_').replace(':', '_')}"
        summary = f"{title} of {inner.name}: {what} of its map over noisy copies of the image."
        method.__doc__ = f"""{summary}

    Smilkov et al. 2017 (VarGrad: Adebayo et al. 2018), over {inner.name}: {inner.summary}

    Args:
        {chr(10).join(f"        {k}: {o.help}" for k, o in options.items()).strip()}

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none", where {inner.name} has a reduce option).
    """
        return ATTRIBUTIONS.make(name, method, options=options, summary=summary, **inner.info)

    return build


for _prefix, _aliases in (("smooth", ("smoothgrad",)), ("smooth-sq", ("smoothgrad-sq", "smoothgrad2")),
                          ("vargrad", ())):
    _title, _what = TITLES[KINDS[_prefix]]
    ATTRIBUTIONS.parametric(_prefix, _family(_prefix), _aliases,
                            summary=f"{_title} over any method METHOD: {_what} of its map over noisy copies")
