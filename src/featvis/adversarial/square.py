"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"): score-based random search that changes one random square window per
query, kept when the margin loss drops, with the window shrinking on a fixed schedule. L∞ and L2; no gradients."""

from __future__ import annotations

import math
import warnings

import torch

from featvis._ops import Seed, _single, random_draw
from featvis._registry import Count, Fraction
from featvis.adversarial._base import ATTACKS, attack_inputs, per_image, resolve_attack_targets
from featvis.adversarial.pgd import EPS_L2, EPS_LINF, _check_norm
from featvis.adversarial.result import FoolingResult, finish
from featvis.errors import FeatvisWarning
from featvis.images import quantize
from featvis.models.classifier import frozen

QUERIES = 5000  # AutoAttack's budget
P_INIT = {"linf": 0.8, "l2": 0.8}  # the share of pixels the first window covers (AutoAttack's p_init)
# the paper's schedule (Sec. 3.3, reference code): p halves at these iterations of a 10 000-query run
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_QUERIES = 10_000
L2_GRID = 5  # the L2 start: a 5 × 5 grid of stripe patterns (reference code)
DRAWS = 5  # uniform numbers per image and iteration besides the C signs: windows 1 and 2 (row, col), transpose


def p_schedule(it: int, queries: int, p_init: float) -> float:
    """The window's share of pixels at iteration `it`, the schedule stretched to a run of `queries`."""
    t = int(it / queries * SCHEDULE_QUERIES)
    return p_init / 2 ** sum(t > h for h in HALVINGS)


def margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The loss Square lowers; <= 0 means fooled: own − best other logit (untargeted), best other − target."""
    own = logits.gather(1, cls[:, None])[:, 0]
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return others - own if targeted else own - others


def _window(pos: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """[n, length] bool: which of `length` rows (or columns) each image's window [pos, pos + size) covers."""
    r = torch.arange(length, device=pos.device)
    return (r[None] >= pos[:, None]) & (r[None] < pos[:, None] + size)


def _positions(u: torch.Tensor, size: int, length: int) -> torch.Tensor:
    return (u * (length - size + 1)).long().clamp(0, length - size)


def _rings(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h, w] concentric rectangles around (h // 2, w // 2), the k-th (from 0) adding 1/(k+1)²."""
    i = (torch.arange(h, device=device)[:, None] - h // 2).abs()
    j = (torch.arange(w, device=device)[None] - w // 2).abs()
    ring = torch.maximum(i, j)
    m = max(h // 2 + 1, w // 2 + 1)
    weights = 1 / torch.arange(1, m + 1, device=device, dtype=dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = Σ_{k' >= k} 1/(k'+1)²
    return tail[ring.clamp(max=m - 1)]


def stripes(s: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The L2 attack's [s, s] window pattern: concentric rectangles weighted 1/(k+1)², positive in the top half,
    negative in the bottom half, unit L2 norm (the paper's η, Sec. 3.2)."""
    top = _rings(s // 2, s, device, dtype)
    bottom = _rings(s - s // 2, s, device, dtype)
    top = top / top.norm().clamp_min(1e-12)
    bottom = bottom / bottom.norm().clamp_min(1e-12)
    out = torch.cat([top, -bottom])
    return out / out.norm().clamp_min(1e-12)


def _offset(seed: Seed, k: int) -> Seed:
    return int(seed) + k if _single(seed) else [int(v) + k for v in seed]


def _l2_start(x: torch.Tensor, eps: float, u: torch.Tensor) -> torch.Tensor:
    """A 5 × 5 grid of stripe patterns with random signs per (image, channel, block), scaled to ε."""
    b, c, h, w = x.shape
    s = max(h // L2_GRID, 1)
    n_h, n_w = h // s, w // s
    pattern = stripes(s, x.device, x.dtype).repeat(n_h, n_w)  # [n_h·s, n_w·s]
    signs = torch.where(u < 0.5, -1.0, 1.0).to(x.dtype).view(b, c, n_h, n_w)
    delta = torch.zeros_like(x)
    top, left = (h - n_h * s) // 2, (w - n_w * s) // 2
    delta[:, :, top:top + n_h * s, left:left + n_w * s] = pattern * signs.repeat_interleave(s, 2).repeat_interleave(
        s, 3)
    return (x + delta * per_image(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12))).clamp(0, 1)


def _l2_candidate(x: torch.Tensor, best: torch.Tensor, eps: float, s: int, u: torch.Tensor, signs: torch.Tensor
                  ) -> torch.Tensor:
    """The paper's L2 update (Alg. 3): move the perturbation's mass from window 2 into window 1, which gets a fresh
    stripe pattern plus its old content, then rescale the whole change to ‖δ‖₂ = ε."""
    _, c, h, w = x.shape
    delta = best - x
    w1 = (_window(_positions(u[:, 0], s, h), s, h)[:, :, None] & _window(_positions(u[:, 1], s, w), s, w)[:, None])
    w2 = (_window(_positions(u[:, 2], s, h), s, h)[:, :, None] & _window(_positions(u[:, 3], s, w), s, w)[:, None])
    w1, w2 = w1[:, None].to(x.dtype), w2[:, None].to(x.dtype)  # [n, 1, H, W]
    r0 = _positions(u[:, 0], s, h)[:, None, None]
    c0 = _positions(u[:, 1], s, w)[:, None, None]
    li = (torch.arange(h, device=x.device)[None, :, None] - r0).clamp(0, s - 1)
    lj = (torch.arange(w, device=x.device)[None, None, :] - c0).clamp(0, s - 1)
    pat = stripes(s, x.device, x.dtype)
    placed = torch.where((u[:, 4] < 0.5)[:, None, None], pat[li, lj], pat.T[li, lj])[:, None] * w1  # [n, 1, H, W]
    in_w1 = (delta * w1).flatten(2).norm(dim=2)[:, :, None, None]  # per channel
    total = delta.flatten(1).norm(dim=1)
    both = (delta * torch.maximum(w1, w2)).flatten(1).norm(dim=1)
    new = placed * signs + delta * w1 / in_w1.clamp_min(1e-12)
    new = new / (new * w1).flatten(2).norm(dim=2)[:, :, None, None].clamp_min(1e-12)
    scale = ((eps ** 2 - total ** 2).clamp_min(0) / c + both ** 2).sqrt()
    delta = delta * (1 - torch.maximum(w1, w2)) + new * w1 * per_image(scale)
    return (x + delta * per_image(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12))).clamp(0, 1)


def square_run(clf, x: torch.Tensor, cls: torch.Tensor, targeted: bool, *, eps: float, norm: str = "linf",
               queries: int = QUERIES, p_init: float | None = None, seed: Seed = 0, rounding: bool = True,
               early_stop: bool = True, callback=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Square Attack on a batch: (best image [B, 3, H, W], margin there [B] (<= 0: fooled), queries used [B]).

    Each iteration queries the model once for every image not fooled yet (all of them with early_stop off). With
    `rounding` the model judges the 8-bit image, and L∞ steps are whole 8-bit levels (ε rounded down to them)."""
    b, c, h, w = x.shape
    p_init = P_INIT[norm] if p_init is None else p_init
    step = math.floor(eps * 255 + 1e-6) / 255 if rounding and norm == "linf" else eps
    if step == 0:
        warnings.warn(f"square at L∞ ε = {eps * 255:.2f}/255 cannot change any 8-bit value; pass rounding=False to "
                      "attack the float image", FeatvisWarning, stacklevel=3)
    seen = quantize if rounding else (lambda z: z)
    table = random_draw("uniform", seed, (b, queries, DRAWS + c), device=x.device, dtype=x.dtype)
    if norm == "linf":  # vertical stripes of ±ε, one sign per (image, channel, column) (Sec. 3.1)
        u0 = random_draw("uniform", _offset(seed, 1), (b, c, 1, w), device=x.device, dtype=x.dtype)
        best = (x + step * torch.where(u0 < 0.5, -1.0, 1.0).to(x.dtype)).clamp(0, 1)
    else:
        blocks = h // max(h // L2_GRID, 1) * (w // max(w // L2_GRID, 1))
        u0 = random_draw("uniform", _offset(seed, 1), (b, c * blocks), device=x.device, dtype=x.dtype)
        best = _l2_start(x, eps, u0)
    with torch.no_grad(), frozen(clf):
        loss = margin(clf(seen(best)), cls, targeted)
        used = torch.ones(b, dtype=torch.long, device=x.device)
        for it in range(queries - 1):
            active = (loss > 0).nonzero()[:, 0] if early_stop else torch.arange(b, device=x.device)
            if len(active) == 0:
                break
            p = p_schedule(it, queries, p_init)
            u = table[active, it]
            signs = torch.where(u[:, DRAWS:DRAWS + c] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None]  # [n, C, 1, 1]
            xa, cur = x[active], best[active]
            if norm == "linf":
                s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                win = (_window(_positions(u[:, 0], s, h), s, h)[:, :, None]
                       & _window(_positions(u[:, 1], s, w), s, w)[:, None])[:, None]
                cand = torch.where(win, (xa + step * signs).clamp(0, 1), cur)
            else:
                s = min(max(round(math.sqrt(p * h * w)), 3), h, w)
                s += 1 - s % 2 if s < min(h, w) else 0  # odd, as in the reference (a centred pattern)
                cand = _l2_candidate(xa, cur, eps, s, u, signs)
            new = margin(clf(seen(cand)), cls[active], targeted)
            better = (new < loss[active]) | (new <= 0)
            best[active[better]], loss[active[better]] = cand[better], new[better]
            used[active] += 1
            if callback is not None:
                callback(it + 1, int((loss > 0).sum()))
    return (seen(best), loss, used)


@ATTACKS.register("square", aliases=("square-attack",), targeted=True, untargeted=True, norms=("linf", "l2"),
                  steps="queries")
def square(clf, images: torch.Tensor, target=None, *, eps: float | None = None, norm: str = "linf",
           queries: Count = QUERIES, p_init: Fraction | None = None, seed: Seed = 0, rounding: bool = True,
           early_stop: bool = True, callback=None) -> FoolingResult:
    """Square Attack: black-box random search on the margin loss, one random square window per query (Andriushchenko
    et al. 2020); only the model's scores are used, never its gradients.

    Each query changes one square window (L∞: every value in it to ±ε per channel; L2: a stripe pattern, moving
    the change's mass out of a second window) and keeps it when the margin drops. The window covers `p_init` of
    the image at first and halves on the paper's schedule (iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000,
    8000 of 10 000, stretched to `queries`). Only images not fooled yet query the model. `steps` in the result
    counts each image's queries.

    Args:
        eps: budget in [0, 1] pixel units (default 8/255 for L∞, 1.0 for L2).
        norm: "linf" or "l2".
        queries: the most queries per image (5000, as in AutoAttack).
        p_init: the first window's share of the pixels (0.8, as in AutoAttack).
        seed: seeds target="random" and every random draw.
        rounding: the model judges the 8-bit image, and L∞ steps are whole 8-bit levels (ε rounded down to them);
            off: the float image, as the reference code (the result is still judged on 8 bits).
        early_stop: an image stops querying once fooled (off: every image uses every query).
    """
    norm = _check_norm(norm)
    eps = (EPS_LINF if norm == "linf" else EPS_L2) if eps is None else float(eps)
    x = attack_inputs(clf, images)
    targets, original, probs = resolve_attack_targets(clf, x, target, seed)
    best, _, used = square_run(clf, x, original if targets is None else targets, targets is not None, eps=eps,
                               norm=norm, queries=queries, p_init=p_init, seed=seed, rounding=rounding,
                               early_stop=early_stop, callback=callback)
    return finish("square", clf, x, best, targets, original, used,
                  {"eps": eps, "norm": norm, "queries": queries, "p_init": P_INIT[norm] if p_init is None else p_init,
                   "rounding": rounding}, probs)


__all__ = ["margin", "p_schedule", "square", "square_run", "stripes"]
