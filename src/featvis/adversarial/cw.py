"""Carlini–Wagner L2 (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks"): the
minimal-perturbation reference, with a binary search over its constant c."""

from __future__ import annotations

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.adversarial._base import ATTACKS, attack_inputs, resolve_attack_targets
from featvis.adversarial.result import FoolingResult, finish
from featvis.images import quantize
from featvis.models.classifier import frozen

TANH_SCALE = 1 - 1e-6  # keeps atanh finite at pixels exactly 0 or 1


def _margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """CW's f6: max(best other logit − target logit, −κ) (targeted), or max(own − best other, −κ)."""
    own = logits.gather(1, cls[:, None])[:, 0]
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return (others - own if targeted else own - others).clamp(min=-kappa)


@ATTACKS.register("cw", aliases=("cw-l2", "carlini-wagner"), targeted=True, untargeted=True, norms=(),
                  steps="steps")
def cw(clf, images: torch.Tensor, target=None, *, c: float = 1.0, kappa: float = 0.0, steps: Count = 100,
       lr: float = 0.01, search_steps: int = 5, seed: Seed = 0, callback=None) -> FoolingResult:
    """Minimize ‖x′ − x‖₂² + c · f(x′) over x′ = (tanh(w) + 1) / 2 with Adam, and binary-search c per image.

    The model sees the 8-bit version of x′ (straight-through gradient), so the best image kept for each image
    is the smallest-L2 one whose saved PNG fools the model.

    Args:
        c: initial constant (×10 while failing, bisected once an image succeeds).
        kappa: confidence margin κ in logits.
        steps: Adam steps per constant.
        lr: Adam learning rate in tanh space.
        search_steps: how many constants to try.
    """
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    targeted = targets is not None
    cls = targets if targeted else original
    b = x.shape[0]
    w0 = torch.atanh((2 * x - 1) * TANH_SCALE)
    lo = torch.zeros(b, device=x.device)
    hi = torch.full((b,), float("inf"), device=x.device)
    consts = torch.full((b,), float(c), device=x.device)
    best = x.clone()
    best_l2 = torch.full((b,), float("inf"), device=x.device)
    best_step = torch.full((b,), steps * search_steps, dtype=torch.long, device=x.device)
    with frozen(clf):
        for s in range(search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            won = torch.zeros(b, dtype=torch.bool, device=x.device)
            for it in range(steps):
                adv = (torch.tanh(w) + 1) / 2
                seen = adv + (quantize(adv) - adv).detach()  # the model looks at the 8-bit image
                logits = clf(seen)
                l2sq = (adv - x).flatten(1).pow(2).sum(1)
                loss = (l2sq + consts * _margin(logits, cls, targeted, kappa)).sum()
                opt.zero_grad(set_to_none=True)
                w.grad = torch.autograd.grad(loss, w)[0]
                with torch.no_grad():
                    pred = logits.argmax(-1)
                    ok = pred == targets if targeted else pred != original
                    q = seen.detach()
                    l2q = (q - x).flatten(1).norm(dim=1)
                    better = ok & (l2q < best_l2)
                    best[better], best_l2[better] = q[better], l2q[better]
                    best_step[better] = s * steps + it
                    won |= ok
                opt.step()
                if callback is not None:
                    callback(s * steps + it + 1, int((~won).sum()))
            hi = torch.where(won, torch.minimum(hi, consts), hi)
            lo = torch.where(won, lo, torch.maximum(lo, consts))
            consts = torch.where(hi < float("inf"), (lo + hi) / 2, consts * 10)
    return finish("cw", clf, x, best, targets, original, best_step,
                  {"c": c, "kappa": kappa, "steps": steps, "lr": lr, "search_steps": search_steps}, probs)
