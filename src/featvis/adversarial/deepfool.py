"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard 2016): the smallest L2 step to the nearest decision boundary of
the model linearized at the current image, repeated until the prediction changes. A minimal-perturbation
reference that needs no budget and few steps."""

from __future__ import annotations

import torch

from featvis._ops import Seed
from featvis._registry import Count
from featvis.adversarial._base import ATTACKS, attack_inputs, fooled, per_image, resolve_attack_targets
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError
from featvis.images import quantize
from featvis.models.classifier import frozen


@ATTACKS.register("deepfool", targeted=False, untargeted=True, norms=(), steps="steps")
def deepfool(clf, images: torch.Tensor, target=None, *, candidates: Count = 10, overshoot: float = 0.02,
             steps: Count = 50, seed: Seed = 0, callback=None) -> FoolingResult:
    """DeepFool L2, untargeted (as in the paper): among the `candidates` classes ranked highest on the original,
    step to the boundary that is nearest under the linearization; the accumulated step is scaled by
    (1 + overshoot). For a chosen target use ascent, pgd or cw: stepping to one far boundary by linearization
    succeeds on only about two thirds of (photo, target) pairs here.

    The model is linearized at the float image (as in the paper), and each image stops as soon as its 8-bit
    version fools the model (the same rule as every featvis attack): DeepFool's steps are so small that rounding
    can undo the last one, so it keeps stepping past the boundary until the rounded image is across too.

    Args:
        candidates: classes considered (10, as in the paper); each costs one backward pass per step.
        overshoot: 0.02, as in the paper.
        steps: at most this many linearizations.
        seed: unused (DeepFool draws nothing at random); accepted like every attack's.
    """
    if candidates < 2:
        raise FeatvisError(f"deepfool needs at least 2 candidate classes, got {candidates}")
    if target is not None:
        raise FeatvisError("deepfool is untargeted (it finds the nearest boundary): pass target=None "
                           "(CLI: --target none), or use ascent, pgd or cw for a chosen target")
    x = attack_inputs(clf, images)
    _, original, probs = resolve_attack_targets(clf, x, None)
    b = x.shape[0]
    k = min(candidates, probs.shape[1])
    cand = probs.topk(k, dim=1).indices  # [B, k]; column 0 is the original prediction
    total = torch.zeros_like(x)  # accumulated unscaled step r
    scale = torch.full((b,), float(overshoot), device=x.device)  # per image; grows when rounding undoes a step
    adv = x.clone()
    taken = torch.full((b,), steps, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)
    with frozen(clf):
        for it in range(steps + 1):
            inp = adv[active].requires_grad_(True)  # linearize at the float image, as the paper does
            logits = clf(inp)
            ok = fooled(logits.argmax(-1), None, original[active])
            across = ok.clone()
            if across.any():  # only what the 8-bit image does counts
                with torch.no_grad():
                    q = clf(quantize(adv[active[across]])).argmax(-1)
                ok[across] = fooled(q, None, original[active[across]])
                # across in float but not after rounding: this image overshoots more from now on
                stalled = active[across & ~ok]
                scale[stalled] = scale[stalled] * 2 + overshoot
            taken[active[ok]] = it
            if it == steps or bool(ok.all()):
                break
            keep = ~ok
            rows = active[keep]
            cls = cand[active]
            grads = torch.stack([torch.autograd.grad(logits.gather(1, cls[:, j:j + 1]).sum(), inp,
                                                     retain_graph=j < cls.shape[1] - 1)[0]
                                 for j in range(cls.shape[1])], dim=1)[keep]  # [A, k, 3, H, W]
            f = logits.detach().gather(1, cls)[keep]  # [A, k]
            w = grads[:, 1:] - grads[:, :1]
            fd = f[:, 1:] - f[:, :1]
            wn = w.flatten(2).norm(dim=2).clamp_min(1e-12)  # [A, k-1]
            dist = fd.abs() / wn
            best = dist.argmin(1)
            pick = torch.arange(len(rows), device=x.device)
            r = ((dist[pick, best] + 1e-4) / wn[pick, best])[:, None, None, None] * w[pick, best]
            with torch.no_grad():
                total[rows] += r
                adv[rows] = (x[rows] + (1 + per_image(scale[rows])) * total[rows]).clamp(0, 1)
            active = rows
            if callback is not None:
                callback(it + 1, len(active))
    return finish("deepfool", clf, x, adv, None, original, taken,
                  {"candidates": k, "overshoot": overshoot, "steps": steps}, probs)
