"""FGSM (Goodfellow, Shlens, Szegedy 2014) and PGD with L∞ or L2 budgets (Madry et al. 2017), in [0, 1]
pixel space, targeted or untargeted, each image stopping when its 8-bit version fools the model."""

from __future__ import annotations

from typing import Annotated

import torch

from featvis._ops import Seed, _single, random_draw
from featvis._registry import Count, Range
from featvis.adversarial._base import ATTACKS, attack_inputs, objective, per_image, resolve_attack_targets, step_loop
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen

EPS_LINF = 8 / 255  # the common ImageNet/CIFAR budget (torchattacks, RobustBench)
EPS_L2 = 1.0


def project(x: torch.Tensor, original: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the ε-ball around the original, then into [0, 1]."""
    delta = x - original
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * per_image((eps / n).clamp(max=1.0))
    return (original + delta).clamp(0, 1)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12))


def _check_norm(norm: str) -> str:
    norm = norm.lower().replace("-", "")
    if norm not in ("linf", "l2"):
        raise FeatvisError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    return norm


@ATTACKS.register("fgsm", targeted=True, untargeted=True, norms=("linf", "l2"), steps=None)
def fgsm(clf, images: torch.Tensor, target=None, *, eps: float = EPS_LINF, norm: str = "linf", seed: Seed = 0,
         straight_through: bool = False, callback=None) -> FoolingResult:
    """Fast Gradient Sign Method: one step of size ε along sign(∇ loss) (norm="l2": along ∇/‖∇‖, FGM).

    Untargeted (target=None) it increases the cross-entropy of the predicted class; targeted it decreases the
    cross-entropy of the target.

    Args:
        eps: step size = budget, in [0, 1] pixel units (8/255 by default).
        norm: "linf" (FGSM) or "l2" (FGM).
    """
    norm = _check_norm(norm)
    x = attack_inputs(clf, images)
    step = lambda cur, g, orig: project(cur + eps * _direction(g, norm), orig, eps, norm)  # noqa: E731
    if straight_through:
        targets, original, probs = resolve_attack_targets(clf, x, target, seed)
        raw, steps = step_loop(clf, x, targets, original, start=x, max_steps=1, loss="ce", early_stop=False,
                               straight_through=True, step=step)
    else:  # one forward serves both the original predictions and the gradient
        inp = x.clone().requires_grad_(True)
        with frozen(clf):
            logits = clf(inp)
            targets, original, probs = resolve_attack_targets(clf, x, target, seed, logits=logits)
            grad = torch.autograd.grad(objective("ce", logits, targets, original).sum(), inp)[0]
        raw, steps = step(x, grad, x).detach(), torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    if callback is not None:
        callback(1, 0)
    return finish("fgsm", clf, x, raw, targets, original, steps, {"eps": eps, "norm": norm}, probs)


@ATTACKS.register("pgd", aliases=("bim", "ifgsm"), targeted=True, untargeted=True, norms=("linf", "l2"),
                  steps="steps")
def pgd(clf, images: torch.Tensor, target=None, *, eps: float | None = None, norm: str = "linf",
        alpha: Annotated[float | None, Range(0)] = None, steps: Count = 20, random_start: bool = False, seed: Seed = 0,
        early_stop: bool = True, straight_through: bool = True, callback=None) -> FoolingResult:
    """Projected gradient descent: `steps` steps of size α along sign(∇) (L∞) or ∇/‖∇‖₂ (L2), each followed by
    projection onto the ε-ball and [0, 1].

    Args:
        eps: budget in [0, 1] pixel units (default 8/255 for L∞, 1.0 for L2).
        norm: "linf" or "l2".
        alpha: step size (default ε/4, as the common 8/255 with α = 2/255).
        steps: maximum iterations.
        random_start: start from a uniform random point in the ball (seeded).
        early_stop: stop each image once its 8-bit version fools the model (off: always run `steps`).
        straight_through: take gradients at the 8-bit image (off: at the float image, the textbook PGD).
    """
    norm = _check_norm(norm)
    eps = (EPS_LINF if norm == "linf" else EPS_L2) if eps is None else eps
    alpha = eps / 4 if alpha is None else alpha
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    start = x
    if random_start:
        if norm == "linf":
            noise = (random_draw("uniform", seed, x.shape, device=x.device) * 2 - 1) * eps
        else:
            u = random_draw("normal", seed, x.shape, device=x.device)
            u = u / per_image(u.flatten(1).norm(dim=1))
            radius = random_draw("uniform", seed + 1 if _single(seed) else [s + 1 for s in seed], (x.shape[0],),
                                 device=x.device)
            noise = u * per_image(radius ** (1 / x[0].numel()) * eps)
        start = (x + noise).clamp(0, 1)
    raw, taken = step_loop(clf, x, targets, original, start=start, max_steps=steps, loss="ce",
                           early_stop=early_stop, straight_through=straight_through, callback=callback,
                           step=lambda cur, g, orig: project(cur + alpha * _direction(g, norm), orig, eps, norm))
    return finish("pgd", clf, x, raw, targets, original, taken,
                  {"eps": eps, "norm": norm, "alpha": alpha, "steps": steps, "random_start": random_start}, probs)


@ATTACKS.register("mifgsm", aliases=("mi-fgsm", "momentum"), targeted=True, untargeted=True, norms=("linf",),
                  steps="steps")
def mifgsm(clf, images: torch.Tensor, target=None, *, eps: float = EPS_LINF, alpha: float | None = None,
           steps: Count = 10, decay: float = 1.0, seed: Seed = 0, early_stop: bool = True,
           straight_through: bool = True, callback=None) -> FoolingResult:
    """Momentum iterative FGSM (Dong et al. 2018), the transfer-oriented L∞ attack: the step follows the sign of
    an accumulated gradient `g ← μ·g + ∇/‖∇‖₁`, projected onto the ε-ball and [0, 1] after each step.

    Args:
        eps: L∞ budget in [0, 1] pixel units (8/255 by default).
        alpha: step size (default ε/steps, as in the paper; torchattacks uses 2/255).
        steps: iterations (10, as in the paper).
        decay: momentum μ (1.0, as in the paper).
    """
    alpha = eps / steps if alpha is None else alpha
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    momentum = torch.zeros_like(x)

    def step(cur, g, orig, rows):
        momentum[rows] = decay * momentum[rows] + g / per_image(g.abs().flatten(1).sum(1).clamp_min(1e-12))
        return project(cur + alpha * momentum[rows].sign(), orig, eps, "linf")

    raw, taken = step_loop(clf, x, targets, original, start=x, max_steps=steps, loss="ce", early_stop=early_stop,
                           straight_through=straight_through, callback=callback, step=step, with_rows=True)
    return finish("mifgsm", clf, x, raw, targets, original, taken,
                  {"eps": eps, "alpha": alpha, "steps": steps, "decay": decay}, probs)
