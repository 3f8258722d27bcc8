"""SmoothGrad and its variants (Smilkov et al. 2017; VarGrad: Adebayo et al. 2018)."""

from __future__ import annotations

import torch

from featvis._ops import Seed, random_draw
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, input_gradients, prepare_inputs, reduce_channels

NOISE = 0.15  # σ as a fraction of each image's value range: the paper finds 10–20 % best


def noisy_gradients(clf, images: torch.Tensor, targets: torch.Tensor, *, samples: int, noise: float, seed: Seed,
                    score: str, batch_size: int | None) -> torch.Tensor:
    """Gradients at `samples` noisy copies of each image: [samples, B, 3, H, W].

    Noise comes from a seeded generator (one per image when `seed` is a list), so reruns are identical;
    σ = noise · (max − min).
    """
    b = images.shape[0]
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).clamp_min(1e-6).view(b, 1, 1, 1)
    eps = random_draw("normal", seed, (samples, *images.shape), batch_dim=1, device=images.device,
                      dtype=images.dtype)
    noisy = (images[None] + eps * (noise * span)[None]).flatten(0, 1)  # [samples·B, 3, H, W]
    chunk = batch_size or default_chunk(clf, images)
    grads = input_gradients(clf, noisy, targets.repeat(samples), score=score, batch_size=chunk)
    return grads.view(samples, *images.shape)


def _smooth(kind: str):
    def method(clf, images: torch.Tensor, target=None, *, samples: Count = 25, noise: float = NOISE, seed: Seed = 0,
               score: str = "logit", reduce: str = "max-abs", batch_size: int | None = None) -> torch.Tensor:
        images, targets = prepare_inputs(clf, images, target)
        grads = noisy_gradients(clf, images, targets, samples=samples, noise=noise, seed=seed, score=score,
                                batch_size=batch_size)
        if kind == "smoothgrad":
            agg = grads.mean(0)
        elif kind == "smoothgrad-sq":
            agg = grads.pow(2).mean(0)
        else:
            agg = grads.var(0, unbiased=False)
        return reduce_channels(agg, reduce)

    method.__name__ = kind.replace("-", "_")
    method.__doc__ = f"""{ {"smoothgrad": "SmoothGrad: the mean gradient over noisy copies of the image",
                           "smoothgrad-sq": "SmoothGrad²: the mean squared gradient over noisy copies",
                           "vargrad": "VarGrad: the variance of the gradient over noisy copies"}[kind]}.

    Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise".

    Args:
        samples: noisy copies per image (processed in chunks of `batch_size`).
        noise: σ as a fraction of each image's (max − min); 0.15 by default, as the paper recommends.
        seed: seeds the noise; the same seed gives bit-identical maps.
        reduce: channel reduction ("max-abs" default; "none" for [B, 3, H, W]).

    Returns:
        [B, H, W].
    """
    return method


smoothgrad = ATTRIBUTIONS.register("smoothgrad", aliases=("smooth-grad",))(_smooth("smoothgrad"))
smoothgrad_sq = ATTRIBUTIONS.register("smoothgrad-sq", aliases=("smoothgrad2",))(_smooth("smoothgrad-sq"))
vargrad = ATTRIBUTIONS.register("vargrad")(_smooth("vargrad"))
