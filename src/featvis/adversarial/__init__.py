"""Fooling images: change an image imperceptibly until the model calls it something else.

Every attack has one call shape, `attack(clf, images, target, **options) -> FoolingResult`:

- `clf`: a `featvis.Classifier`; `images`: [B, 3, H, W] in [0, 1].
- `target`: a class (index or name), one per image, "random" (seeded, never the predicted class), or None for
  an untargeted attack (make the model change its mind).

Success is always judged on the 8-bit image a user keeps (`FoolingResult.images`). Attacks are registered by
name (`ATTACKS.names()`); `fool(clf, images, target, method=NAME)` calls one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from featvis.adversarial import apgd, ascent, cw, ddn, deepfool, fab, fmn, pgd, square  # noqa: F401 (registers)
from featvis.adversarial._base import ATTACKS
from featvis.adversarial.autoattack import AutoAttackResult, autoattack
from featvis.adversarial.result import FoolingResult
from featvis.adversarial.robustness import RobustnessResult, robustness

if TYPE_CHECKING:
    from featvis.models.classifier import Classifier


def fool(clf: Classifier, images: torch.Tensor, target: Any = "random", *, method: str = "ascent",
         check_model: Classifier | None = None, **options: Any) -> FoolingResult:
    """Fooling images by any registered attack (default: the lab's normalized gradient ascent).

    Args:
        check_model: a second Classifier; its predictions on the fooled images are recorded (transfer).

    Example:
        >>> res = fool(clf, x, "stingray")
        >>> res.success, res.steps, res.linf * 255
    """
    result = ATTACKS.get(method)(clf, images, target, **options)
    return with_transfer(result, check_model) if check_model is not None else result


def with_transfer(result: FoolingResult, other) -> FoolingResult:
    """Record how a second model classifies the fooled images (resized to its input size)."""
    from dataclasses import replace

    from featvis.images import resize
    from featvis.models.classifier import frozen

    def predict(images: torch.Tensor) -> torch.Tensor:
        x = resize(images.to(other.device), other.input_size, other.preprocess.crop_fraction)
        with torch.no_grad(), frozen(other):
            return other(x).argmax(-1).to(result.images.device)

    pred, before = predict(result.images), predict(result.original)
    ok = pred == result.targets if result.targets is not None else pred != before
    # "changed": the second model's own mind changed (its prediction on the original vs on the fooled image)
    return replace(result, transfer={"model": other.id, "predicted": pred, "success": ok, "original": before,
                                     "changed": pred != before})


__all__ = ["ATTACKS", "AutoAttackResult", "FoolingResult", "RobustnessResult", "autoattack", "fool", "robustness",
           "with_transfer"]
