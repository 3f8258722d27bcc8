"""SmoothGrad and its variants over the gradient (Smilkov et al. 2017; VarGrad: Adebayo et al. 2018).

`smoothgrad`, `smoothgrad-sq` and `vargrad` are `smooth:gradient`, `smooth-sq:gradient` and `vargrad:gradient`
(featvis.attribution.smooth, which smooths any method), under their usual names.
"""

from __future__ import annotations

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, input_gradients
from featvis.attribution.smooth import NOISE, SAMPLES, noisy_copies, smooth_maps


def noisy_gradients(clf, images: torch.Tensor, targets: torch.Tensor, *, samples: int, noise: float, seed: Seed,
                    score: str, batch_size: int | None) -> torch.Tensor:
    """Gradients at `samples` noisy copies of each image: [samples, B, 3, H, W] (the copies of `noisy_copies`)."""
    noisy = noisy_copies(images, samples=samples, noise=noise, seed=seed)
    grads = input_gradients(clf, noisy, targets.repeat(samples), score=score, batch_size=batch_size)
    return grads.view(samples, *images.shape)


def _smooth(kind: str):
    def method(clf, images: torch.Tensor, target=None, *, samples: Count = SAMPLES, noise: float = NOISE,
               seed: Seed = 0, score: str = "logit", reduce: str = "max-abs",
               batch_size: int | None = None) -> torch.Tensor:
        return smooth_maps(kind, ATTRIBUTIONS.get("gradient"), clf, images, target, samples=samples, noise=noise,
                           seed=seed, batch_size=batch_size, score=score, reduce=reduce)

    method.__name__ = kind.replace("-", "_")
    method.__doc__ = f"""{ {"smoothgrad": "SmoothGrad: the mean gradient over noisy copies of the image",
                           "smoothgrad-sq": "SmoothGrad²: the mean squared gradient over noisy copies",
                           "vargrad": "VarGrad: the variance of the gradient over noisy copies"}[kind]}.

    Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise". The same as
    `{ {"smoothgrad": "smooth", "smoothgrad-sq": "smooth-sq", "vargrad": "vargrad"}[kind]}:gradient`.

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
