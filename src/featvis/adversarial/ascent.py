"""The lab's fooling images: climb the target class score with normalized gradient steps until the model
(looking at the saved 8-bit image) calls it the target. CS231n "Network Visualization", `make_fooling_image`."""

from __future__ import annotations

import torch

from featvis.adversarial._base import ATTACKS, per_image, prepare, resolve_attack_targets, step_loop
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError

# Step length in [0, 1] pixel units (L2 norm of one step over the whole image). The lab's lr = 1 was in
# normalized units (≈ 0.22–0.5 pixel units per step) and overshoots: its results are visible (L∞ ≈ 14/255) and
# a quarter stop fooling once saved as 8-bit. Small steps plus stopping at the first *quantized* success fool
# every bundled photo × 3 targets after 8-bit rounding, with mean L2 1.10 and mean L∞ 9/255 (benchmarks/fooling.py).
# Step length barely changes the result (lr 0.05: L2 1.06, L∞ 8.7/255; 0.2: 1.22, 9.6/255): the L2-steepest
# direction is heavy-tailed over pixels, so the L∞ of this method stays near 7–9/255 whatever the step.
LR = 0.1


@ATTACKS.register("ascent", aliases=("lab", "fool"))
def ascent(clf, images: torch.Tensor, target, *, lr: float = LR, max_steps: int = 100, score: str = "logit",
           seed: int = 0, callback=None) -> FoolingResult:
    """Gradient ascent on the target's logit with steps `lr · g / ‖g‖₂`, kept in [0, 1], until argmax == target.

    Args:
        lr: L2 length of each step in [0, 1] pixel units.
        max_steps: give up after this many steps (the lab: "fewer than 100").
        score: "logit" (the lab: the target's class score) or "log-prob" (also pushes the other classes down:
            on the bundled photos about 20 % smaller changes for the same success).
        seed: for target="random".

    Returns:
        A FoolingResult; `steps` is the number of steps each image needed.

    Example:
        >>> res = ascent(clf, x, "stingray"); res.success, res.steps, res.linf * 255
    """
    x = prepare(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)

    def step(cur, grad, _orig):
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return (cur + lr * grad / per_image(norm)).clamp(0, 1)

    if score not in ("logit", "log-prob"):
        raise FeatvisError(f"unknown ascent score {score!r}; use 'logit' or 'log-prob'")
    raw, steps = step_loop(clf, x, targets, original, start=x, step=step, max_steps=max_steps,
                           loss="logit" if score == "logit" else "ce", callback=callback)
    return finish("ascent", clf, x, raw, targets, original, steps,
                  {"lr": lr, "max_steps": max_steps, "score": score}, probs)
