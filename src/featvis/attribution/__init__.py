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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from featvis._types import Result
from featvis.attribution import (  # noqa: F401 (registers the methods; smooth: the smooth:METHOD families)
    cam,
    deeplift,
    expected,
    gradient,
    guided_gradcam,
    hsic,
    integrated,
    lrp,
    occlusion,
    rise,
    smooth,
    smoothgrad,
    sobol,
    surrogate,
    vit,
)
from featvis.attribution._base import ATTRIBUTIONS, REDUCTIONS, SCORES, resolve_targets


def saliency(clf, images: torch.Tensor, target=None, *, method: str = "gradient", **options) -> torch.Tensor:
    """Attribution maps [B, H, W] by any registered method (default: the lab's gradient saliency).

    Example:
        >>> maps = saliency(clf, x, "tabby", method="integrated-gradients", steps=32)
    """
    return ATTRIBUTIONS.get(method)(clf, images, target, **options)


def methods() -> list[str]:
    """The registered attribution methods' names (`featvis methods` lists them with their options)."""
    return ATTRIBUTIONS.names()


@dataclass(frozen=True, repr=False)
class SaliencyResult(Result):
    """Maps of several methods for a batch, with the explained classes; shows itself in Jupyter."""

    images: torch.Tensor  # [B, 3, H, W]
    maps: dict[str, torch.Tensor]  # method -> [B, H, W]
    targets: torch.Tensor  # [B]
    probs: torch.Tensor  # [B] p(target)
    names: list[str]  # [B] class names

    def figure(self, index: int = 0, shared_scale: bool = False):
        """Image | maps | overlays of image `index` (see `featvis.figures.draw`)."""
        return super().figure(index=index, shared_scale=shared_scale)


def explain(clf, images: torch.Tensor, target=None, *, methods: Sequence[str] = ("gradient", "gradcam"),
            **options) -> SaliencyResult:
    """Several methods' maps for the same images and classes, as one displayable result.

    Example:
        >>> explain(clf, x, "tabby", methods=["gradient", "integrated-gradients", "gradcam"])
    """
    from featvis.attribution._base import prepare_inputs
    from featvis.models.classifier import frozen

    images, targets = prepare_inputs(clf, images, target)
    maps = {ATTRIBUTIONS.canonical(m): ATTRIBUTIONS.get(m)(clf, images, targets, **options) for m in methods}
    with torch.no_grad(), frozen(clf):  # eval mode: a train-mode pass would move BatchNorm statistics
        probs = clf(images).softmax(-1).gather(1, targets[:, None])[:, 0]
    return SaliencyResult(images, maps, targets, probs, [clf.labels[int(t)] for t in targets])


__all__ = ["ATTRIBUTIONS", "REDUCTIONS", "SCORES", "SaliencyResult", "explain", "methods", "resolve_targets",
           "saliency"]
