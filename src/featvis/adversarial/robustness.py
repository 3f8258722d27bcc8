"""How easily is the model fooled? The fraction of images fooled at each budget ε, and for every image the
smallest budget on a grid that fools it (foolbox's `epsilons=[...]`, Captum's `MinParamPerturbation`), judged on
the saved 8-bit images like every featvis attack."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from featvis._ops import Seed, _single
from featvis._types import Result
from featvis.adversarial._base import ATTACKS, attack_inputs, check_budgeted, resolve_attack_targets
from featvis.errors import FeatvisError

EPS_255 = (1, 2, 3, 4, 6, 8)  # whole 8-bit levels: on an 8-bit original the saved image stays inside each


def fooled_rates(min_eps: Iterable[float | None], eps: Sequence[float]) -> list[float]:
    """Share of the images fooled at each budget in `eps`, from each image's smallest fooling budget (None or inf:
    never fooled). The tolerance covers budgets that went through float32 or JSON."""
    found = [math.inf if m is None else float(m) for m in min_eps]
    return [sum(m <= e * (1 + 1e-9) for m in found) / max(len(found), 1) for e in eps]


def median_budget(min_eps: Iterable[float | None]) -> float | None:
    """Median of the images' smallest fooling budgets; None when fewer than half are fooled on the grid."""
    found = [math.inf if m is None else float(m) for m in min_eps]
    med = statistics.median(found) if found else math.inf
    return med if math.isfinite(med) else None


@dataclass(frozen=True, repr=False)
class RobustnessResult(Result):
    """Per image: the smallest ε on the grid at which the attack fooled it (inf: none did), and the fooled
    image found there; over the batch: the fraction fooled at every ε (a budget that fools at ε also fools at
    every larger ε, since its image lies in their balls too)."""

    method: str
    norm: str
    eps: list[float]  # ascending, [0, 1] pixel units
    min_eps: torch.Tensor  # [B], inf where no ε on the grid fooled the image
    images: torch.Tensor  # [B, 3, H, W]: the fooled image at min_eps (the original where none)
    original_classes: torch.Tensor
    predicted: torch.Tensor  # [B] the model's prediction on `images`
    targets: torch.Tensor | None
    labels: Sequence[str] = field(repr=False, default_factory=list)  # the classifier's Labels (a reference)
    params: dict = field(default_factory=dict)

    @property
    def fooled_rate(self) -> list[float]:
        """Fraction of the images fooled at each ε (for untargeted attacks 1 − robust accuracy)."""
        return fooled_rates(self.min_eps.tolist(), self.eps)

    @property
    def median_min_eps(self) -> float | None:
        """Median smallest fooling budget ([0, 1] units); None when fewer than half are fooled on the grid."""
        return median_budget(self.min_eps.tolist())

    def records(self) -> list[dict]:
        rows = []
        for i in range(self.min_eps.shape[0]):
            m = float(self.min_eps[i])
            t = None if self.targets is None else int(self.targets[i])
            rows.append({"method": self.method, "norm": self.norm, "fooled": math.isfinite(m),
                         "min_eps": m if math.isfinite(m) else None,
                         "min_eps_255": round(m * 255, 3) if math.isfinite(m) else None,
                         "original_class": int(self.original_classes[i]),
                         "original_name": self._name(int(self.original_classes[i])),
                         "target": t, "target_name": None if t is None else self._name(t),
                         "predicted": int(self.predicted[i]), "predicted_name": self._name(int(self.predicted[i]))})
        return rows

    def _name(self, i: int) -> str:
        return self.labels[i] if self.labels else str(i)


def robustness(clf, images: torch.Tensor, target: Any = None, *, eps: Sequence[float] | None = None,
               method: str = "pgd", norm: str = "linf", seed: Seed = 0,
               callback: Callable[[int, int], None] | None = None, **options: Any) -> RobustnessResult:
    """Run a budgeted attack at every ε (ascending) on the images not yet fooled; see RobustnessResult.

    Args:
        target: as for every attack; None (default) asks how often the model can be made to change its mind.
        eps: budgets in [0, 1] pixel units (default 1, 2, 3, 4, 6, 8 /255).
        method: an attack with a budget (its registration declares the norms: fgsm, pgd (default), mifgsm,
            ascent — its per-pixel cap is the budget).
        norm: "linf", or "l2" for an attack that declares it (fgsm, pgd).
        options: passed to the attack (e.g. steps=, alpha=, random_start=).
        callback: called as callback(index of ε, images still unfooled).

    Example:
        >>> r = robustness(clf, x, eps=[1/255, 2/255, 4/255]); r.fooled_rate, r.min_eps * 255
    """
    name = check_budgeted(method, norm)
    grid = sorted(float(e) for e in (eps if eps is not None else [e / 255 for e in EPS_255]))
    if not grid or any(not (0 < e < math.inf) for e in grid):
        raise FeatvisError(f"eps must be positive finite budgets in [0, 1] pixel units, got {list(grid)}")
    attack = ATTACKS.get(name)
    extra = {"norm": norm} if "norm" in attack.options else {}
    x = attack_inputs(clf, images)
    targets, original, _ = resolve_attack_targets(clf, x, target, seed)
    b = x.shape[0]
    min_eps = torch.full((b,), math.inf, dtype=torch.float64, device=x.device)  # exactly the grid's values
    best = x.clone()
    predicted = original.clone()
    pending = torch.arange(b, device=x.device)
    for i, e in enumerate(grid):
        if len(pending) == 0:
            break
        sub_seed = seed if _single(seed) else [seed[int(j)] for j in pending]  # each image keeps its own seed
        res = attack(clf, x[pending], None if targets is None else targets[pending], eps=e, seed=sub_seed,
                     **extra, **options)
        won = res.success
        hit = pending[won]
        min_eps[hit] = e
        best[hit] = res.images[won]
        predicted[hit] = res.predicted[won]
        pending = pending[~won]
        if callback is not None:
            callback(i + 1, len(pending))
    return RobustnessResult(name, norm, grid, min_eps, best, original, predicted, targets, labels=clf.labels,
                            params={"method": name, "norm": norm, "eps": grid,
                                    "seed": seed if _single(seed) else "per image", **options})
