"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with
a fast adaptive boundary attack"): linearize the model, project onto the nearest decision hyperplane inside the
[0, 1] box (closed form), step there from both the current point and the original, bias toward the original, and
step back toward it after each success. L∞, L2 and L1; untargeted, targeted, and FAB-T (AutoAttack's top-9)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

import torch

from featvis._ops import Seed, _single, random_draw
from featvis._registry import Count, Fraction, Range
from featvis.adversarial._base import ATTACKS, attack_inputs, fooled, per_image, resolve_attack_targets
from featvis.adversarial.apgd import TARGET_CLASSES, top_classes
from featvis.adversarial.fmn import check_norm, lp_norm
from featvis.adversarial.pgd import EPS_L2, EPS_LINF
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisError
from featvis.images import quantize
from featvis.models.classifier import frozen

STEPS = 100  # AutoAttack's n_iter for FAB
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the paper's α_max, overshoot η and backward step β (Sec. 3)
START_FRACTION = 0.5  # a restart begins at half min(ε, best norm) from the original (reference code)
EPS_START = {"linf": EPS_LINF, "l2": EPS_L2, "l1": 5.0}  # start radius when neither ε nor a success is known
DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}  # distance to a hyperplane = |f| / ‖w‖_dual
TINY = 1e-12


def project_to_hyperplane(points: torch.Tensor, w: torch.Tensor, need: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest change d (in `norm`) with w·d = need and points + d in [0, 1], per row; rows [N, D], need [N].
    Where the box cannot reach the hyperplane, the change that gets closest (every useful value at its bound).

    L∞ and L2 share one closed form: the minimizer moves value i by sign(w_i)·min(λ, τ_i)·s_i with (L∞) s_i = 1,
    τ_i the room to the box, or (L2) s_i = |w_i|, τ_i = room/|w_i|; the gain Σ a_i·min(λ, τ_i) (a_i = |w_i| or
    w_i²) is piecewise linear in λ, so sorting τ and one cumulative sum give λ exactly (no search). L1 moves the
    values with the largest |w_i| first, each up to its room.
    """
    flip = torch.where(need < 0, -1.0, 1.0).to(w.dtype)[:, None]
    w, need = w * flip, need * flip[:, 0]  # now the change must raise w·z by need >= 0
    absw = w.abs()
    room = torch.where(w > 0, 1 - points, points).clamp_min(0)  # how far each value can move the useful way
    if norm == "l1":
        order = absw.argsort(dim=1, descending=True)
        gain = (absw * room).gather(1, order).cumsum(1)
        before = gain - (absw * room).gather(1, order)  # gain of the values ahead of each one
        full = gain <= need[:, None]
        part = (~full) & (before < need[:, None])  # the one value that is moved part of its room
        amount = torch.where(full, room.gather(1, order),
                             torch.where(part, (need[:, None] - before) / absw.gather(1, order).clamp_min(TINY), 0))
        return torch.zeros_like(w).scatter(1, order, amount) * w.sign()
    if norm == "linf":
        a, tau = absw, torch.where(w != 0, room, torch.zeros_like(room))
    else:
        a, tau = w * w, torch.where(w != 0, room / absw.clamp_min(TINY), torch.zeros_like(room))
    tau_s, order = tau.sort(dim=1)
    a_s = a.gather(1, order)
    sat = (a_s * tau_s).cumsum(1)  # gain of the values saturated up to each breakpoint
    rest = a.sum(1, keepdim=True) - a_s.cumsum(1)  # slope of the gain after it
    below = ((sat + tau_s * rest) < need[:, None]).sum(1)  # breakpoints whose gain falls short: λ lies past them
    k = (below - 1).clamp_min(0)[:, None]
    sat_k = torch.where(below[:, None] > 0, sat.gather(1, k), torch.zeros_like(need[:, None]))
    slope = torch.where(below[:, None] > 0, rest.gather(1, k), a.sum(1, keepdim=True))
    lam = (need[:, None] - sat_k) / slope.clamp_min(TINY)
    lam = torch.where(below[:, None] >= w.shape[1], tau_s[:, -1:], lam)  # out of reach: everything at its bound
    step = torch.minimum(lam, tau)
    return w.sign() * (step if norm == "linf" else step * absw)


def _hyperplanes(clf, z: torch.Tensor, cls: torch.Tensor, targets: torch.Tensor | None, rival: str,
                 candidates: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(value [n, m], gradient [n, m, D]) of the logit differences whose zero sets bound the region FAB leaves:
    f_j − f_cls for the `candidates` strongest other classes (untargeted), or f_target − f_rival (targeted; the
    rival is `cls` for FAB-T, else the strongest class other than the target)."""
    inp = z.clone().requires_grad_(True)
    logits = clf(inp)
    if targets is None:
        others = logits.detach().scatter(1, cls[:, None], float("-inf"))
        m = logits.shape[1] - 1 if candidates is None else min(candidates, logits.shape[1] - 1)
        picks = others.topk(m, dim=1).indices  # [n, m]
        diffs = logits.gather(1, picks) - logits.gather(1, cls[:, None])
    else:
        if rival == "strongest":
            cls = logits.detach().scatter(1, targets[:, None], float("-inf")).argmax(1)
        diffs = logits.gather(1, targets[:, None]) - logits.gather(1, cls[:, None])
    grads = [torch.autograd.grad(diffs[:, j].sum(), inp, retain_graph=j < diffs.shape[1] - 1)[0].flatten(1)
             for j in range(diffs.shape[1])]  # one backward pass per class difference
    return diffs.detach(), torch.stack(grads, 1)


def _random_start(x: torch.Tensor, radius: torch.Tensor, norm: str, seed: Seed) -> torch.Tensor:
    u = random_draw("uniform" if norm == "linf" else "normal", seed, x.shape, device=x.device, dtype=x.dtype)
    u = u * 2 - 1 if norm == "linf" else u
    u = u / per_image(lp_norm(u, norm).clamp_min(TINY))
    return (x + START_FRACTION * per_image(radius) * u).clamp(0, 1)


def fab_run(clf, x: torch.Tensor, cls: torch.Tensor, success: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            *, targets: torch.Tensor | None = None, rival: str = "strongest", norm: str = "linf", steps: int = STEPS,
            restarts: int = 1, eps: float | None = None, alpha_max: float = ALPHA_MAX, eta: float = ETA,
            beta: float = BETA, candidates: int | None = None, seed: Seed = 0, rounding: bool = True,
            callback=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FAB on a batch: (best image [B, 3, H, W] (8-bit unless `rounding` is off), its norm [B] (inf: none found),
    the step that found it [B]). `success(predictions, rows)` says which images are adversarial; with `eps` an
    image stops once it has an adversarial within ε (AutoAttack's use), and later restarts run only on the rest."""
    b = x.shape[0]
    flat0 = x.flatten(1)
    best = x.clone()
    best_norm = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
    best_step = torch.full((b,), steps * restarts, dtype=torch.long, device=x.device)
    done = 0
    with frozen(clf):
        for r in range(restarts):
            rows = torch.arange(b, device=x.device) if eps is None else (best_norm > eps).nonzero()[:, 0]
            if len(rows) == 0:
                break
            x0 = x[rows]
            if r == 0:
                cur = x0.clone()
            else:  # seeded per restart (and per image when given one seed per image)
                sub = seed + r if _single(seed) else [int(seed[int(i)]) + r for i in rows]
                radius = torch.minimum(best_norm[rows], torch.full_like(best_norm[rows], eps or math.inf))
                radius = torch.where(torch.isfinite(radius), radius, torch.full_like(radius, EPS_START[norm]))
                cur = _random_start(x0, radius, norm, sub)
            for k in range(steps):
                with torch.enable_grad():
                    f, g = _hyperplanes(clf, cur, cls[rows], None if targets is None else targets[rows], rival,
                                        candidates)
                with torch.no_grad():
                    near = (f.abs() / g.norm(p=DUAL[norm], dim=2).clamp_min(TINY)).argmin(1)  # nearest boundary
                    f = f.gather(1, near[:, None])[:, 0]
                    w = g[torch.arange(len(rows), device=x.device), near]  # [n, D]
                    flat = cur.flatten(1)
                    # the hyperplane f + w·(z − cur) = 0, reached from the current point and from the original
                    need_here, need_orig = -f, -f - (w * (flat0[rows] - flat)).sum(1)
                    d = project_to_hyperplane(torch.cat([flat, flat0[rows]]), torch.cat([w, w]),
                                              torch.cat([need_here, need_orig]), norm)
                    d_here, d_orig = d[:len(rows)], d[len(rows):]
                    n_here = lp_norm(d_here, norm).clamp_min(1e-8)
                    n_orig = lp_norm(d_orig, norm).clamp_min(1e-8)
                    alpha = (n_here / (n_here + n_orig)).clamp(0, alpha_max)[:, None]  # bias toward the original
                    nxt = ((flat + eta * d_here) * (1 - alpha) + (flat0[rows] + eta * d_orig) * alpha).clamp(0, 1)
                    cur = nxt.view_as(x0)
                    kept, ok, size = _judge(clf, cur, x0, rows, success, norm, rounding)
                    better = ok & (size < best_norm[rows])
                    hit = rows[better]
                    best[hit], best_norm[hit], best_step[hit] = kept[better], size[better], r * steps + k + 1
                    cur = torch.where(per_image(ok), x0 + beta * (cur - x0), cur)  # back toward the original
                    if eps is not None:  # within budget: this image is done
                        keep = best_norm[rows] > eps
                        rows, cur, x0 = rows[keep], cur[keep], x0[keep]
                done = r * steps + k + 1
                if callback is not None:
                    callback(done, int((~torch.isfinite(best_norm)).sum()) if eps is None
                             else int((best_norm > eps).sum()))
                if len(rows) == 0:
                    break
    return best, best_norm, best_step


def _judge(clf, cur: torch.Tensor, x0: torch.Tensor, rows: torch.Tensor, success, norm: str, rounding: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image kept, adversarial, its norm) for the current iterate: the float image, or the better of two 8-bit
    versions — rounded to the nearest level, and rounded away from the original (FAB converges onto the float
    boundary, which nearest rounding falls back behind half the time; rounding outward keeps a linearly
    separating change on the far side)."""
    if not rounding:
        return cur, success(clf(cur).argmax(-1), rows), lp_norm(cur - x0, norm)
    levels = cur * 255
    outward = torch.where(cur > x0, levels.ceil(), torch.where(cur < x0, levels.floor(), levels.round())) / 255
    kept = torch.cat([quantize(cur), outward.clamp(0, 1)])
    ok = success(clf(kept).argmax(-1), torch.cat([rows, rows]))
    size = torch.where(ok, lp_norm(kept - torch.cat([x0, x0]), norm), math.inf)
    n = cur.shape[0]
    pick = size[n:] < size[:n]  # the outward version when it is adversarial and smaller (or the only one)
    return torch.where(per_image(pick), kept[n:], kept[:n]), ok[:n] | ok[n:], torch.minimum(size[:n], size[n:])


def _options(norm: str, eps, steps, restarts, alpha_max, eta, beta, rounding) -> dict:
    if not 0 < beta < 1 or eta < 1:
        raise FeatvisError(f"fab needs 0 < beta < 1 and eta >= 1, got beta={beta}, eta={eta}")
    return {"norm": norm, "eps": eps, "steps": steps, "restarts": restarts, "alpha_max": alpha_max, "eta": eta,
            "beta": beta, "rounding": rounding}


def within(best: torch.Tensor, x: torch.Tensor, size: torch.Tensor, eps: float | None) -> torch.Tensor:
    """The images to keep: the adversarial found, or (with a budget) the original where it lies beyond ε."""
    keep = torch.isfinite(size) if eps is None else size <= eps
    return torch.where(per_image(keep), best, x)


@ATTACKS.register("fab", targeted=True, untargeted=True, norms=("linf", "l2", "l1"), steps="steps")
def fab(clf, images: torch.Tensor, target=None, *, norm: str = "linf", eps: float | None = None,
        steps: Count = STEPS, restarts: Count = 1, alpha_max: Fraction = ALPHA_MAX,
        eta: Annotated[float, Range(1)] = ETA, beta: Fraction = BETA,
        candidates: Annotated[int | None, Range(1)] = TARGET_CLASSES, seed: Seed = 0, rounding: bool = True,
        callback=None) -> FoolingResult:
    """Fast Adaptive Boundary attack: the smallest change in `norm` found that makes the model say the target (or
    anything else than it said), by projections onto the linearized decision boundary (Croce & Hein 2020).

    Without `eps` it is a minimal-norm attack and keeps the smallest adversarial found. With `eps` (AutoAttack's
    use, and robustness curves) success means an adversarial within ε: an image whose smallest one lies beyond ε
    comes back unchanged, and it stops as soon as it has one within. Norms and success are those of the 8-bit
    image kept (of the float image with rounding off). The model is linearized at the float iterate. Targeted, it
    crosses the boundary between the target and the strongest other class. For AutoAttack's FAB-T (the top-9
    classes in turn) see "fab-t".

    Args:
        norm: "linf", "l2" or "l1", in [0, 1] pixel units.
        eps: budget; None (default) finds the smallest change. Also the radius of the restarts' random starts.
        steps: iterations per restart (100, as in AutoAttack); each one backward pass per class considered.
        restarts: the first from the original, the others from random points at half min(ε, best norm) from it.
        alpha_max: the largest weight of the step taken from the original (0.1, as in the paper).
        eta: overshoot past the hyperplane (1.05).
        beta: after a success, step back to β·(adversarial − original) (0.9).
        candidates: untargeted, the boundaries of this many of the strongest other classes at each step (the
            paper uses all; with 1000 classes a step would cost 1000 backward passes); None: all.
        seed: seeds target="random" and the restarts' random starts.
        rounding: success and norms are those of the 8-bit image kept (off: of the float image, as the reference
            code judges; budgets under an 8-bit level can only be met that way).

    Returns:
        FoolingResult; `params["norms"]` [B] holds the smallest norm found (inf where none).

    Example:
        >>> res = fool(clf, x, None, method="fab", norm="l2"); res.l2
    """
    norm = check_norm(norm)
    if norm == "l0":
        raise FeatvisError("fab takes norm 'linf', 'l2' or 'l1' (for l0 use fmn)")
    params = _options(norm, eps, steps, restarts, alpha_max, eta, beta, rounding)
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    best, size, taken = fab_run(clf, x, original, lambda p, rows: fooled(p, None if targets is None else targets[rows],
                                                                   original[rows]),
                                targets=targets, rival="strongest", seed=seed, callback=callback,
                                candidates=candidates, **params)
    return finish("fab", clf, x, within(best, x, size, eps), targets, original, taken,
                  {**params, "candidates": candidates, "norms": size.tolist()}, probs)


@ATTACKS.register("fab-t", aliases=("fab-targeted",), targeted=True, untargeted=True, norms=("linf", "l2", "l1"),
                  steps="steps")
def fab_t(clf, images: torch.Tensor, target=None, *, norm: str = "linf", eps: float | None = None,
          steps: Count = STEPS, restarts: Count = 1, target_classes: Count = TARGET_CLASSES,
          alpha_max: Fraction = ALPHA_MAX, eta: Annotated[float, Range(1)] = ETA, beta: Fraction = BETA,
          seed: Seed = 0, rounding: bool = True, callback=None) -> FoolingResult:
    """FAB-T: targeted FAB toward each of the most likely other classes in turn, AutoAttack's way (Croce & Hein
    2020); one backward pass per step, so it suits models with many classes.

    Untargeted (target=None, the AutoAttack use) it tries the 2nd, 3rd, … most likely classes, crossing the boundary
    between each and the original class, and succeeds when the prediction changes (to any class); without `eps` it
    tries them all and keeps the smallest change, with `eps` each class runs only on the images not yet fooled
    within ε. With a target it is one targeted FAB toward it (as "fab").

    Args:
        norm: "linf", "l2" or "l1", in [0, 1] pixel units.
        eps: budget; None (default) finds the smallest change. Also the radius of the restarts' random starts.
        steps: iterations per target class and restart (100, as in AutoAttack).
        restarts: random starts per target class.
        target_classes: how many of the most likely other classes to try when untargeted (9, as in AutoAttack).
        alpha_max: the largest weight of the step taken from the original (0.1, as in the paper).
        eta: overshoot past the hyperplane (1.05).
        beta: after a success, step back to β·(adversarial − original) (0.9).
        rounding: success and norms are those of the 8-bit image kept (off: of the float image).
    """
    norm = check_norm(norm)
    if norm == "l0":
        raise FeatvisError("fab-t takes norm 'linf', 'l2' or 'l1' (for l0 use fmn)")
    params = _options(norm, eps, steps, restarts, alpha_max, eta, beta, rounding)
    if target is not None:
        return replace(fab(clf, images, target, seed=seed, callback=callback, **params), method="fab-t")
    x = attack_inputs(clf, images)
    _, original, probs = resolve_attack_targets(clf, x, None, seed)
    tops = top_classes(probs, target_classes)
    best, size, taken = fab_t_run(clf, x, original, tops, seed=seed, callback=callback, **params)
    return finish("fab-t", clf, x, within(best, x, size, eps), None, original, taken,
                  {**params, "target_classes": tops.shape[1], "norms": size.tolist()}, probs)


def fab_t_run(clf, x: torch.Tensor, original: torch.Tensor, tops: torch.Tensor, *, eps: float | None = None,
              steps: int = STEPS, restarts: int = 1, seed: Seed = 0, callback=None, **run_options
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FAB-T the AutoAttack way: targeted FAB toward each column of `tops` [B, count] in turn, crossing the boundary
    between it and the original class, succeeding when the prediction changes; with `eps` each class runs only on
    the images without an adversarial within ε yet. Returns (best image, its norm [B] (inf: none), steps [B])."""
    best = x.clone()
    size = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    taken = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for j in range(tops.shape[1]):
        rows = torch.arange(x.shape[0], device=x.device) if eps is None else (size > eps).nonzero()[:, 0]
        if len(rows) == 0:
            break
        sub = seed + j * restarts if _single(seed) else [int(seed[int(i)]) + j * restarts for i in rows]
        b, n, t = fab_run(clf, x[rows], original[rows], lambda p, i, rows=rows: p != original[rows[i]],
                          targets=tops[rows, j], rival="original", eps=eps, steps=steps, restarts=restarts,
                          seed=sub, callback=callback, **run_options)
        better = n < size[rows]
        best[rows[better]], size[rows[better]] = b[better], n[better]
        taken[rows] += torch.where(torch.isfinite(n), t, torch.full_like(t, steps * restarts))
    return best, size, taken


__all__ = ["fab", "fab_run", "fab_t", "fab_t_run", "project_to_hyperplane", "within"]
