"""Model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Re-initialize the model's blocks from the logits down (cascading), recomputing the maps after each step, and
compare with the original maps: Spearman rank correlation of |map| and of the signed map, and SSIM. A method
that explains the *model* must change when the model is destroyed; one whose maps barely move is flagged.
Also independent randomization (one block at a time). The user's model is never modified: we work on a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featvis._ops import gaussian_blur
from featvis._progress import update
from featvis._types import Result
from featvis.attribution._base import ATTRIBUTIONS, prepare_inputs
from featvis.attribution.complexity import ENTROPY_BINS, entropy
from featvis.layers import list_layers, root

# Flagged: the mean |map| rank correlation stays above this while the top half of the blocks is randomized
# (Adebayo et al.'s failure mode: guided backprop is unchanged by randomizing the upper layers).
FLAG_SPEARMAN = 0.5


@dataclass(frozen=True, repr=False)
class SanityResult(Result):
    """Similarity to the original map after randomizing the top 1..n blocks (cascading) or each alone."""

    method: str
    units: list[str]  # blocks in the order they were randomized (logits first)
    original: torch.Tensor  # [B, H, W]
    final: torch.Tensor  # [B, H, W] with every block randomized
    spearman_abs: torch.Tensor  # [n, B]: after randomizing units[: i + 1]
    spearman_signed: torch.Tensor  # [n, B]
    ssim: torch.Tensor  # [n, B]
    independent_spearman_abs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [n, B]

    @property
    def flagged(self) -> bool:
        """True when the maps stay similar although the top half of the model was randomized: the method fails."""
        half = max(1, len(self.units) // 2)
        return bool(self.spearman_abs[:half].abs().mean() >= FLAG_SPEARMAN)


def units(model: nn.Module) -> list[str]:
    """Randomizable blocks in execution order: top-level children with parameters, containers expanded."""
    net = root(model)
    order = {i.name: i.order for i in list_layers(model)}
    out = []
    for name, child in net.named_children():
        items = child.named_children() if isinstance(child, (nn.ModuleList, nn.Sequential)) else [("", child)]
        for sub, module in items:
            full = f"{name}.{sub}" if sub else name
            if any(True for _ in module.parameters()):
                out.append(full)
    return sorted(out, key=lambda n: order.get(n, -1))


def randomize(model: nn.Module, names: list[str], seed: int = 0) -> nn.Module:
    """A deep copy of `model` with the named blocks re-initialized (their own `reset_parameters`, seeded)."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "_weights_hash"):
        clone._weights_hash = None
    modules = dict(root(clone).named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            for m in modules[name].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return clone


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of [B, N] tensors."""
    ra = a.flatten(1).argsort(1).argsort(1).float()
    rb = b.flatten(1).argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004; Gaussian window 11, σ 1.5) of maps [B, H, W], each min–max scaled to [0, 1]."""

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        return ((x - lo) / (hi - lo).clamp_min(1e-12)).view(a.shape)[:, None]

    x, y = unit(a), unit(b)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = gaussian_blur(x, 1.5, 11), gaussian_blur(y, 1.5, 11)
    sxx = gaussian_blur(x * x, 1.5, 11) - mu_x**2
    syy = gaussian_blur(y * y, 1.5, 11) - mu_y**2
    sxy = gaussian_blur(x * y, 1.5, 11) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def sanity_check(clf, images: torch.Tensor, target=None, *, method: str = "gradient", independent: bool = True,
                 seed: int = 0, **options) -> SanityResult:
    """Cascading (and independent) model randomization for one attribution method.

    Args:
        method: a registered attribution method; `options` go to it.
        independent: also randomize each block alone.
        seed: seeds the re-initialization.

    Returns:
        A `SanityResult`; `.flagged` says whether the method fails the check.
    """
    fn = ATTRIBUTIONS.get(method)
    images, targets = prepare_inputs(clf, images, target)
    original = fn(clf, images, targets, **options)
    order = list(reversed(units(clf)))
    sp_abs, sp_signed, ss, indep = [], [], [], []
    final = original
    for i in range(len(order)):
        final = fn(randomize(clf, order[: i + 1], seed), images, targets, **options)
        sp_abs.append(spearman(original.abs(), final.abs()))
        sp_signed.append(spearman(original, final))
        ss.append(ssim(original, final))
        if independent:
            alone = fn(randomize(clf, [order[i]], seed), images, targets, **options)
            indep.append(spearman(original.abs(), alone.abs()))
    return SanityResult(ATTRIBUTIONS.canonical(method), order, original, final, torch.stack(sp_abs),
                        torch.stack(sp_signed), torch.stack(ss), torch.stack(indep) if indep else torch.empty(0))


def randomization_similarity(clf, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                             method: str | Callable, *, options: Mapping[str, Any] | None = None, depth: float = 0.5,
                             seed: int = 0) -> torch.Tensor:
    """Adebayo et al.'s cascading randomization as one number per image: the mean Spearman rank correlation of |map|
    with the original map while the top `depth` of the blocks are randomized (logits first), lower is better.

    The same statistic `SanityResult.flagged` thresholds (top half, |map|). Costs one map per randomized step
    (10 for EfficientNet-Lite0's 21 blocks at depth 0.5).

    Returns:
        [B].
    """
    fn = ATTRIBUTIONS.get(method) if isinstance(method, str) else method
    order = list(reversed(units(clf)))
    steps = max(1, int(len(order) * depth))
    sims = []
    for i in range(steps):
        new = fn(randomize(clf, order[: i + 1], seed), images, targets, **dict(options or {}))
        sims.append(spearman(maps.abs(), new.abs()))
        update("randomization", i + 1, steps)
    return torch.stack(sims).mean(0)


def efficient_mprt(clf, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, method: str | Callable, *,
                   options: Mapping[str, Any] | None = None, bins: int = ENTROPY_BINS, seed: int = 0) -> torch.Tensor:
    """Efficient MPRT (Hedström et al. 2024, "Sanity Checks Revisited: An Exploration to Repair the Model Parameter
    Randomisation Test", TMLR): the entropy of the map's histogram after randomizing *every* block, over its entropy
    for the trained model. A map that explains the model turns noisy when the model is noise: higher is better.

    One extra map per image, and no choice of similarity measure or of how much to randomize.

    Returns:
        [B]; NaN where either map is constant (zero entropy) or not finite.
    """
    fn = ATTRIBUTIONS.get(method) if isinstance(method, str) else method
    new = fn(randomize(clf, units(clf), seed), images, targets, **dict(options or {}))
    before, after = entropy(maps, bins), entropy(new, bins)
    # A constant map (all zero after a ReLU; squared gradients of the randomized net underflowing in float32) or a
    # non-finite one has no complexity to compare: undefined, NaN.
    finite = torch.isfinite(maps.flatten(1)).all(1) & torch.isfinite(new.flatten(1)).all(1)
    defined = (before > 0) & (after > 0) & finite
    return torch.where(defined, after / before.clamp_min(1e-12), torch.nan)
