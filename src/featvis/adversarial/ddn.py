"""DDN, Decoupled Direction and Norm (Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, CVPR 2019,
"Decoupling Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses"): step along the
normalized gradient of the cross-entropy, then rescale the change to a norm ε that shrinks while the image is
adversarial and grows while it is not; the image is rounded to 8 bits every step, as in the paper."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from featvis._ops import Seed, _single, random_draw
from featvis._registry import Count
from featvis.adversarial._base import ATTACKS, attack_inputs, fooled, per_image, resolve_attack_targets
from featvis.adversarial.result import FoolingResult, finish
from featvis.images import quantize
from featvis.models.classifier import frozen

ALPHA_FINAL = 0.01  # the step size α anneals with a cosine from 1 to 0.01 (the authors' implementation)


@ATTACKS.register("ddn", aliases=("decoupled-direction-norm",), targeted=True, untargeted=True, norms=(),
                  steps="steps")
def ddn(clf, images: torch.Tensor, target=None, *, steps: Count = 100, gamma: float = 0.05, init_norm: float = 1.0,
        alpha_init: float = 1.0, seed: Seed = 0, callback=None) -> FoolingResult:
    """Decoupled Direction and Norm, L2: the smallest L2 change that makes the model say the target (or anything
    else than it said), found by adjusting the norm directly instead of a penalty constant (as CW does).

    Each step moves δ by α·∇/‖∇‖₂ of the cross-entropy, rescales it to ‖δ‖₂ = ε, clips x + δ to [0, 1] and rounds
    it to 8 bits; ε ← ε(1 − γ) while that image fools the model, ε(1 + γ) while not. The image kept is the
    smallest-L2 8-bit one that fooled it.

    Args:
        steps: gradient steps (each one forward and one backward pass).
        gamma: how fast the norm moves each step (0.05, as in the paper).
        init_norm: the first norm ε (1.0, as in the paper), in [0, 1] pixel units.
        alpha_init: the first step's L2 length; α anneals with a cosine to 0.01.
        seed: seeds target="random" and the direction drawn where a gradient vanishes.
    """
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    cls = targets if targets is not None else original
    sign = -1.0 if targets is not None else 1.0  # targeted: decrease the target's cross-entropy
    b = x.shape[0]
    delta = torch.zeros_like(x)
    eps = torch.full((b,), float(init_norm), device=x.device, dtype=x.dtype)
    worst = torch.maximum(x, 1 - x).flatten(1).norm(dim=1)
    best = x.clone()
    best_l2 = torch.full_like(worst, math.inf)
    best_step = torch.full((b,), steps, dtype=torch.long, device=x.device)
    found = torch.zeros(b, dtype=torch.bool, device=x.device)
    with frozen(clf):
        for k in range(steps):
            adv = (x + delta).requires_grad_(True)  # on the 8-bit grid (rounded below) after the first step
            logits = clf(adv)
            loss = sign * F.cross_entropy(logits, cls, reduction="none")
            grad = torch.autograd.grad(loss.sum(), adv)[0]
            with torch.no_grad():
                l2 = delta.flatten(1).norm(dim=1)
                ok = fooled(logits.argmax(-1), targets, original)
                better = ok & (l2 < best_l2)
                best[better], best_l2[better], best_step[better] = adv.detach()[better], l2[better], k
                found |= ok
                gnorm = grad.flatten(1).norm(dim=1)
                grad = grad / per_image(gnorm.clamp_min(1e-12))
                flat = gnorm < 1e-12
                if bool(flat.any()):  # no gradient: a random direction, as the authors do
                    step_seed = int(seed) + k if _single(seed) else [int(s) + k for s in seed]
                    noise = random_draw("normal", step_seed, grad.shape, device=x.device, dtype=x.dtype)[flat]
                    grad[flat] = noise / per_image(noise.flatten(1).norm(dim=1))
                alpha = ALPHA_FINAL + (alpha_init - ALPHA_FINAL) * (1 + math.cos(math.pi * k / steps)) / 2
                delta = delta + alpha * grad
                eps = torch.minimum(torch.where(ok, (1 - gamma) * eps, (1 + gamma) * eps), worst)
                delta = delta * per_image(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12))
                delta = quantize(x + delta) - x  # quantization-aware: every iterate is an 8-bit image
            if callback is not None:
                callback(k + 1, int((~found).sum()))
    return finish("ddn", clf, x, best, targets, original, best_step,
                  {"steps": steps, "gamma": gamma, "init_norm": init_norm, "alpha_init": alpha_init}, probs)
