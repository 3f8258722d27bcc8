"""Carlini–Wagner L2 (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks"): the
minimal-perturbation reference, with a binary search over its constant c."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from featvis._ops import Seed
from featvis._registry import Range
from featvis.adversarial._base import ATTACKS, attack_inputs, resolve_attack_targets
from featvis.adversarial.result import FoolingResult, finish
from featvis.images import quantize
from featvis.models.classifier import frozen

TANH_SCALE = 1 - 1e-6  # keeps atanh finite at pixels exactly 0 or 1
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as CW used
ABORT_CHECKS = 5  # an image's run at one constant stops once its loss stalls between checks (CW's abort_early)
STALL = 0.9999  # "stalled": the loss is above 99.99 % of its value at the last check (the CW reference)
# The defaults per mode, (steps per constant, Adam lr, constants searched), against torchattacks 3.5.1's CW (its
# defaults: 50 steps, lr 0.01, with its early stop) on the 8 photos of benchmarks/min_norm.py, 5 alternating rounds
# (results/min_norm_cw.json). Untargeted, one constant (c = 1) already fools every photo after 8-bit rounding: median
# L2 0.50 against CW's 1.29 (which fools 88 % after rounding) at 0.69× its time, 5 forwards an image against 6.
# Targeted: 4 constants of 10 steps, L2 0.90 against 1.50, both 100 %, at 0.87× its time (3 constants: 1.10 at 0.64×).
DEFAULTS = {"targeted": {"steps": 10, "lr": 0.005, "search_steps": 4},
            "untargeted": {"steps": 8, "lr": 0.004, "search_steps": 1}}


def _margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """CW's f6: max(best other logit − target logit, −κ) (targeted), or max(own − best other, −κ)."""
    own = logits.gather(1, cls[:, None])[:, 0]
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return (others - own if targeted else own - others).clamp(min=-kappa)


def _to_w(images: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * images - 1) * TANH_SCALE)


@ATTACKS.register("cw", aliases=("cw-l2", "carlini-wagner"), targeted=True, untargeted=True, norms=(),
                  steps="steps", mode_defaults=DEFAULTS)
def cw(clf, images: torch.Tensor, target=None, *, c: float = 1.0, kappa: float = 0.0,
       steps: Annotated[int | None, Range(1)] = None, lr: Annotated[float | None, Range(0)] = None,
       search_steps: Annotated[int | None, Range(1)] = None, warm_start: bool = True, abort_early: bool = True,
       tolerance: float = 0.1, seed: Seed = 0, callback=None) -> FoolingResult:
    """Minimize ‖x′ − x‖₂² + c · f(x′) over x′ = (tanh(w) + 1) / 2 with Adam, and binary-search c per image.

    The model sees the 8-bit version of x′ (straight-through gradient), so the best image kept for each image
    is the smallest-L2 one whose saved PNG fools the model. Only the images still searching run: an image
    leaves a constant's run once its loss stalls (`abort_early`) and leaves the search once its bracket on c
    is tight (`tolerance`). With `warm_start` each constant starts from the image's smallest adversarial so
    far (or, while none, where the last run ended) instead of from the original, so 10 steps per constant
    suffice. The thorough setting of featvis ≤ 0.6 (500 steps per image, ~14× slower, slightly smaller L2):
    steps=100, warm_start=False, abort_early=False, tolerance=0.

    Args:
        c: initial constant (×10 while failing, bisected once an image succeeds).
        kappa: confidence margin κ in logits.
        steps: Adam steps per constant (at most; see abort_early). Default: 10 targeted, 8 untargeted.
        lr: Adam learning rate in tanh space. Default: 0.005 targeted, 0.004 untargeted (both measured smaller L2
            than CW's 0.01 at these step counts).
        search_steps: how many constants to try. Default: 4 targeted, 1 untargeted (c alone fools).
        warm_start: start each constant from the best adversarial so far (off: from the original, as CW).
        abort_early: stop an image's run at a constant once its loss stalls (checked 5 times a run).
        tolerance: stop an image's search once (upper − lower bound on c) / upper <= this.
    """
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    targeted = targets is not None
    cls = targets if targeted else original
    mode = DEFAULTS["targeted" if targeted else "untargeted"]
    steps = mode["steps"] if steps is None else steps
    lr = mode["lr"] if lr is None else lr
    search_steps = mode["search_steps"] if search_steps is None else search_steps
    b = x.shape[0]
    w_start = _to_w(x)
    lo = torch.zeros(b, device=x.device, dtype=x.dtype)
    hi = torch.full_like(lo, math.inf)
    consts = torch.full_like(lo, float(c))
    best = x.clone()
    best_l2 = torch.full_like(lo, math.inf)
    total = steps * search_steps
    best_step = torch.full((b,), total, dtype=torch.long, device=x.device)
    m, v = torch.zeros_like(x), torch.zeros_like(x)  # Adam's moments, per image so images can leave the batch
    t = torch.zeros(b, device=x.device, dtype=x.dtype)  # Adam's step count per image (for its bias correction)
    check = max(1, steps // ABORT_CHECKS)
    done = 0
    with frozen(clf):
        for _ in range(search_steps):
            searching = (~torch.isfinite(hi)) | ((hi - lo) > tolerance * hi)
            rows = searching.nonzero()[:, 0]
            if len(rows) == 0:
                break
            w = w_start[rows].clone()
            if not warm_start:  # a fresh Adam per constant, as CW
                m[rows], v[rows], t[rows] = 0, 0, 0
            won = torch.zeros(b, dtype=torch.bool, device=x.device)
            live = torch.arange(len(rows), device=x.device)  # positions in `rows` still running this constant
            prev = torch.full((len(rows),), math.inf, device=x.device, dtype=x.dtype)
            for it in range(steps):
                idx = rows[live]
                wl = w[live].requires_grad_(True)
                adv = (torch.tanh(wl) + 1) / 2
                seen = adv + (quantize(adv) - adv).detach()  # the model looks at the 8-bit image
                logits = clf(seen)
                l2sq = (adv - x[idx]).flatten(1).pow(2).sum(1)
                loss = l2sq + consts[idx] * _margin(logits, cls[idx], targeted, kappa)
                grad = torch.autograd.grad(loss.sum(), wl)[0]
                with torch.no_grad():
                    pred = logits.argmax(-1)
                    ok = pred == targets[idx] if targeted else pred != original[idx]
                    q = seen.detach()
                    l2q = (q - x[idx]).flatten(1).norm(dim=1)
                    better = ok & (l2q < best_l2[idx])
                    at = idx[better]
                    best[at], best_l2[at], best_step[at] = q[better], l2q[better], done + it
                    won[idx[ok]] = True
                    t[idx] += 1
                    tb = t[idx].view(-1, 1, 1, 1)
                    m[idx] = ADAM_BETAS[0] * m[idx] + (1 - ADAM_BETAS[0]) * grad
                    v[idx] = ADAM_BETAS[1] * v[idx] + (1 - ADAM_BETAS[1]) * grad * grad
                    step = lr * (m[idx] / (1 - ADAM_BETAS[0] ** tb)) / (
                        (v[idx] / (1 - ADAM_BETAS[1] ** tb)).sqrt() + ADAM_EPS)
                    w[live] = wl.detach() - step
                    if abort_early and (it + 1) % check == 0:
                        stalled = loss.detach() > STALL * prev[live]
                        prev[live] = loss.detach()
                        live = live[~(stalled & won[idx])]  # a stalled image that has not succeeded keeps going
                if callback is not None:
                    callback(done + it + 1, int((~won[rows]).sum()))
                if len(live) == 0:
                    break
            done += steps
            if warm_start:  # the next constant starts at the best adversarial so far, else where this run ended
                has = torch.isfinite(best_l2[rows])
                w_start[rows] = torch.where(has[:, None, None, None], _to_w(best[rows]), w.detach())
            hi[rows] = torch.where(won[rows], torch.minimum(hi[rows], consts[rows]), hi[rows])
            lo[rows] = torch.where(won[rows], lo[rows], torch.maximum(lo[rows], consts[rows]))
            consts[rows] = torch.where(torch.isfinite(hi[rows]), (lo[rows] + hi[rows]) / 2, consts[rows] * 10)
    return finish("cw", clf, x, best, targets, original, best_step,
                  {"c": c, "kappa": kappa, "steps": steps, "lr": lr, "search_steps": search_steps,
                   "warm_start": warm_start, "abort_early": abort_early, "tolerance": tolerance}, probs)
