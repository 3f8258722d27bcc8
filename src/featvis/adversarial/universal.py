"""Universal adversarial perturbations: one perturbation v with ‖v‖ ≤ ξ that changes the model's prediction on
most images of a data set (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, CVPR 2017).

Two fits, both seeded and batched, both streaming the data batch by batch (memory stays flat):

- "deepfool", the paper's Algorithm 1: pass over the images; for each one x+v does not fool yet, the smallest extra
  step Δv that does (DeepFool at x+v), then v ← P_ξ(v + Δv). After each pass the fooling rate on the training images
  is measured, and the fit stops once it reaches `target_rate` (the paper's 1 − δ) or after `epochs` passes. As in
  the authors' code (universal_pert.py) DeepFool is the L2 one for both norms; L∞ comes from the projection.
  A batch's DeepFool steps are all taken at the same v and then applied one after the other (batch_size=1 is the
  paper's exact sequence; larger batches are what makes it affordable on a CPU).
- "sgd", the stochastic-gradient fit of Shafahi et al., AAAI 2020 ("Universal adversarial training"): per batch,
  the gradient of the mean cross-entropy of the clean predictions at x+v with respect to v, a signed (L∞) or
  normalized (L2) step, projection.

The fooling rate is the share of images whose prediction on the 8-bit image x+v (what a saved PNG holds) differs
from the prediction on x — the paper's definition, judged the featvis way. The gradients are taken at that 8-bit
image too (straight-through rounding).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from featvis._types import Result
from featvis.errors import FeatvisError
from featvis.images import check_images, quantize
from featvis.models.classifier import frozen

EPS_LINF = 10 / 255  # the paper's ImageNet budget, ξ = 10 on 0–255 images
EPS_L2 = 2000 / 255  # the paper's L2 budget, ξ = 2000 on 0–255 224×224 images
TARGET_RATE = 0.8  # the paper's 1 − δ with δ = 0.2
METHODS = ("deepfool", "sgd")

Batches = torch.Tensor | Sequence[torch.Tensor]
"""[N, 3, H, W] images (cut into batches of `batch_size`), or a sequence of batches (it may load each batch when it
is indexed, so a data set larger than memory streams)."""


@dataclass(frozen=True)
class UniversalState:
    """Where a fit is: everything a resumed fit needs to continue exactly where this one stopped."""

    perturbation: torch.Tensor  # [3, H, W]
    epoch: int = 0  # the pass under way (0-based)
    batch: int = 0  # batches of that pass done
    history: tuple[float, ...] = ()  # fooling rate on the training images after each finished pass
    done: bool = False
    images: int = 0  # training images (counted by the last measurement)

    def to_dict(self) -> dict:
        return {"perturbation": self.perturbation.detach().cpu().clone(), "epoch": self.epoch, "batch": self.batch,
                "history": list(self.history), "done": self.done, "images": self.images}

    @classmethod
    def from_dict(cls, d: dict) -> UniversalState:
        return cls(d["perturbation"], int(d["epoch"]), int(d["batch"]), tuple(float(h) for h in d["history"]),
                   bool(d["done"]), int(d.get("images", 0)))


@dataclass(frozen=True, repr=False)
class UniversalResult(Result):
    """A universal perturbation and how well it fools the images it was fitted on."""

    method: str
    perturbation: torch.Tensor  # [3, H, W], added to every image (then clamped to [0, 1] and rounded to 8 bits)
    eps: float
    norm: str
    fooling_rate: float  # on the training images, after the last pass
    history: tuple[float, ...]  # after each pass
    images: int  # training images
    seconds: float
    params: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def linf(self) -> float:
        return float(self.perturbation.abs().max())

    @property
    def l2(self) -> float:
        return float(self.perturbation.norm())

    def magnified(self) -> torch.Tensor:
        """The perturbation as a picture, [3, H, W] in [0, 1]: mid-grey plus v stretched until ±ξ (L∞) or its
        largest value (L2) is black or white."""
        top = self.eps if self.norm == "linf" else max(self.linf, 1e-12)
        return (0.5 + self.perturbation / (2 * top)).clamp(0, 1)


def apply(images: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """The perturbed images a user keeps: x + v clamped to [0, 1] and rounded to 8 bits, [B, 3, H, W]."""
    return quantize(images + perturbation.to(images.device, images.dtype))


def random_perturbation(shape: Sequence[int], eps: float, norm: str = "linf", seed: int = 0) -> torch.Tensor:
    """The baseline: a random perturbation of the same size, [3, H, W] — random signs ±ξ (a corner of the L∞ ball,
    as large as a universal one can be) or a Gaussian direction of L2 norm ξ."""
    gen = torch.Generator().manual_seed(int(seed))
    if _norm(norm) == "linf":
        return (torch.randint(0, 2, tuple(shape), generator=gen).float() * 2 - 1) * eps
    u = torch.randn(tuple(shape), generator=gen)
    return u * (eps / u.norm())


def fooled(clf, images: torch.Tensor, perturbation: torch.Tensor,
           clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fooled [B] bool, clean predictions [B], predictions on the perturbed 8-bit images [B])."""
    with torch.no_grad(), frozen(clf):
        if clean is None:
            clean = clf(images).argmax(-1)
        after = clf(apply(images, perturbation)).argmax(-1)
    return after != clean, clean, after


def project(v: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Onto the ξ-ball of `norm` (the paper's P_{p,ξ})."""
    if norm == "linf":
        return v.clamp(-eps, eps)
    n = float(v.norm())
    return v * (eps / n) if n > eps else v


def universal_steps(clf, data: Batches, *, eps: float | None = None, norm: str = "linf", method: str = "deepfool",
                    epochs: int = 10, target_rate: float = TARGET_RATE, batch_size: int = 16,
                    step: float | None = None, candidates: int = 10, overshoot: float = 0.02,
                    deepfool_steps: int = 10, seed: int = 0, start: UniversalState | None = None
                    ) -> Iterator[UniversalState]:
    """The fit, one state per batch and one after each pass's measurement (see `universal_perturbation`)."""
    norm, eps = _norm(norm), _eps(eps, norm)
    if method not in METHODS:
        raise FeatvisError(f"unknown universal fit {method!r}; use {' or '.join(METHODS)}")
    if epochs < 1 or not 0 < target_rate <= 1:
        raise FeatvisError(f"epochs must be ≥ 1 and target_rate in (0, 1], got {epochs} and {target_rate}")
    batches = _as_batches(data, batch_size)
    if len(batches) == 0:
        raise FeatvisError("a universal perturbation needs training images; none were given")
    step = (eps / 8 if norm == "linf" else eps / 10) if step is None else step  # sgd: a few dozen steps to cross
    state = start or UniversalState(torch.zeros(batches[0].shape[1:]))
    clean: dict[int, torch.Tensor] = {}  # batch index -> clean predictions, computed once per fit
    with frozen(clf):
        while not state.done:
            order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 7919 + state.epoch))
            v = state.perturbation.to(clf.device)
            for pos in range(state.batch, len(batches)):
                i = int(order[pos])
                x = check_images(batches[i], dtype=clf.dtype).to(clf.device)
                if i not in clean:
                    with torch.no_grad():
                        clean[i] = clf(x).argmax(-1)
                if method == "deepfool":
                    v = _deepfool_batch(clf, x, clean[i], v, eps, norm, candidates, overshoot, deepfool_steps)
                else:
                    v = _sgd_batch(clf, x, clean[i], v, eps, norm, step)
                state = replace(state, perturbation=v.detach().cpu(), batch=pos + 1)
                yield state
            hits = total = 0
            for i in range(len(batches)):
                x = check_images(batches[i], dtype=clf.dtype).to(clf.device)
                ok, clean[i], _ = fooled(clf, x, v, clean.get(i))
                hits, total = hits + int(ok.sum()), total + len(ok)
            history = (*state.history, hits / total)
            done = history[-1] >= target_rate or state.epoch + 1 >= epochs
            state = UniversalState(v.detach().cpu(), state.epoch + (0 if done else 1), len(batches) if done else 0,
                                   history, done, total)
            yield state


def universal_perturbation(clf, data: Batches, *, eps: float | None = None, norm: str = "linf",
                           method: str = "deepfool", epochs: int = 10, target_rate: float = TARGET_RATE,
                           batch_size: int = 16, step: float | None = None, candidates: int = 10,
                           overshoot: float = 0.02, deepfool_steps: int = 10, seed: int = 0,
                           start: UniversalState | None = None,
                           callback: Callable[[UniversalState], None] | None = None) -> UniversalResult:
    """A universal adversarial perturbation for the images of `data` (Moosavi-Dezfooli et al., CVPR 2017).

    Args:
        data: [N, 3, H, W] images in [0, 1], or a sequence of such batches (indexed lazily: it may load them).
        eps: budget ξ in [0, 1] pixel units (default 10/255 for L∞, 2000/255 for L2, the paper's).
        norm: "linf" or "l2".
        method: "deepfool" (the paper's Algorithm 1) or "sgd" (Shafahi et al. 2020's batched gradient fit).
        epochs: most passes over the data.
        target_rate: stop once this share of the training images is fooled (the paper's 1 − δ).
        batch_size: images per batch when `data` is one tensor.
        step: sgd's step (default ξ/8 for L∞, ξ/10 for L2).
        candidates, overshoot, deepfool_steps: DeepFool's (10, 0.02 and 10 as in the authors' code).
        seed: the order of the batches in each pass.
        start: a `UniversalState` to continue from (a checkpoint); the result equals an uninterrupted fit's.
        callback: called with the `UniversalState` after each batch and each pass (checkpointing, progress).

    Returns:
        `UniversalResult`: `.perturbation` [3, H, W], the training fooling rate after each pass, the time.

    Example:
        >>> res = universal_perturbation(clf, images, eps=10 / 255, method="sgd", epochs=5)
        >>> res.fooling_rate, res.linf * 255
    """
    norm, eps = _norm(norm), _eps(eps, norm)
    t0 = time.perf_counter()
    state = start
    for state in universal_steps(clf, data, eps=eps, norm=norm, method=method, epochs=epochs,
                                 target_rate=target_rate, batch_size=batch_size, step=step, candidates=candidates,
                                 overshoot=overshoot, deepfool_steps=deepfool_steps, seed=seed, start=start):
        if callback is not None:
            callback(state)
    assert state is not None
    params = {"eps": eps, "norm": norm, "method": method, "epochs": epochs, "target_rate": target_rate,
              "batch_size": batch_size, "seed": seed}
    params |= ({"step": step or (eps / 8 if norm == "linf" else eps / 10)} if method == "sgd" else
               {"candidates": candidates, "overshoot": overshoot, "deepfool_steps": deepfool_steps})
    return UniversalResult(method, state.perturbation, eps, norm, state.history[-1] if state.history else 0.0,
                           state.history, state.images, time.perf_counter() - t0, params)


def _deepfool_batch(clf, x, clean, v, eps, norm, candidates, overshoot, steps) -> torch.Tensor:
    """The paper's inner loop over one batch: DeepFool from x+v (8-bit) for the images it does not fool yet."""
    from featvis.adversarial.deepfool import deepfool

    start = apply(x, v)
    with torch.no_grad():
        todo = clf(start).argmax(-1) == clean
    if not bool(todo.any()):
        return v
    res = deepfool(clf, start[todo], None, candidates=candidates, overshoot=overshoot, steps=steps)
    deltas = (res.images - start[todo])[res.success]  # on the 8-bit grid; unconverged images add nothing (as the
    for d in deltas:  # authors' code); applied in turn, each followed by the projection
        v = project(v + d, eps, norm)
    return v


def _sgd_batch(clf, x, clean, v, eps, norm, step) -> torch.Tensor:
    """One step of Shafahi et al.'s fit: ascend the batch's mean cross-entropy of the clean predictions."""
    dv = v.detach().clone().requires_grad_(True)
    raw = x + dv
    logits = clf(raw + (quantize(raw) - raw).detach())  # the 8-bit image, gradients straight through the rounding
    grad = torch.autograd.grad(F.cross_entropy(logits, clean), dv)[0]
    direction = grad.sign() if norm == "linf" else grad / grad.norm().clamp_min(1e-12)
    return project(v + step * direction, eps, norm).detach()


class _Chunks(Sequence):
    def __init__(self, images: torch.Tensor, size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return -(-self.images.shape[0] // self.size)

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.images[i * self.size:(i + 1) * self.size]


def _as_batches(data: Batches, batch_size: int) -> Sequence[torch.Tensor]:
    if batch_size < 1:
        raise FeatvisError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, torch.Tensor):
        return _Chunks(check_images(data), batch_size)
    return data


def _norm(norm: str) -> str:
    norm = norm.lower().replace("-", "")
    if norm not in ("linf", "l2"):
        raise FeatvisError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    return norm


def _eps(eps: float | None, norm: str) -> float:
    eps = (EPS_LINF if _norm(norm) == "linf" else EPS_L2) if eps is None else float(eps)
    if not eps > 0:
        raise FeatvisError(f"eps must be a positive budget, got {eps}")
    return eps


__all__ = ["UniversalResult", "UniversalState", "apply", "fooled", "random_perturbation", "universal_perturbation",
           "universal_steps"]
