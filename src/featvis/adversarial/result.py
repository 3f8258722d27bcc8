"""FoolingResult: the adversarial images a user keeps (8-bit), with the evidence of what they do."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from featvis._types import Result
from featvis.errors import FeatvisWarning
from featvis.images import quantize
from featvis.models.classifier import frozen


@dataclass(frozen=True, repr=False)
class FoolingResult(Result):
    """Adversarial images and their numbers, one entry per image.

    `images` are already on the 8-bit grid and `success` is judged on them: what is saved as PNG fools the
    model exactly as reported.
    """

    method: str
    images: torch.Tensor  # [B, 3, H, W] adversarial, quantized to 8 bits
    original: torch.Tensor  # [B, 3, H, W]
    targets: torch.Tensor | None  # [B] target classes, None when untargeted
    original_classes: torch.Tensor  # [B] the model's prediction on the originals
    predicted: torch.Tensor  # [B] the model's prediction on `images`
    success: torch.Tensor  # [B] bool, judged on `images`
    steps: torch.Tensor  # [B] gradient steps taken (max when it never succeeded)
    original_prob_before: torch.Tensor  # [B] p(original class) on the original
    original_prob_after: torch.Tensor  # [B] p(original class) on the adversarial
    target_prob_before: torch.Tensor | None
    target_prob_after: torch.Tensor | None
    labels: Sequence[str] = field(repr=False, default_factory=list)  # the classifier's Labels (a reference)
    params: dict = field(default_factory=dict)
    transfer: dict | None = None  # {"model": id, "predicted": [B], "success": [B]} from a second model

    @property
    def delta(self) -> torch.Tensor:
        return self.images - self.original

    @property
    def l2(self) -> torch.Tensor:
        """L2 norm of the change in [0, 1] pixel units, [B]."""
        return self.delta.flatten(1).norm(dim=1)

    @property
    def linf(self) -> torch.Tensor:
        """L∞ norm of the change in [0, 1] pixel units, [B]."""
        return self.delta.flatten(1).abs().amax(1)

    @property
    def psnr(self) -> torch.Tensor:
        """Peak signal-to-noise ratio in dB (inf for an unchanged image), [B]."""
        mse = self.delta.flatten(1).pow(2).mean(1)
        return torch.where(mse > 0, 10 * torch.log10(1 / mse.clamp_min(1e-20)), torch.full_like(mse, math.inf))

    @property
    def already_target(self) -> torch.Tensor:
        """[B] bool: the model already called the original the target, so the attack had nothing to do (its
        success after 0 steps is no evidence of anything)."""
        if self.targets is None:
            return torch.zeros_like(self.success)
        return self.targets == self.original_classes

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    def select(self, index: int | slice) -> FoolingResult:
        """The result for some of the images (keeps the batch dimension)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        cut = {f.name: getattr(self, f.name)[sl] for f in fields(self)
               if isinstance(getattr(self, f.name), torch.Tensor)}
        transfer = None if self.transfer is None else {k: v[sl] if isinstance(v, torch.Tensor) else v
                                                       for k, v in self.transfer.items()}
        return replace(self, transfer=transfer, **cut)

    def records(self) -> list[dict]:
        """One JSON-ready row per image with every number above (L2/L∞ also in 0–255 units)."""
        rows = []
        for i in range(self.images.shape[0]):
            t = None if self.targets is None else int(self.targets[i])
            row = {
                "method": self.method, "success": bool(self.success[i]), "steps": int(self.steps[i]),
                "original_class": int(self.original_classes[i]),
                "original_name": self._name(int(self.original_classes[i])),
                "predicted": int(self.predicted[i]), "predicted_name": self._name(int(self.predicted[i])),
                "target": t, "target_name": None if t is None else self._name(t),
                "original_prob_before": float(self.original_prob_before[i]),
                "original_prob_after": float(self.original_prob_after[i]),
                "target_prob_before": None if self.target_prob_before is None else float(self.target_prob_before[i]),
                "target_prob_after": None if self.target_prob_after is None else float(self.target_prob_after[i]),
                "l2": float(self.l2[i]), "linf": float(self.linf[i]),
                "l2_255": float(self.l2[i] * 255), "linf_255": round(float(self.linf[i] * 255)),
                "psnr_db": float(self.psnr[i]), "already_target": bool(self.already_target[i]),
            }
            if self.transfer is not None:
                row["transfer_model"] = self.transfer["model"]
                row["transfer_predicted"] = int(self.transfer["predicted"][i])
                row["transfer_success"] = bool(self.transfer["success"][i])
                row["transfer_changed"] = bool(self.transfer["changed"][i])
            rows.append(row)
        return rows

    def _name(self, i: int) -> str:
        return self.labels[i] if self.labels else str(i)


def finish(method: str, clf, original: torch.Tensor, raw: torch.Tensor, targets: torch.Tensor | None,
           original_classes: torch.Tensor, steps: torch.Tensor, params: dict, p_orig: torch.Tensor
           ) -> FoolingResult:
    """Quantize the adversarial images and measure everything on what the user will keep.

    `p_orig`: the model's probabilities on the originals, [B, K] (computed once, when the targets were set).
    """
    adv = quantize(raw)
    with torch.no_grad(), frozen(clf):
        p_adv = clf(adv).softmax(-1)
    predicted = p_adv.argmax(-1)
    success = predicted == targets if targets is not None else predicted != original_classes
    idx = original_classes[:, None]
    tp_before = tp_after = None
    if targets is not None:
        tp_before, tp_after = p_orig.gather(1, targets[:, None])[:, 0], p_adv.gather(1, targets[:, None])[:, 0]
    result = FoolingResult(method, adv, original, targets, original_classes, predicted, success, steps,
                           p_orig.gather(1, idx)[:, 0], p_adv.gather(1, idx)[:, 0], tp_before, tp_after,
                           labels=clf.labels, params=params)
    already = result.already_target
    if bool(already.any()):
        which = ", ".join(f"image {i} ({result._name(int(targets[i]))})" for i in already.nonzero()[:3, 0].tolist())
        warnings.warn(f"{int(already.sum())} of {len(already)} image(s) are already classified as their target "
                      f"({which}{', …' if int(already.sum()) > 3 else ''}): nothing was changed, and their success "
                      "after 0 steps says nothing about the model; pick another target", FeatvisWarning,
                      stacklevel=3)
    return result
