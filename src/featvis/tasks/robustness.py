"""The robustness task: the share of images fooled at each budget by one attack, each image's smallest fooling
budget; or, with `suite="autoattack"`, robust accuracy under the AutoAttack suite at each budget (judged after 8-bit
rounding) with bootstrap intervals, per class, and the attack that broke each image."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, ClassTarget, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.fool import _csv, _target, attack_targets, check_attack

ROBUSTNESS_FIELDS = ["input", "method", "norm", "fooled", "min_eps", "min_eps_255", "original_class", "original_name",
                     "target", "target_name", "predicted", "predicted_name", "label"]
SUITE_FIELDS = ["input", "method", "norm", "label", "label_used", "label_name", "clean_predicted", "clean_correct",
                "min_eps", "min_eps_255", "broken_by", "robust_per_eps", "predicted", "predicted_name"]
SUITES = ("autoattack",)
SUITE_OPTIONS = ("steps",)  # what -O/--steps may set for a suite (APGD iterations)


@dataclass(frozen=True)
class RobustnessParams:
    method: str = param("pgd", help="An attack with a budget (see `featvis attacks`): pgd, fgsm, mifgsm or ascent.",
                        metavar="ATTACK")
    eps: tuple[float, ...] = param(tuple(e / 255 for e in (1, 2, 3, 4, 6, 8)), help="Budgets, comma-separated, in "
                                   "[0, 1] units or 8-bit levels.", metavar="BUDGETS")
    norm: str = param("linf", help="linf, or l2 for fgsm/pgd (then --eps is an L2 size).", metavar="NORM")
    target: str | int | None = param(None, help="'none' (make the model change its mind), a class, 'random' or "
                                     "'true'.", short="-t", metavar="CLASS")
    options: dict[str, Any] = field(default_factory=dict)
    suite: str | None = param(None, help="'autoattack': robust accuracy under the AutoAttack suite at each budget "
                              "(APGD-CE, APGD-T, FAB-T, Square; judged after 8-bit rounding) instead of one attack's "
                              "curve; labels are the images' own (ImageFolder/CSV) or else the model's predictions.",
                              metavar="SUITE")
    version: str = param("standard", help="The AutoAttack version with --suite autoattack: standard, plus or rand "
                         "(randomized models: gradients averaged over 20 draws).", metavar="VERSION")

    def __post_init__(self) -> None:
        from featvis.adversarial._base import check_budgeted

        target = _target(self.target)
        if self.suite is not None:
            self._check_suite(target)
            return
        name, target, opts = check_attack(self.method, target, self.options)
        if "eps" in opts:
            raise FeatvisError("give the budgets with eps=[...] (CLI: --eps 1/255,2/255,...), not as an attack option")
        grid = self._grid()
        check_budgeted(name, self.norm)
        object.__setattr__(self, "method", name)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "eps", grid)

    def _grid(self) -> tuple[float, ...]:
        from featvis._registry import parse_budget

        grid = tuple(sorted({parse_budget(e) for e in self.eps}))
        if not grid or any(not math.isfinite(e) for e in grid):
            raise FeatvisError(f"eps must be positive finite budgets, got {list(self.eps)}")
        if self.norm not in ("linf", "l2"):
            raise FeatvisError(f"unknown norm {self.norm!r}; use 'linf' or 'l2'")
        if self.norm == "linf" and grid[-1] > 1:
            raise FeatvisError(f"budget {grid[-1]:g} is more than the whole pixel range [0, 1]; write 8/255 for 8 "
                               "levels")
        return grid

    def _check_suite(self, target) -> None:
        from featvis.adversarial.autoattack import VERSIONS

        suite = str(self.suite).strip().lower()
        if suite not in SUITES:
            raise FeatvisError(f"unknown suite {self.suite!r}; use {', '.join(SUITES)} (or no --suite for one attack)")
        if self.version not in VERSIONS:
            raise FeatvisError(f"unknown AutoAttack version {self.version!r}; use one of {', '.join(VERSIONS)}")
        if target is not None:
            raise FeatvisError("the autoattack suite is untargeted (an image is broken when its prediction leaves "
                               "its label); drop --target")
        opts = {k.replace("-", "_"): v for k, v in self.options.items()}
        bad = sorted(set(opts) - set(SUITE_OPTIONS))
        if bad:
            raise FeatvisError(f"the autoattack suite takes {', '.join(SUITE_OPTIONS)} as options, not {bad[0]!r}")
        if "steps" in opts:
            opts["steps"] = int(opts["steps"])
            if opts["steps"] < 1:
                raise FeatvisError(f"steps={opts['steps']} must be at least 1")
        object.__setattr__(self, "suite", suite)
        object.__setattr__(self, "method", suite)
        object.__setattr__(self, "target", None)
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "eps", self._grid())


@register
class RobustnessTask(ClassTarget, Task):
    """How small a change fools the model: the share fooled at each budget and each image's smallest budget."""

    name = "robustness"
    title = "Robustness"
    Params = RobustnessParams

    TARGET_WORDS = ("true", "random")

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis import _progress
        from featvis.adversarial import robustness
        from featvis.images import encode_png

        p = self.params
        if p.suite is not None:
            return _suite_run(clf, batch, p)
        res = robustness(clf, batch.images, attack_targets(p.target, batch), eps=list(p.eps), method=p.method,
                         norm=p.norm, seed=batch.seeds,
                         callback=lambda i, left: _progress.update("budgets", i, len(p.eps)), **p.options)
        outputs = []
        for i, (item, rec) in enumerate(zip(batch.items, res.records(), strict=True)):
            arts = {}
            if rec["fooled"]:
                rec["fooled_png"] = f"fooled/{item.key}.png"
                arts[rec["fooled_png"]] = encode_png(res.images[i])
            outputs.append(Output(rec, arts))
        return outputs

    def _curve(self, records: list[dict]) -> dict[str, Any]:
        from featvis.adversarial.robustness import fooled_rates

        grid = list(self.params.eps)
        return {"eps": grid, "norm": self.params.norm, "fooled_rate": fooled_rates([r["min_eps"] for r in records],
                                                                                  grid)}

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        from featvis.adversarial.robustness import median_budget

        if self.params.suite is not None:
            return _suite_summary(records, list(self.params.eps), self.params.norm, info.get("labels"))
        curve = self._curve(records)
        out = {"images": len(records), "curve": curve,
               "fooled_rate_max_eps": curve["fooled_rate"][-1] if records else 0.0,
               "median_min_eps": median_budget(r["min_eps"] for r in records), "figure": "curve.png"}
        if any(r.get("label") is not None for r in records):
            labels = info.get("labels")
            known = [r for r in records if r.get("label") is not None]
            groups: dict[int, list[dict]] = {}
            for r in known:
                groups.setdefault(int(r["label"]), []).append(r)
            out["per_class"] = [{"class": c, "name": labels[c] if labels is not None else str(c),
                                 "images": len(rs), "curve": self._curve(rs)["fooled_rate"],
                                 "median_min_eps": median_budget(r["min_eps"] for r in rs)}
                                for c, rs in sorted(groups.items())]
        return out

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        from featvis.figures import figure_png, robustness_curve

        name = f"{self.params.method} on {info.get('model', '?').split('@')[0]}"
        fields = SUITE_FIELDS if self.params.suite is not None else ROBUSTNESS_FIELDS
        return {"curve.png": figure_png(robustness_curve({name: summary["curve"]}), dpi=110),
                "results.csv": _csv(records, fields)}

    @classmethod
    def section(cls, run) -> Section:
        summ, p = run.summary, run.params
        if p.get("suite"):
            return _suite_section(run)
        curve = summ["curve"]
        linf = curve["norm"] == "linf"
        target = p.get("target")
        goal = "change its prediction" if target is None else ("predict a random class" if target == "random" else
                                                               f"predict the target ({target})")
        s = Section(f"Robustness: {p.get('method')} ({curve['norm']}), how small a change fools it",
                    f"The {p.get('method')} attack run at growing budgets ε; an image counts as fooled at ε when an "
                    f"image within ε of it, saved as 8-bit PNG, makes the model {goal}. The curve is the share of "
                    "images fooled at each budget" + (" (ε in 8-bit levels: 1/255 is the smallest possible change)."
                                                      if linf else " (L2 size of the change in [0, 1] units)."))
        s.figures.append(("curve.png", "images fooled against the budget"))
        scale, unit = (255, "/255") if linf else (1, "")
        s.tables.append(Table("share fooled", ["budget ε", "images fooled"],
                              [[f"{e * scale:.3g}{unit}", f"{r:.0%}"] for e, r in
                               zip(curve["eps"], curve["fooled_rate"], strict=True)]))
        s.tables.append(Table("per image", ["image", "was", "target", "now", "smallest fooling ε"],
                              [[item_name(r), r["original_name"], r["target_name"] or "(untargeted)",
                                r["predicted_name"], f"{r['min_eps'] * scale:.3g}{unit}" if r["fooled"] else
                                "not fooled"] for r in run.items]))
        if summ.get("per_class"):
            s.tables.append(Table("per class", ["class", "images", *(f"{e * scale:.3g}{unit}" for e in curve["eps"])],
                                  [[c["name"], c["images"], *(f"{v:.0%}" for v in c["curve"])]
                                   for c in summ["per_class"]]))
        return s


# --- the AutoAttack suite ----------------------------------------------------------------------------------------

def _suite_run(clf, batch: Batch, p: RobustnessParams) -> list[Output]:
    """AutoAttack at each budget, ascending, on the images still robust (an image broken at ε is broken at every
    larger ε: its image lies in their balls too); labels are the items' own when every one has one."""
    import torch

    from featvis import _progress
    from featvis.adversarial.autoattack import CLEAN, autoattack
    from featvis.images import encode_png

    b = len(batch)
    labels = batch.labels if all(lab is not None for lab in batch.labels) else None
    seeds = batch.seeds
    broken = [[None] * len(p.eps) for _ in range(b)]  # per image, per budget: the breaking attack or None
    min_eps: list[float | None] = [None] * b
    best, predicted = batch.images.clone(), [None] * b
    pending = torch.arange(b)
    used = clean = None
    for k, e in enumerate(p.eps):
        if len(pending) == 0:
            break
        sub = None if used is None else used[pending]
        res = autoattack(clf, batch.images[pending], labels if used is None else sub, eps=e, norm=p.norm,
                         version=p.version, seed=[seeds[int(i)] for i in pending], **p.options)
        if used is None:
            used, clean = res.labels_used.cpu(), res.clean_predicted.cpu()
            predicted = clean.tolist()
        for j, i in enumerate(pending.tolist()):
            if not bool(res.robust[j]):
                how = res.broken_by[j]
                for kk in range(k, len(p.eps)):
                    broken[i][kk] = how
                min_eps[i] = 0.0 if how == CLEAN else e
                best[i], predicted[i] = res.images[j].to(best.device), int(res.predicted[j])
        pending = pending[res.robust.cpu()]
        _progress.update("budgets", k + 1, len(p.eps))
    outputs = []
    for i, item in enumerate(batch.items):
        m, y = min_eps[i], int(used[i])
        rec = {"method": "autoattack", "suite": "autoattack", "version": p.version, "norm": p.norm,
               "label_used": y, "label_name": clf.labels[y], "clean_predicted": int(clean[i]),
               "clean_correct": int(clean[i]) == y, "fooled": m is not None, "min_eps": m,
               "min_eps_255": None if m is None else round(m * 255, 3), "broken_by_per_eps": broken[i],
               "broken_by": next((x for x in broken[i] if x is not None), None),
               "robust_per_eps": [x is None for x in broken[i]],
               "predicted": predicted[i], "predicted_name": clf.labels[predicted[i]]}
        arts = {}
        if m is not None and m > 0:
            rec["fooled_png"] = f"fooled/{item.key}.png"
            arts[rec["fooled_png"]] = encode_png(best[i])
        outputs.append(Output(rec, arts))
    return outputs


def _accuracy(values: list[bool]) -> dict[str, Any]:
    import torch

    from featvis._stats import bootstrap_interval

    if not values:
        return {"value": None, "interval": [None, None]}
    lo, hi = bootstrap_interval(torch.tensor(values, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    return {"value": sum(values) / len(values), "interval": [lo, hi]}


def _suite_summary(records: list[dict], grid: list[float], norm: str, labels) -> dict[str, Any]:
    from featvis.adversarial.robustness import fooled_rates

    def per_eps(rs: list[dict]) -> list[dict[str, Any]]:
        out = []
        for k, e in enumerate(grid):
            acc = _accuracy([bool(r["robust_per_eps"][k]) for r in rs])
            counts: dict[str, int] = {}
            for r in rs:
                how = r["broken_by_per_eps"][k]
                if how is not None:
                    counts[how] = counts.get(how, 0) + 1
            out.append({"eps": e, "robust_accuracy": acc["value"], "interval": acc["interval"], "broken_by": counts})
        return out

    curve = {"eps": grid, "norm": norm, "fooled_rate": fooled_rates([r["min_eps"] for r in records], grid)}
    clean = _accuracy([bool(r["clean_correct"]) for r in records])
    out = {"images": len(records), "suite": "autoattack", "curve": curve, "clean_accuracy": clean["value"],
           "clean_interval": clean["interval"], "robust": per_eps(records), "figure": "curve.png",
           "labelled": any(r.get("label") is not None for r in records)}
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(int(r["label_used"]), []).append(r)
    if out["labelled"]:
        out["per_class"] = [{"class": c, "name": labels[c] if labels is not None else str(c), "images": len(rs),
                             "clean_accuracy": _accuracy([bool(r["clean_correct"]) for r in rs])["value"],
                             "robust_accuracy": [x["robust_accuracy"] for x in per_eps(rs)]}
                            for c, rs in sorted(groups.items())]
    return out


def _suite_section(run) -> Section:
    summ, p = run.summary, run.params
    linf = p.get("norm", "linf") == "linf"
    scale, unit = (255, "/255") if linf else (1, "")
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    labelled = summ.get("labelled")
    s = Section(f"Robustness: AutoAttack ({p.get('version', 'standard')}, {p.get('norm', 'linf')})",
                "The AutoAttack suite (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T and Square in the standard version) "
                "at each budget ε, each attack run only on the images every earlier one left robust. An image is "
                "robust at ε when no image within ε of it, saved as 8-bit PNG, moves the model's prediction off "
                + ("its label" if labelled else "its own prediction on the original (no labels were given)")
                + ". Intervals are 95 % bootstrap intervals over the images; attacks not registered are skipped.")
    s.figures.append(("curve.png", "images broken against the budget"))
    s.tables.append(Table("robust accuracy", ["budget ε", "robust accuracy", "95 % interval", "broken by"],
                          [["clean", pct(summ.get("clean_accuracy")),
                            "–".join(pct(v) for v in summ.get("clean_interval", [])), ""]]
                          + [[f"{r['eps'] * scale:.3g}{unit}", pct(r["robust_accuracy"]),
                              "–".join(pct(v) for v in r["interval"]),
                              ", ".join(f"{k} {v}" for k, v in r["broken_by"].items())] for r in summ["robust"]]))
    s.tables.append(Table("per image", ["image", "label", "clean prediction", "broken by", "smallest breaking ε"],
                          [[item_name(r), r["label_name"], "correct" if r["clean_correct"] else "wrong",
                            r["broken_by"] or "robust", "-" if r["min_eps"] is None else
                            f"{r['min_eps'] * scale:.3g}{unit}"] for r in run.items]))
    if summ.get("per_class"):
        s.tables.append(Table("per class", ["class", "images", "clean", *(f"{e * scale:.3g}{unit}"
                                                                          for e in summ["curve"]["eps"])],
                              [[c["name"], c["images"], pct(c["clean_accuracy"]), *(pct(v) for v in
                                                                                   c["robust_accuracy"])]
                               for c in summ["per_class"]]))
    return s
