"""FMN, the Fast Minimum-Norm attack (Pintor, Roli, Brendel, Biggio, NeurIPS 2021, "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Constraints"): a normalized gradient step on the logit difference, then a projection
onto an Lp ball whose radius ε shrinks while the image is adversarial and grows while it is not. L0, L1, L2, L∞."""

from __future__ import annotations

import math

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.adversarial._base import ATTACKS, attack_inputs, fooled, per_image, resolve_attack_targets
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError
from featvis.images import quantize
from featvis.models.classifier import frozen

NORMS = {"l0": 0.0, "l1": 1.0, "l2": 2.0, "linf": math.inf}
DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}  # the dual norm turns a gradient into a distance (FMN eq. 7)
ALPHA_FINAL_RATIO = 100  # α anneals to α_init / 100, as in the reference implementation
GAMMA_FINAL = 0.001  # the paper's γ after annealing


def check_norm(norm: str) -> str:
    key = str(norm).strip().lower().replace("-", "").replace("∞", "inf")
    key = {"inf": "linf", "0": "l0", "1": "l1", "2": "l2"}.get(key, key)
    if key not in NORMS:
        raise FeatvisError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    return key


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """‖δ‖ per image, [B]; L0 counts the changed values (channels count separately)."""
    flat = delta.flatten(1)
    if norm == "l0":
        return (flat != 0).sum(1).to(delta.dtype)
    return flat.norm(p=NORMS[norm], dim=1)


def project_l1(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius eps (Duchi et al. 2008, by sorting), batched."""
    flat = delta.flatten(1)
    mag = flat.abs()
    inside = mag.sum(1) <= eps
    u = mag.sort(dim=1, descending=True).values
    css = u.cumsum(1) - eps[:, None]
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    rho = ((u - css / ranks) > 0).sum(1).clamp_min(1)  # the support size of the projection
    theta = (css.gather(1, (rho - 1)[:, None]) / rho[:, None].to(flat.dtype)).clamp_min(0)
    theta = torch.where(inside[:, None], torch.zeros_like(theta), theta)
    return ((mag - theta).clamp_min(0) * flat.sign()).view_as(delta)


def project_l0(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Keep the ⌊eps⌋ largest-magnitude values of each image (one top-k for the batch), zero the rest."""
    flat = delta.flatten(1)
    mag = flat.abs()
    k = eps.long().clamp(0, flat.shape[1])
    top = mag.topk(int(k.max().clamp_min(1)), dim=1).values
    thresh = top.gather(1, (k - 1).clamp_min(0)[:, None])
    thresh = torch.where(k[:, None] > 0, thresh, torch.full_like(thresh, math.inf))
    return torch.where(mag >= thresh, flat, torch.zeros_like(flat)).view_as(delta)


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """δ onto the ball ‖δ‖ ≤ eps per image (eps [B], may be inf)."""
    if norm == "linf":
        return torch.minimum(torch.maximum(delta, -per_image(eps)), per_image(eps))
    if norm == "l2":
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta * per_image((eps / n).clamp(max=1.0))
    finite = torch.isfinite(eps)
    if not bool(finite.any()):
        return delta
    out = delta.clone()
    op = project_l1 if norm == "l1" else project_l0
    out[finite] = op(delta[finite], eps[finite])
    return out


def logit_gap(logits: torch.Tensor, cls: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The loss FMN increases: (target − best other logit) when targeted, (best other − own) when not; > 0 is
    adversarial."""
    own = logits.gather(1, cls[:, None])[:, 0]
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return own - others if targeted else others - own


@ATTACKS.register("fmn", aliases=("fast-minimum-norm",), targeted=True, untargeted=True, norms=(), steps="steps")
def fmn(clf, images: torch.Tensor, target=None, *, norm: str = "l2", steps: Count = 100, alpha_init: float = 1.0,
        gamma_init: float = 0.05, seed: Seed = 0, callback=None) -> FoolingResult:
    """Fast Minimum-Norm: the smallest change in the chosen norm that makes the model say the target (or anything
    else than it said).

    Each step moves δ by α·∇/‖∇‖₂ along the logit difference, then projects δ onto the ball ‖δ‖ ≤ ε and x + δ
    into [0, 1]. ε shrinks by (1 − γ) while the 8-bit image fools the model and grows by (1 + γ) while it does
    not (before the first success it jumps to the linearized distance to the boundary, growing at least by
    1 + γ; for L0 it moves by whole pixel values); α and γ anneal with a cosine to α_init/100 and 0.001. The
    model sees the 8-bit image (straight-through gradient), and the image kept is the smallest-norm 8-bit one
    that fooled it.

    Args:
        norm: the norm minimized: "l0" (values changed), "l1", "l2" or "linf", in [0, 1] pixel units.
        steps: gradient steps (each one forward and one backward pass).
        alpha_init: the first step's L2 length (1.0, as in the reference implementation).
        gamma_init: how fast ε moves at first (0.05, as in the paper).
        seed: seeds target="random" (FMN itself draws nothing).
    """
    norm = check_norm(norm)
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    targeted = targets is not None
    cls = targets if targeted else original
    b = x.shape[0]
    delta = torch.zeros_like(x)
    worst = lp_norm(torch.maximum(x, 1 - x), norm)  # the largest change [0, 1] allows
    eps = torch.ones(b, device=x.device, dtype=x.dtype) if norm == "l0" else torch.full_like(worst, math.inf)
    best = x.clone()
    best_norm = torch.full_like(worst, math.inf)
    best_step = torch.full((b,), steps, dtype=torch.long, device=x.device)
    found = torch.zeros(b, dtype=torch.bool, device=x.device)
    alpha_final = alpha_init / ALPHA_FINAL_RATIO
    with frozen(clf):
        for k in range(steps):
            cosine = (1 + math.cos(math.pi * k / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cosine
            gamma = GAMMA_FINAL + (gamma_init - GAMMA_FINAL) * cosine
            seen = quantize(x + delta).requires_grad_(True)  # what the user keeps is what the model judges
            logits = clf(seen)
            gap = logit_gap(logits, cls, targeted)
            grad = torch.autograd.grad(gap.sum(), seen)[0]
            with torch.no_grad():
                q_delta = seen.detach() - x
                q_norm = lp_norm(q_delta, norm)
                ok = fooled(logits.argmax(-1), targets, original)
                better = ok & (q_norm < best_norm)
                best[better], best_norm[better], best_step[better] = seen.detach()[better], q_norm[better], k
                found |= ok
                cur = lp_norm(delta, norm)
                if norm == "l0":
                    shrunk = torch.minimum(torch.minimum(eps - 1, (eps * (1 - gamma)).floor()), best_norm)
                    eps = torch.where(ok, shrunk, torch.maximum(eps + 1, (eps * (1 + gamma)).floor())).clamp_min(0)
                else:
                    to_boundary = gap.detach().abs() / grad.flatten(1).norm(p=DUAL[norm], dim=1).clamp_min(1e-12)
                    # before the first success: the linearized distance, but growing at least by (1 + γ) — the
                    # estimate ignores the [0, 1] box, and FMN as published stalls short of the boundary where
                    # clipped pixels cannot move (a linear model whose nearest boundary lies past the box)
                    grow = torch.where(torch.isfinite(eps), torch.maximum(cur + to_boundary, eps * (1 + gamma)),
                                       cur + to_boundary)
                    eps = torch.where(ok, torch.minimum(eps * (1 - gamma), best_norm),
                                      torch.where(found, eps * (1 + gamma), grow))
                eps = torch.minimum(eps, worst)
                gnorm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                delta = project(delta + alpha * grad / per_image(gnorm), eps, norm)
                delta = (x + delta).clamp(0, 1) - x
            if callback is not None:
                callback(k + 1, int((~found).sum()))
    return finish("fmn", clf, x, best, targets, original, best_step,
                  {"norm": norm, "steps": steps, "alpha_init": alpha_init, "gamma_init": gamma_init}, probs)
