"""What every attack shares: targets, objectives, and the batched step loop that stops each image as soon as
its 8-bit version fools the model."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from featvis._ops import Seed, _single
from featvis._registry import SpecRegistry
from featvis.errors import FeatvisError
from featvis.images import check_images, quantize
from featvis.models.classifier import frozen

# Every attack takes (clf, images, target) and a progress `callback(step, images still running)`; its other
# keyword-only parameters are its options. Registration declares: targeted / untargeted support, the budget norms
# (("linf", "l2") or () for attacks without a budget) and which option counts the steps.
ATTACKS = SpecRegistry("attack", shared=("callback",), common_help={
    "seed": "seeds target='random' and random starts",
    "straight_through": "take each gradient at the 8-bit image (off: at the float image, the textbook step)",
    "early_stop": "stop each image once its 8-bit version fools the model (off: always run every step)",
})


def budget_norms(name: str) -> tuple[str, ...]:
    """The norms an attack's budget `eps` can be measured in, as its registration declares (() when it takes no
    budget: lab, cw, deepfool). Robustness curves need one; the L2 norm needs an attack that declares it."""
    spec = ATTACKS.get(name)
    return tuple(spec.info.get("norms", ())) if "eps" in spec.options else ()


def budgeted_attacks(norm: str = "linf") -> list[str]:
    """Every registered attack whose budget can be measured in `norm`."""
    return [n for n in ATTACKS.names() if norm in budget_norms(n)]


def check_budgeted(method: str, norm: str = "linf") -> str:
    """The canonical name of an attack that can run at a budget in `norm`, or a one-line error naming those that
    can."""
    name = ATTACKS.canonical(method)
    norms = budget_norms(name)
    if not norms:
        raise FeatvisError(f"robustness needs an attack with a budget ({', '.join(budgeted_attacks())}), not "
                           f"{name!r}")
    if norm not in norms:
        raise FeatvisError(f"norm {norm!r} needs an attack that measures its budget in it "
                           f"({', '.join(budgeted_attacks(norm)) or 'none registered'}); {name} is "
                           f"{'/'.join(norms)} only")
    return name


def resolve_attack_targets(clf, images: torch.Tensor, target, seed: Seed = 0, logits: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(targets [B] or None for untargeted, the model's original predictions [B], its probabilities [B, K]).

    `target`: a class (index or name), one per image, "random" (seeded; never the predicted class), or None.
    `logits`: the model's logits on `images` when the caller already has them (saves a forward pass).
    """
    if logits is None:
        with torch.no_grad(), frozen(clf):
            logits = clf(images)
    probs = logits.detach().softmax(-1)
    original = probs.argmax(-1)
    b = images.shape[0]
    if target is None:
        return None, original, probs
    if isinstance(target, str) and target.strip().lower() == "random":
        k = len(clf.labels)
        if _single(seed):
            picks = torch.randint(0, k - 1, (b,), generator=torch.Generator().manual_seed(int(seed)))
        else:  # one seed per image: an image's target does not depend on its batch-mates
            seeds = list(seed)
            if len(seeds) != b:
                raise FeatvisError(f"got {len(seeds)} seeds for {b} images; give one seed or one per image")
            picks = torch.cat([torch.randint(0, k - 1, (1,), generator=torch.Generator().manual_seed(int(s)))
                               for s in seeds])
        picks = picks.to(original.device)
        return picks + (picks >= original).long(), original, probs  # skip the predicted class
    indices = clf.labels.per_image(target, b, hint="'random', or None (untargeted)")
    return torch.tensor(indices, device=images.device), original, probs


def fooled(predicted: torch.Tensor, targets: torch.Tensor | None, original: torch.Tensor) -> torch.Tensor:
    return predicted == targets if targets is not None else predicted != original


def objective(kind: str, logits: torch.Tensor, targets: torch.Tensor | None, original: torch.Tensor) -> torch.Tensor:
    """Per-image value the attack *increases*: "logit" (the lab: the target's score, or minus the original's)
    or "ce" (minus cross-entropy to the target, or cross-entropy to the original when untargeted)."""
    if kind == "logit":
        if targets is None:
            return -logits.gather(1, original[:, None])[:, 0]
        return logits.gather(1, targets[:, None])[:, 0]
    if kind == "ce":
        if targets is None:
            return F.cross_entropy(logits, original, reduction="none")
        return -F.cross_entropy(logits, targets, reduction="none")
    raise FeatvisError(f"unknown attack objective {kind!r}; use 'logit' or 'ce'")


def per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * 3))


def attack_inputs(clf, images: torch.Tensor) -> torch.Tensor:
    return check_images(images, dtype=clf.dtype).to(clf.device).detach()


def step_loop(clf, original: torch.Tensor, targets: torch.Tensor | None, original_classes: torch.Tensor, *,
              start: torch.Tensor, step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
              max_steps: int, loss: str, early_stop: bool = True, straight_through: bool = True,
              callback: Callable[[int, int], None] | None = None, with_rows: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate `x ← step(x, grad, original)` on a batch; returns (raw adversarial [B, 3, H, W], steps [B]).

    `with_rows`: also pass the batch indices of the images still running (`step(x, grad, original, rows)`), for
    attacks that keep per-image state such as momentum.

    With `straight_through` (default) the model always sees the 8-bit version of the current image and the
    gradient taken there updates the float image: one forward+backward per step also tells whether the image
    the user will keep fools the model. With `early_stop` an image leaves the batch as soon as it does, so it
    stops changing and the rest run faster. Both off gives the textbook iteration (gradient at the float point,
    fixed step count), which is what the cross-checks against Captum use.
    """
    x = start.clone()
    steps = torch.full((x.shape[0],), max_steps, dtype=torch.long, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    with frozen(clf):
        for k in range(max_steps + 1):
            if k == max_steps and not early_stop:
                break  # nothing left to check: `finish` evaluates the result
            inp = (quantize(x[active]) if straight_through else x[active]).requires_grad_(True)
            logits = clf(inp)
            t = targets[active] if targets is not None else None
            ok = fooled(logits.argmax(-1), t, original_classes[active]) if early_stop else \
                torch.zeros(len(active), dtype=torch.bool, device=x.device)
            steps[active[ok]] = k
            if k == max_steps or bool(ok.all()):
                break
            grad = torch.autograd.grad(objective(loss, logits, t, original_classes[active]).sum(), inp)[0]
            keep = ~ok
            rest = active[keep]
            with torch.no_grad():
                x[rest] = (step(x[rest], grad[keep], original[rest], rest) if with_rows
                           else step(x[rest], grad[keep], original[rest]))
            active = rest
            if callback is not None:
                callback(k + 1, len(active))
    return x, steps
