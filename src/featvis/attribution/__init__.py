"""Saliency maps: which pixels made the model say what it said.

Every method has one call shape, `method(clf, images, target=None, **options) -> Tensor[B, H, W]`:

- `clf`: a `featvis.Classifier` (RGB in [0, 1]).
- `images`: [B, 3, H, W] in [0, 1] (see `featvis.load_image`).
- `target`: the class to explain: an index or name, one per image (list/tensor), or None for the predicted class.
- `score`: what is differentiated: "logit" (default), "log-prob" or "prob".
- `batch_size`: images (or samples/steps/windows) per model call; default from free memory.

Methods are registered by name (`ATTRIBUTIONS.names()`); `saliency(clf, images, target, method=NAME)` calls one.
"""

from __future__ import annotations

import torch

from featvis.attribution import cam, gradient, integrated, occlusion, smoothgrad  # noqa: F401 (registers)
from featvis.attribution._base import ATTRIBUTIONS, REDUCTIONS, SCORES, resolve_targets


def saliency(clf, images: torch.Tensor, target=None, *, method: str = "gradient", **options) -> torch.Tensor:
    """Attribution maps [B, H, W] by any registered method (default: the lab's gradient saliency).

    Example:
        >>> maps = saliency(clf, x, "tabby", method="integrated-gradients", steps=32)
    """
    return ATTRIBUTIONS.get(method)(clf, images, target, **options)


def methods() -> list[str]:
    return ATTRIBUTIONS.names()


__all__ = ["ATTRIBUTIONS", "REDUCTIONS", "SCORES", "methods", "resolve_targets", "saliency"]
