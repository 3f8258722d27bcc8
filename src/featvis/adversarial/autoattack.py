"""AutoAttack (Croce & Hein, ICML 2020): a fixed sequence of diverse parameter-free attacks, each run only on the
images every earlier one failed to break; an image is robust when none breaks it. Robust accuracy is judged on the
8-bit images a user keeps, and each image records the attack that broke it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from featvis._ops import Seed, _single
from featvis._types import Result
from featvis.adversarial._base import ATTACKS, attack_inputs
from featvis.adversarial.apgd import STEPS, TARGET_CLASSES, _losses, apgd_t_run, restarts_run, top_classes
from featvis.adversarial.fab import fab_run, fab_t_run, within
from featvis.adversarial.pgd import EPS_L2, EPS_LINF, _check_norm
from featvis.adversarial.square import square_run
from featvis.errors import FeatvisError
from featvis.images import quantize
from featvis.models.classifier import frozen

SQUARE_QUERIES = 5000  # the standard version's query budget (reference code, set_version)
EOT_ITER = 20  # gradient draws per step for randomized models (version "rand", reference code)
PLUS_RESTARTS = 5  # restarts of APGD and FAB in the "plus" version (reference code)

# (name in the results, attack, options): APGD, FAB and Square run in this module (so rounding=False keeps their
# float images), any other name through the registry. FAB-T is the reference's: targeted FAB toward each of the
# top-9 classes, crossing its boundary with the true class, succeeding on any misclassification.
VERSIONS: dict[str, list[tuple[str, str, dict]]] = {
    "standard": [("apgd-ce", "apgd", {"loss": "ce"}), ("apgd-t", "apgd-t", {}), ("fab-t", "fab-t", {}),
                 ("square", "square", {"queries": SQUARE_QUERIES})],
    "plus": [("apgd-ce", "apgd", {"loss": "ce", "restarts": PLUS_RESTARTS}),
             ("apgd-dlr", "apgd", {"loss": "dlr", "restarts": PLUS_RESTARTS}),
             ("fab", "fab", {"restarts": PLUS_RESTARTS}), ("square", "square", {"queries": SQUARE_QUERIES}),
             ("apgd-t", "apgd-t", {}), ("fab-t", "fab-t", {})],
    "rand": [("apgd-ce", "apgd", {"loss": "ce", "eot_iter": EOT_ITER}),
             ("apgd-dlr", "apgd", {"loss": "dlr", "eot_iter": EOT_ITER})],
}
CLEAN = "clean"  # broken_by of an image the model already gets wrong


@dataclass(frozen=True, repr=False)
class AutoAttackResult(Result):
    """Per image: its label, whether it stayed robust, the attack that broke it and the image that did; over the
    batch: clean and robust accuracy and how many images each attack broke."""

    version: str
    norm: str
    eps: float
    original: torch.Tensor  # [B, 3, H, W]
    labels_used: torch.Tensor  # [B] the labels judged against (the model's predictions when none were given)
    clean_predicted: torch.Tensor  # [B]
    robust: torch.Tensor  # [B] bool: correct on the original and on every attack's image
    images: torch.Tensor  # [B, 3, H, W] the breaking image (8-bit unless rounding=False), the original if none
    predicted: torch.Tensor  # [B] the model's prediction on `images`
    broken_by: list[str | None]  # [B] the breaking attack, "clean" when misclassified already, None when robust
    attacks: list[str]  # the attacks run, in order
    robust_after: dict[str, int]  # images still robust after each attack
    notes: list[str] = field(default_factory=list)  # attacks skipped and why
    labels: Sequence[str] = field(repr=False, default_factory=list)  # the classifier's Labels (a reference)
    params: dict = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float((self.clean_predicted == self.labels_used).float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    def records(self) -> list[dict]:
        rows = []
        for i in range(self.robust.shape[0]):
            y, p = int(self.labels_used[i]), int(self.predicted[i])
            rows.append({"label": y, "label_name": self._name(y), "clean_predicted": int(self.clean_predicted[i]),
                         "clean_correct": bool(self.clean_predicted[i] == self.labels_used[i]),
                         "robust": bool(self.robust[i]), "broken_by": self.broken_by[i], "predicted": p,
                         "predicted_name": self._name(p),
                         "linf_255": float((self.images[i] - self.original[i]).abs().max() * 255),
                         "l2": float((self.images[i] - self.original[i]).norm())})
        return rows

    def _name(self, i: int) -> str:
        return self.labels[i] if self.labels else str(i)


def _labels(clf, labels, predicted: torch.Tensor) -> torch.Tensor:
    if labels is None:
        return predicted.clone()
    idx = clf.labels.per_image(labels, predicted.shape[0], hint="or None (the model's predictions)")
    return torch.tensor(idx, device=predicted.device)


def autoattack(clf, images: torch.Tensor, labels: Sequence[int | str] | torch.Tensor | None = None, *,
               eps: float | None = None, norm: str = "linf", version: str = "standard", steps: int = STEPS,
               seed: Seed = 0, rounding: bool = True,
               callback: Callable[[int, int], None] | None = None) -> AutoAttackResult:
    """Robust accuracy under the AutoAttack suite (Croce & Hein 2020).

    "standard": APGD-CE, APGD-T (targeted DLR, top-9 classes), FAB-T, Square (5000 queries); "plus": APGD-CE and
    APGD-DLR with 5 restarts, FAB with 5 restarts, Square, APGD-T, FAB-T; "rand" (randomized models): APGD-CE and
    APGD-DLR with gradients averaged over 20 draws. Every attack runs only on the images still robust.

    Args:
        labels: the true classes (indices or names, one per image); None uses the model's predictions, so clean
            accuracy is 1 and robust accuracy is the share whose prediction no attack changes.
        eps: budget in [0, 1] pixel units (default 8/255 for L∞, 1.0 for L2).
        version: "standard", "plus" or "rand".
        steps: APGD and FAB iterations per run (100, as in the reference).
        rounding: judge the 8-bit images (default); off judges the float images, as the reference code does
            (budgets under half an 8-bit level change nothing once rounded).
        callback: called as callback(attacks done, images still robust).

    Returns:
        AutoAttackResult; `robust_accuracy`, and per image `broken_by`.

    Example:
        >>> r = autoattack(clf, x, eps=4/255); r.robust_accuracy, r.broken_by
    """
    if version not in VERSIONS:
        raise FeatvisError(f"unknown AutoAttack version {version!r}; use one of {', '.join(VERSIONS)}")
    norm = _check_norm(norm)
    eps = (EPS_LINF if norm == "linf" else EPS_L2) if eps is None else float(eps)
    if not (0 < eps < math.inf):
        raise FeatvisError(f"eps must be a positive finite budget in [0, 1] pixel units, got {eps}")
    x = attack_inputs(clf, images)
    with torch.no_grad(), frozen(clf):
        logits = clf(x)
    probs, clean = logits.softmax(-1), logits.argmax(-1)
    y = _labels(clf, labels, clean)
    robust = clean == y
    broken_by: list[str | None] = [None if bool(r) else CLEAN for r in robust]
    best, predicted = x.clone(), clean.clone()
    run, after, notes = [], {}, []
    for i, (name, attack, opts) in enumerate(VERSIONS[version]):
        rows = robust.nonzero()[:, 0]
        if len(rows) == 0:
            break
        sub_seed = seed if _single(seed) else [seed[int(j)] for j in rows]
        if attack in ("apgd", "apgd-t"):
            adv = _apgd(clf, x[rows], y[rows], probs[rows], attack, opts, eps=eps, norm=norm, steps=steps,
                        seed=sub_seed, rounding=rounding)
        elif attack in ("fab", "fab-t", "square"):
            adv = _fab_square(clf, x[rows], y[rows], probs[rows], attack, opts, eps=eps, norm=norm, steps=steps,
                              seed=sub_seed, rounding=rounding)
        else:
            adv, note = _registered(clf, x[rows], y[rows], probs[rows], attack, opts, eps=eps, norm=norm,
                                    seed=sub_seed)
            if adv is None:
                notes.append(f"{name}: {note}")
                continue
        with torch.no_grad(), frozen(clf):
            pred = clf(quantize(adv) if rounding else adv).argmax(-1)
        hit = pred != y[rows]
        broke = rows[hit]
        best[broke], predicted[broke], robust[broke] = (quantize(adv[hit]) if rounding else adv[hit]), pred[hit], False
        for j in broke.tolist():
            broken_by[j] = name
        run.append(name)
        after[name] = int(robust.sum())
        if callback is not None:
            callback(i + 1, int(robust.sum()))
    return AutoAttackResult(version, norm, eps, x, y, clean, robust, best, predicted, broken_by, run, after, notes,
                            labels=clf.labels, params={"version": version, "norm": norm, "eps": eps, "steps": steps,
                                                       "rounding": rounding})


def _apgd(clf, x, y, probs, attack: str, opts: dict, *, eps: float, norm: str, steps: int, seed: Seed,
          rounding: bool) -> torch.Tensor:
    """APGD-CE/DLR or APGD-T on still-robust images (their labels are their predictions): the image found, float."""
    run_opts = {"eot_iter": opts.get("eot_iter", 1), "rounding": rounding}
    if attack == "apgd-t":
        adv, _, _ = apgd_t_run(clf, x, y, top_classes(probs, TARGET_CLASSES), eps=eps, norm=norm, steps=steps,
                               restarts=1, seed=seed, **run_opts)
        return adv
    adv, _, _ = restarts_run(clf, x, _losses(opts["loss"], y, None), lambda p, rows: p != y[rows], eps=eps, norm=norm,
                             steps=steps, restarts=opts.get("restarts", 1), seed=seed, **run_opts)
    return adv


def _fab_square(clf, x, y, probs, attack: str, opts: dict, *, eps: float, norm: str, steps: int, seed: Seed,
                rounding: bool) -> torch.Tensor:
    """FAB (untargeted, the top-9 boundaries per step), FAB-T or Square on still-robust images: the image found
    within ε (8-bit when `rounding`, else float), the original where none was."""
    if attack == "square":
        return square_run(clf, x, y, False, eps=eps, norm=norm, queries=opts["queries"], seed=seed,
                          rounding=rounding)[0]
    run = {"eps": eps, "norm": norm, "steps": steps, "restarts": opts.get("restarts", 1), "seed": seed,
           "rounding": rounding}
    if attack == "fab-t":
        best, size, _ = fab_t_run(clf, x, y, top_classes(probs, TARGET_CLASSES), **run)
    else:
        best, size, _ = fab_run(clf, x, y, lambda p, rows: p != y[rows], candidates=TARGET_CLASSES, **run)
    return within(best, x, size, eps)


def _registered(clf, x, y, probs, attack: str, opts: dict, *, eps: float, norm: str, seed: Seed
                ) -> tuple[torch.Tensor | None, str]:
    """Any other attack, untargeted, through the registry: (the images, "") or (None, why skipped)."""
    if attack not in ATTACKS:
        return None, f"attack {attack!r} is not registered"
    spec = ATTACKS.get(attack)
    if norm not in spec.info.get("norms", ()):
        return None, f"{attack} does not take an {norm} budget"
    kw = {"eps": eps, "norm": norm, "seed": seed}
    steps_key = spec.info.get("steps")
    if "queries" in opts and steps_key:
        kw[steps_key] = opts["queries"]
    if "restarts" in opts and "restarts" in spec.options:
        kw["restarts"] = opts["restarts"]
    kw = {k: v for k, v in kw.items() if k in spec.options}
    return spec(clf, x, None, **kw).images, ""


__all__ = ["VERSIONS", "AutoAttackResult", "autoattack"]
