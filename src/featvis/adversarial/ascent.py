"""The lab's fooling images: climb the target class score with normalized gradient steps until the model
(looking at the saved 8-bit image) calls it the target. CS231n "Network Visualization", `make_fooling_image`.

Two registered names:
- `lab`: the recipe as the lab writes it: the target's logit, `x += lr · g / ‖g‖₂`, pixels kept in [0, 1].
- `ascent` (the default of `fool`): the same step with two measured changes (benchmarks/fooling.py).
  On the lab's recipe the L2-steepest direction is heavy-tailed over pixels: whatever the step length, a few
  pixels take most of the change (lr 0.05 / 0.1 / 0.2: mean L∞ 8.7 / 9.2 / 9.6 /255, mean L2 1.06 / 1.10 /
  1.22 on the bundled photos × 3 targets). `ascent` (1) caps every pixel's change at `eps` = 3/255, so the step
  spreads over the pixels that still have room, and (2) climbs the target's log-probability instead of its
  logit, which pushes the competing classes down as well and needs ~20 % less change. Result: still 100 %
  success after 8-bit rounding, mean L∞ 3/255 and mean L2 0.90 instead of 9/255 and 1.10.
  The step stays 0.1: 0.05 gives 6 % less L2 but twice the steps, and on EfficientNet-Lite1 one of the 18
  (photo, target) pairs then needs more than 100 steps.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.adversarial._base import ATTACKS, attack_inputs, per_image, resolve_attack_targets, step_loop
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError

# L2 length of one step in [0, 1] pixel units. The lab's lr = 1 was in normalized units (≈ 0.22–0.5 pixel units
# per step): its results are visible (L∞ ≈ 14/255) and a quarter stop fooling once saved as 8-bit.
LR = 0.1
LAB_LR = LR
EPS = 3 / 255  # largest change of any pixel value (L∞, [0, 1] units)
ASCENT_LOSSES = {"logit": "logit", "log-prob": "ce"}


@ATTACKS.register("ascent", aliases=("fool",), targeted=True, untargeted=True, norms=("linf",), steps="max_steps")
def ascent(clf, images: torch.Tensor, target, *, lr: float = LR, eps: float | None = EPS, max_steps: Count = 100,
           score: str = "log-prob", seed: Seed = 0, callback=None) -> FoolingResult:
    """Normalized gradient ascent `x += lr · g / ‖g‖₂` on the target's score until argmax == target.

    Every step is taken from the 8-bit image the user will keep, and an image stops at its first step whose
    8-bit version fools the model.

    Args:
        lr: L2 length of each step in [0, 1] pixel units.
        eps: no pixel value moves more than this from the original ([0, 1] units; 3/255 by default), exactly
            on the saved 8-bit image; None (or inf) for no cap, as in the lab.
        max_steps: give up after this many steps (the lab: "fewer than 100").
        score: "log-prob" (default: the target's log-softmax) or "logit" (the lab's class score).
        seed: for target="random".

    Returns:
        A FoolingResult; `steps` is the number of steps each image needed.

    Example:
        >>> res = ascent(clf, x, "stingray"); res.success, res.steps, res.linf * 255
    """
    if score not in ASCENT_LOSSES:
        raise FeatvisError(f"unknown ascent score {score!r}; use 'log-prob' or 'logit'")
    if not lr > 0 or not math.isfinite(lr):
        raise FeatvisError(f"ascent lr must be a positive number, got {lr}")
    if eps is not None and not eps >= 1 / 255:
        raise FeatvisError(f"ascent eps must be at least one 8-bit level (1/255 ≈ 0.0039) or None for no cap, "
                           f"got {eps}")
    cap = None if eps is None or math.isinf(eps) else eps
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)

    if cap is not None:
        # the 8-bit values within `cap` of the original: clamping to them keeps the rounded image inside too
        lo = ((x - cap) * 255 - 1e-4).ceil().clamp(0, 255) / 255
        hi = ((x + cap) * 255 + 1e-4).floor().clamp(0, 255) / 255

    def step(cur, grad, _orig, rows):
        nxt = cur + lr * grad / per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12))
        return nxt.clamp(0, 1) if cap is None else torch.minimum(torch.maximum(nxt, lo[rows]), hi[rows])

    raw, steps = step_loop(clf, x, targets, original, start=x, step=step, max_steps=max_steps,
                           loss=ASCENT_LOSSES[score], callback=callback, with_rows=True)
    return finish("ascent", clf, x, raw, targets, original, steps,
                  {"lr": lr, "eps": cap, "max_steps": max_steps, "score": score}, probs)


@ATTACKS.register("lab", targeted=True, untargeted=True, norms=(), steps="max_steps")
def lab(clf, images: torch.Tensor, target, *, lr: float = LAB_LR, max_steps: Count = 100, seed: Seed = 0,
        callback=None) -> FoolingResult:
    """The lab's recipe as written: ascent on the target's logit, no cap on any pixel's change.

    Same as `ascent(..., score="logit", eps=None)`; kept by name so the lab's numbers can be reproduced and
    compared with the default (benchmarks/fooling.py).
    """
    res = ascent(clf, images, target, lr=lr, eps=None, max_steps=max_steps, score="logit", seed=seed,
                 callback=callback)
    return replace(res, method="lab")
