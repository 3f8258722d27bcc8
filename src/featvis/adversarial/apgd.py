"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1): PGD with momentum whose step size halves at checkpoints where the loss
stopped rising, each halving restarting from the best point found. APGD-CE and APGD-DLR (untargeted), APGD-T
(targeted DLR over the top classes), L∞ and L2, batched, seeded, each image stopping once its 8-bit version fools
the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F

from featvis._ops import Seed, _single, random_draw
from featvis._registry import Count, Fraction, Range
from featvis.adversarial._base import ATTACKS, attack_inputs, fooled, per_image, resolve_attack_targets
from featvis.adversarial.pgd import EPS_L2, EPS_LINF, _check_norm, project
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError
from featvis.images import quantize
from featvis.models.classifier import frozen

STEPS = 100  # the paper's N_iter (AutoAttack's setting)
RHO = 0.75  # condition 1: halve when fewer than ρ of a segment's steps raised the loss (paper, Sec. 3.1)
MOMENTUM = 0.75  # α of the momentum step (paper, Eq. 2)
FIRST_STEP = 2.0  # η(0) = 2ε (paper, Sec. 3.1)
TARGET_CLASSES = 9  # APGD-T attacks the 9 most likely other classes (AutoAttack's standard version)
DLR_EPS = 1e-12  # keeps DLR finite when the top logits tie (the reference code's constant)
# Checkpoint fractions in hundredths: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06).
P_FIRST, P_SHRINK, P_MIN = 22, 3, 6

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [n, K], batch rows [n]) -> loss [n]
FooledFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (predictions [n], batch rows [n]) -> bool [n]


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ⌈p_j · N⌉ at which APGD may halve its step (paper, Sec. 3.1), ascending, each once.

    For N = 100: 22, 41, 57, 70, 80, 87, 93, 99 (the reference code's integer schedule agrees for N = 100).
    """
    out, prev, p = [], 0, P_FIRST
    while p <= 100:
        w = -(-p * steps // 100)  # ceil, in integers: no float rounding moves a checkpoint
        if 0 < w <= steps and (not out or w > out[-1]):
            out.append(w)
        prev, p = p, p + max(p - prev - P_SHRINK, P_MIN)
    return out


def should_halve(rises: torch.Tensor, segment: int, best: torch.Tensor, best_at_last: torch.Tensor,
                 halved_last: torch.Tensor, rho: float = RHO) -> torch.Tensor:
    """[n] bool: halve the step at a checkpoint (paper, Sec. 3.1) when (1) fewer than ρ · `segment` of the segment's
    steps raised the loss, or (2) the step was not halved at the last checkpoint and the best loss has not risen
    since (`halved_last` starts True, so (2) first applies at the second checkpoint, as in the reference code)."""
    return (rises.double() < rho * segment) | (~halved_last & (best <= best_at_last))


def dlr_loss(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3) (paper, Eq. 6): scale-invariant, [n]."""
    top = logits.topk(3, dim=1).values
    own = logits.gather(1, cls[:, None])[:, 0]
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return -(own - other) / (top[:, 0] - top[:, 2] + DLR_EPS)


def dlr_targeted_loss(logits: torch.Tensor, cls: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2) (paper, Eq. 7), [n]."""
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, cls[:, None])[:, 0] - logits.gather(1, targets[:, None])[:, 0]
    return -gap / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + DLR_EPS)


def _losses(loss: str, original: torch.Tensor, targets: torch.Tensor | None) -> LossFn:
    """The per-image loss APGD *increases*: CE or DLR, untargeted (away from `original`) or toward `targets`."""
    if loss == "ce":
        if targets is None:
            return lambda z, rows: F.cross_entropy(z, original[rows], reduction="none")
        return lambda z, rows: -F.cross_entropy(z, targets[rows], reduction="none")
    if loss == "dlr":
        if targets is None:
            return lambda z, rows: dlr_loss(z, original[rows])
        return lambda z, rows: dlr_targeted_loss(z, original[rows], targets[rows])
    raise FeatvisError(f"unknown APGD loss {loss!r}; use 'ce' or 'dlr'")


def random_start(x: torch.Tensor, eps: float, norm: str, seed: Seed) -> torch.Tensor:
    """A random point on the ε-sphere's scale (the reference's start: uniform noise scaled to ‖·‖∞ = ε, or Gaussian
    noise scaled to ‖·‖₂ = ε), clamped to [0, 1]."""
    if norm == "linf":
        t = random_draw("uniform", seed, x.shape, device=x.device, dtype=x.dtype) * 2 - 1
        t = t / per_image(t.flatten(1).abs().amax(1).clamp_min(1e-12))
    else:
        t = random_draw("normal", seed, x.shape, device=x.device, dtype=x.dtype)
        t = t / per_image(t.flatten(1).norm(dim=1).clamp_min(1e-12))
    return (x + eps * t).clamp(0, 1)


def _ascent(g: torch.Tensor, norm: str) -> torch.Tensor:
    return g.sign() if norm == "linf" else g / per_image(g.flatten(1).norm(dim=1).clamp_min(1e-12))


def apgd_run(clf, x: torch.Tensor, loss_fn: LossFn, fooled_fn: FooledFn, *, eps: float, norm: str, steps: int,
             start: torch.Tensor, rho: float = RHO, momentum: float = MOMENTUM, eot_iter: int = 1,
             early_stop: bool = True, straight_through: bool = False, rounding: bool = True,
             callback: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
    """One APGD run (one restart) on a batch; returns (adversarial [n, 3, H, W], fooled [n], steps [n], best loss [n]).

    The adversarial image is the first fooling point found (8-bit when `rounding`) and otherwise x_max, the point of
    highest loss. `fooled_fn` judges the model's predictions; with `rounding` a float point that fools is confirmed on
    its 8-bit version (one batched forward of those images only), so "fooled" means what a saved PNG does.
    With `straight_through` the model always sees the 8-bit image (and the gradient taken there moves the float one).
    """
    n = x.shape[0]
    marks = set(checkpoints(steps))
    cur, prev = start.clone(), start.clone()
    eta = torch.full((n,), FIRST_STEP * eps, dtype=x.dtype, device=x.device)
    best_x, best_loss = cur.clone(), torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    grad, best_grad = torch.zeros_like(x), torch.zeros_like(x)
    last_loss = torch.zeros_like(best_loss)
    rises = torch.zeros(n, dtype=torch.long, device=x.device)  # steps that raised the loss since the last checkpoint
    best_at_mark, halved_at_mark = best_loss.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
    adv, won = cur.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    taken = torch.full((n,), steps, dtype=torch.long, device=x.device)
    active, last_mark = torch.arange(n, device=x.device), 0

    def evaluate(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss [n], gradient and predictions at cur[rows], averaged over `eot_iter` draws of a random model."""
        total, g = torch.zeros(len(rows), dtype=x.dtype, device=x.device), torch.zeros_like(cur[rows])
        for _ in range(eot_iter):
            seen = cur[rows]
            inp = (quantize(seen) if straight_through else seen).requires_grad_(True)
            logits = clf(inp)
            value = loss_fn(logits, rows)
            g += torch.autograd.grad(value.sum(), inp)[0]
            total += value.detach()
        return total / eot_iter, g / eot_iter, logits.detach().argmax(-1)

    def judge(rows: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
        """Record which of cur[rows] fool the model; True where they do (on the 8-bit image with `rounding`)."""
        ok = fooled_fn(pred, rows) & ~won[rows]
        if rounding and not straight_through and bool(ok.any()):
            cand = rows[ok]
            with torch.no_grad():
                ok[ok.clone()] = fooled_fn(clf(quantize(cur[cand])).argmax(-1), cand)
        hit = rows[ok]
        adv[hit] = quantize(cur[hit]) if rounding else cur[hit]
        won[hit], taken[hit] = True, k
        return ok

    with frozen(clf):
        for k in range(steps + 1):
            if k > 0:  # x(k) from x(k−1): Eq. (2), momentum α except on the first step
                a = momentum if k > 1 else 1.0
                with torch.no_grad():
                    xa, orig = cur[active], x[active]
                    z = project(xa + per_image(eta[active]) * _ascent(grad[active], norm), orig, eps, norm)
                    step = project(xa + a * (z - xa) + (1 - a) * (xa - prev[active]), orig, eps, norm)
                    prev[active], cur[active] = xa, step
            loss, g, pred = evaluate(active)
            with torch.no_grad():
                grad[active] = g
                better = loss > best_loss[active]
                up = active[better]
                best_x[up], best_loss[up], best_grad[up] = cur[up], loss[better], g[better]
                rises[active] += (loss > last_loss[active]).long() if k > 0 else 0
                last_loss[active] = loss
                done = judge(active, pred, k)
                if k in marks:  # the two conditions of Sec. 3.1, then restart from x_max where halved
                    halve = should_halve(rises[active], k - last_mark, best_loss[active], best_at_mark[active],
                                         halved_at_mark[active], rho)
                    h = active[halve]
                    eta[h] /= 2
                    cur[h], grad[h], last_loss[h] = best_x[h], best_grad[h], best_loss[h]
                    halved_at_mark[active], best_at_mark[active] = halve, best_loss[active]
                    rises[active], last_mark = 0, k
                if early_stop:
                    active = active[~done]
            if callback is not None and k > 0:
                callback(k, len(active))
            if len(active) == 0:
                break
    out = torch.where(per_image(won), adv, best_x)
    return out, won, taken, best_loss


def _seeds(seed: Seed, offset: int, rows: torch.Tensor | None = None) -> Seed:
    """The seed of restart `offset` (per-image seeds stay per image, for the rows still running)."""
    if _single(seed):
        return int(seed) + offset
    seeds = list(seed) if rows is None else [seed[int(i)] for i in rows]
    return [int(s) + offset for s in seeds]


def restarts_run(clf, x: torch.Tensor, loss_fn: LossFn, fooled_fn: FooledFn, *, eps: float, norm: str, steps: int,
                 restarts: int, seed: Seed, seed_offset: int = 0, callback=None, **run_options
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APGD with `restarts` random starts, each on the images no earlier one fooled (the reference's "cheap"
    restarts); returns (adversarial or best-loss image [n, 3, H, W], fooled [n], steps [n] summed over restarts)."""
    n = x.shape[0]
    out, won = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    best = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    taken = torch.zeros(n, dtype=torch.long, device=x.device)
    for r in range(restarts):
        rows = (~won).nonzero()[:, 0]
        if len(rows) == 0:
            break
        sub = _seeds(seed, seed_offset + r, rows if not _single(seed) else None)
        start = random_start(x[rows], eps, norm, sub)
        adv, ok, t, loss = apgd_run(clf, x[rows], lambda z, i, rows=rows: loss_fn(z, rows[i]),
                                    lambda p, i, rows=rows: fooled_fn(p, rows[i]), eps=eps, norm=norm, steps=steps,
                                    start=start, callback=callback, **run_options)
        keep = ok | (loss > best[rows])
        out[rows[keep]], best[rows[keep]] = adv[keep], loss[keep]
        won[rows[ok]] = True
        taken[rows] += t
    return out, won, taken


def _budget(eps: float | None, norm: str) -> float:
    return (EPS_LINF if norm == "linf" else EPS_L2) if eps is None else float(eps)


@ATTACKS.register("apgd", aliases=("apgd-ce", "auto-pgd"), targeted=True, untargeted=True, norms=("linf", "l2"),
                  steps="steps")
def apgd(clf, images: torch.Tensor, target=None, *, eps: float | None = None, norm: str = "linf",
         steps: Count = STEPS, restarts: Count = 1, loss: str = "ce", rho: Fraction = RHO,
         eot_iter: Annotated[int, Range(1)] = 1, seed: Seed = 0, early_stop: bool = True,
         straight_through: bool = False, callback=None) -> FoolingResult:
    """Auto-PGD: momentum PGD whose step (2ε at first) halves at the checkpoints where the loss stopped rising,
    restarting from the best point; APGD-CE by default, APGD-DLR with loss="dlr" (Croce & Hein 2020).

    Targeted, it lowers the cross-entropy to the target (loss="ce") or raises the targeted DLR (loss="dlr").

    Args:
        eps: budget in [0, 1] pixel units (default 8/255 for L∞, 1.0 for L2).
        norm: "linf" or "l2".
        steps: iterations per restart (100, as in AutoAttack).
        restarts: random starts; each later one runs on the images not fooled yet.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio, scale-invariant).
        rho: halve the step when fewer than this share of a segment's steps raised the loss.
        eot_iter: gradients averaged over this many passes (expectation over transformation, randomized models).
        straight_through: take gradients at the 8-bit image (off: at the float image, the paper's iteration).
    """
    norm = _check_norm(norm)
    eps = _budget(eps, norm)
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    loss_fn = _losses(loss, original, targets)
    raw, _, taken = restarts_run(clf, x, loss_fn, lambda p, rows: fooled(p, None if targets is None else
                                                                          targets[rows], original[rows]),
                                 eps=eps, norm=norm, steps=steps, restarts=restarts, seed=seed, callback=callback,
                                 rho=rho, eot_iter=eot_iter, early_stop=early_stop, straight_through=straight_through)
    return finish("apgd", clf, x, raw, targets, original, taken,
                  {"eps": eps, "norm": norm, "steps": steps, "restarts": restarts, "loss": loss, "rho": rho,
                   "eot_iter": eot_iter}, probs)


def top_classes(probs: torch.Tensor, count: int) -> torch.Tensor:
    """The 2nd … (count+1)-th most likely classes of each image, [B, count] (APGD-T's and FAB-T's targets)."""
    count = min(count, probs.shape[1] - 1)
    return probs.topk(count + 1, dim=1).indices[:, 1:]


@ATTACKS.register("apgd-t", aliases=("apgd-dlr-t", "apgd-targeted"), targeted=True, untargeted=True,
                  norms=("linf", "l2"), steps="steps")
def apgd_t(clf, images: torch.Tensor, target=None, *, eps: float | None = None, norm: str = "linf",
           steps: Count = STEPS, restarts: Count = 1, target_classes: Count = TARGET_CLASSES, rho: Fraction = RHO,
           eot_iter: Annotated[int, Range(1)] = 1, seed: Seed = 0, early_stop: bool = True,
           straight_through: bool = False, callback=None) -> FoolingResult:
    """APGD-T: Auto-PGD on the targeted DLR loss (Croce & Hein 2020).

    Untargeted (target=None, the AutoAttack way) it tries the 2nd, 3rd, … most likely classes of each image in turn,
    each on the images not fooled yet, and succeeds when the prediction changes (to any class). With a target it is
    one targeted-DLR APGD toward it.

    Args:
        eps: budget in [0, 1] pixel units (default 8/255 for L∞, 1.0 for L2).
        norm: "linf" or "l2".
        steps: iterations per target class and restart (100, as in AutoAttack).
        restarts: random starts per target class.
        target_classes: how many of the most likely other classes to try when untargeted (9, as in AutoAttack).
        rho: halve the step when fewer than this share of a segment's steps raised the loss.
        eot_iter: gradients averaged over this many passes (expectation over transformation, randomized models).
        straight_through: take gradients at the 8-bit image (off: at the float image, the paper's iteration).
    """
    norm = _check_norm(norm)
    eps = _budget(eps, norm)
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    opts = {"rho": rho, "eot_iter": eot_iter, "early_stop": early_stop, "straight_through": straight_through}
    params = {"eps": eps, "norm": norm, "steps": steps, "restarts": restarts, "rho": rho, "eot_iter": eot_iter}
    if targets is not None:
        raw, _, taken = restarts_run(clf, x, _losses("dlr", original, targets),
                                     lambda p, rows: p == targets[rows], eps=eps, norm=norm, steps=steps,
                                     restarts=restarts, seed=seed, callback=callback, **opts)
        return finish("apgd-t", clf, x, raw, targets, original, taken, params, probs)
    raw, _, taken = apgd_t_run(clf, x, original, top_classes(probs, target_classes), eps=eps, norm=norm,
                               steps=steps, restarts=restarts, seed=seed, callback=callback, **opts)
    return finish("apgd-t", clf, x, raw, None, original, taken,
                  {**params, "target_classes": min(target_classes, probs.shape[1] - 1)}, probs)


def apgd_t_run(clf, x: torch.Tensor, original: torch.Tensor, tops: torch.Tensor, *, eps: float, norm: str,
               steps: int, restarts: int, seed: Seed, callback=None, **run_options
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APGD-T the AutoAttack way: targeted DLR toward each column of `tops` [n, count] in turn, each on the images
    whose prediction has not changed yet; returns (adversarial or high-loss image, fooled [n], steps [n])."""
    raw, won = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    taken = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for j in range(tops.shape[1]):
        rows = (~won).nonzero()[:, 0]
        if len(rows) == 0:
            break
        tj = tops[rows, j]
        adv, ok, t = restarts_run(clf, x[rows], lambda z, i, rows=rows, tj=tj: dlr_targeted_loss(z, original[rows[i]],
                                                                                                 tj[i]),
                                  lambda p, i, rows=rows: p != original[rows[i]], eps=eps, norm=norm, steps=steps,
                                  restarts=restarts, seed=_seeds(seed, 0, rows if not _single(seed) else None),
                                  seed_offset=j * restarts, callback=callback, **run_options)
        raw[rows[ok]] = adv[ok]
        if j == 0:
            raw[rows[~ok]] = adv[~ok]  # a point of high loss for the images never fooled
        won[rows[ok]] = True
        taken[rows] += t
    return raw, won, taken
