"""Faithfulness of concept importances: CRAFT's concept deletion and insertion against random orders.

Fel et al., CVPR 2023 (Sec. 4, "fidelity"): remove concepts from an image's factorized activation (u W, its
coefficients per location from `transform`), most important first, and record the class logit after each removal;
an importance ranking that is faithful makes the logit fall faster (a lower area under the curve) than random
orders do. Insertion adds the concepts to an empty activation in the same order (a higher area is better). AUCs are
trapezoid areas on x in [0, 1] (`featvis._stats.auc`, as the pixel deletion metric); intervals are percentile
bootstraps of the mean over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from featvis._stats import auc, bootstrap_interval
from featvis._types import Result
from featvis.concepts.craft import Concepts, transform
from featvis.concepts.sobol import DESIGNS, HEAD_BATCH, concept_importance, masked_scores
from featvis.concepts.split import Split
from featvis.errors import FeatvisError
from featvis.images import check_images
from featvis.models.freeze import frozen

ORDERS = 20  # random concept orders the ranking is compared with
BAND = (0.025, 0.975)  # the random orders' band around their mean curve


@dataclass(frozen=True, repr=False)
class ConceptCurves(Result):
    """Concept deletion (or insertion) curves of one ranking and of random orders.

    `curves` [B, k+1]: the class logit per image after 0 … k concepts removed (inserted) in `order`;
    `random_curves` [R, B, k+1] the same for R random orders. `auc` [B] per image; `random_auc` [B] per image, the
    mean over the random orders. The means over images come with bootstrap intervals (`auc_ci`, `random_ci`).
    """

    kind: str
    order: torch.Tensor
    curves: torch.Tensor
    random_curves: torch.Tensor
    auc: torch.Tensor
    random_auc: torch.Tensor
    auc_mean: float
    auc_ci: tuple[float, float]
    random_auc_mean: float
    random_ci: tuple[float, float]
    seed: int

    @property
    def beats_random(self) -> bool:
        """The ranking's interval lies entirely on the better side of the random orders' interval."""
        if self.kind == "deletion":
            return self.auc_ci[1] < self.random_ci[0]
        return self.auc_ci[0] > self.random_ci[1]

    def to_record(self) -> dict[str, Any]:
        """JSON-ready: mean curves over images, the random orders' mean and band, AUCs and intervals."""
        rand = self.random_curves.mean(1)  # [R, k+1]: each random order's mean curve over images
        band = torch.quantile(rand.double(), torch.tensor(BAND, dtype=torch.float64), dim=0)
        return {"kind": self.kind, "order": self.order.tolist(), "curve": self.curves.mean(0).tolist(),
                "random_mean": rand.mean(0).tolist(), "random_low": band[0].tolist(),
                "random_high": band[1].tolist(), "auc": self.auc_mean, "auc_ci": list(self.auc_ci),
                "random_auc": self.random_auc_mean, "random_ci": list(self.random_ci),
                "orders": int(self.random_curves.shape[0]), "images": int(self.curves.shape[0]),
                "seed": self.seed, "beats_random": self.beats_random}


def concept_deletion(split: Split, concepts: Concepts, images: torch.Tensor, class_id: int, *,
                     order: torch.Tensor | None = None, orders: int = ORDERS, seed: int = 0,
                     designs: int = DESIGNS, batch_size: int = HEAD_BATCH) -> ConceptCurves:
    """CRAFT's concept deletion: the class logit as concepts leave the factorized activation, most important
    first, against `orders` random orders.

    Args:
        order: concept indices, most important first (default: by `concept_importance` on these images).
        orders: random orders to compare with.
        seed: seeds the random orders (and the importance, when `order` is not given).
        designs: Sobol design points, when the importance is computed here.
        batch_size: activations through h at once.

    Returns:
        The ConceptCurves (kind "deletion"; lower AUC is more faithful).

    Example:
        >>> res = concept_deletion(split, bank, cat_images, 281, order=importance.argsort(descending=True))
        >>> res.auc_mean, res.random_auc_mean
    """
    return _curves("deletion", split, concepts, images, class_id, order, orders, seed, designs, batch_size)


def concept_insertion(split: Split, concepts: Concepts, images: torch.Tensor, class_id: int, *,
                      order: torch.Tensor | None = None, orders: int = ORDERS, seed: int = 0,
                      designs: int = DESIGNS, batch_size: int = HEAD_BATCH) -> ConceptCurves:
    """Concept insertion: the class logit as concepts enter an empty activation, most important first, against
    random orders (kind "insertion"; higher AUC is more faithful). Arguments as `concept_deletion`."""
    return _curves("insertion", split, concepts, images, class_id, order, orders, seed, designs, batch_size)


def order_masks(order: torch.Tensor, kind: str) -> torch.Tensor:
    """The k+1 masks [k+1, k] of a deletion (1 → 0, concept by concept in `order`) or an insertion (0 → 1)."""
    k = order.numel()
    present = torch.ones(k + 1, k)
    steps = torch.arange(k + 1)[:, None] > torch.arange(k)[None, :]  # [k+1, k]: step t has the first t removed
    present[:, order] = (~steps).float()
    return present if kind == "deletion" else 1 - present


def _curves(kind: str, split: Split, concepts: Concepts, images: torch.Tensor, class_id: int,
            order: torch.Tensor | None, orders: int, seed: int, designs: int, batch_size: int) -> ConceptCurves:
    images = check_images(images).to(concepts.W.device)
    k = concepts.k
    if order is None:
        imp = concept_importance(split, concepts, images, class_id, designs=designs, seed=seed,
                                 batch_size=batch_size)
        order = torch.argsort(imp, descending=True)
    order = torch.as_tensor(order).long().cpu().reshape(-1)
    if sorted(order.tolist()) != list(range(k)):
        raise FeatvisError(f"order must list each of the {k} concepts once, got {order.tolist()}")
    if orders < 1:
        raise FeatvisError(f"orders must be at least 1 random order, got {orders}")
    gen = torch.Generator().manual_seed(seed)
    randoms = [torch.randperm(k, generator=gen) for _ in range(orders)]
    masks = torch.cat([order_masks(o, kind) for o in (order, *randoms)])  # [(1 + R)(k+1), k]
    with torch.no_grad(), frozen(split.clf):
        u = transform(concepts, split.latent(images))  # [B, k, h, w]
        scores = masked_scores(split, u, concepts.W, masks, class_id, batch_size=batch_size)  # [B, (1+R)(k+1)]
    b = images.shape[0]
    per = scores.view(b, 1 + orders, k + 1).transpose(0, 1)  # [1 + R, B, k+1]
    curves, random_curves = per[0], per[1:]
    areas = auc(curves.double()).float()  # [B]
    random_areas = auc(random_curves.double()).mean(0).float()  # [B]
    boot = torch.Generator().manual_seed(seed)
    return ConceptCurves(kind=kind, order=order, curves=curves, random_curves=random_curves, auc=areas,
                         random_auc=random_areas, auc_mean=float(areas.mean()),
                         auc_ci=bootstrap_interval(areas, generator=boot), random_auc_mean=float(random_areas.mean()),
                         random_ci=bootstrap_interval(random_areas, generator=boot), seed=seed)
