"""The evaluate task: which explanation to trust for this model, measured over a data set.

Every method's maps are scored by every metric (featvis.attribution.evaluation) per image, batched; the summary is
a leaderboard with bootstrap 95 % intervals, the random-map baseline next to each metric, and a flag on every
method that does not beat random beyond the interval (a paired bootstrap of the per-image difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featvis.attribution.evaluation import applicable_methods, split_options
from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, ClassTarget, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.saliency import batch_targets

CURVE_POINTS = 33  # deletion/insertion curves are stored resampled to this many points (the AUCs are exact)
EXAMPLES = 4  # images in the example-maps strip of the report


@dataclass(frozen=True)
class EvaluateParams:
    methods: tuple[str, ...] | str = param("all", help="Method name(s), comma-separated, or all (every method that "
                                           "applies to the model).", flag="--method", metavar="NAMES",
                                           words=("all",))
    metrics: tuple[str, ...] | str = param("default", help="default (every metric but the expensive randomization "
                                           "check), all, or names (see `featvis metrics`).", flag="--metric",
                                           metavar="NAMES", words=("default", "all"))
    target: str | int | None = param(None, help="Class index or name, 'true' (each image's label), or leave it out for "
                                            "the predicted class.", short="-t", metavar="CLASS")
    options: dict[str, Any] = field(default_factory=dict)
    examples: int = param(EXAMPLES, help="Images in the report's example-maps strip.", low=0, high=16, metavar="N")

    def __post_init__(self) -> None:
        from featvis.attribution import ATTRIBUTIONS
        from featvis.attribution.metric import METRICS, default_metrics

        if isinstance(self.methods, str) and self.methods != "all":
            object.__setattr__(self, "methods", tuple(m for m in self.methods.split(",") if m.strip()))
        if self.methods != "all":
            object.__setattr__(self, "methods", tuple(dict.fromkeys(ATTRIBUTIONS.canonical(m) for m in self.methods)))
            if not self.methods:
                raise FeatvisError("name at least one method, or 'all'")
        metrics = self.metrics
        if isinstance(metrics, str):
            metrics = {"default": default_metrics(), "all": tuple(METRICS.names())}.get(metrics, metrics.split(","))
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(METRICS.canonical(m) for m in metrics)))
        if self.methods != "all":
            split_options(self.methods, self.options)  # checked now; the run splits them again
        if not 0 <= self.examples <= 16:
            raise FeatvisError(f"examples must be 0..16 images, got {self.examples}")


@register
class EvaluateTask(ClassTarget, Task):
    """Faithfulness, robustness and complexity of attribution methods over a data set, against a random map."""

    name = "evaluate"
    title = "Which explanation to trust"
    Params = EvaluateParams

    def methods(self, clf=None) -> tuple[str, ...]:
        return applicable_methods(clf) if self.params.methods == "all" else tuple(self.params.methods)

    def prepare(self, clf) -> None:
        super().prepare(clf)
        split_options(self.methods(clf), self.params.options)

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.attribution.evaluation import evaluate_batch

        methods = self.methods(clf)
        per_method, per_group = split_options(methods, self.params.options)
        targets = batch_targets(clf, batch.images, self.params.target, batch.labels)
        records = evaluate_batch(clf, batch.images, targets, methods, self.params.metrics, seed=batch.seeds,
                                 method_options=per_method, metric_options=per_group)
        outputs = []
        for item, rec in zip(batch.items, records, strict=True):
            rec.pop("index", None)
            rec["target_name"] = clf.labels[rec["target"]]
            rec["curves"] = {m: {k: _resample(v) for k, v in c.items()} for m, c in rec.get("curves", {}).items()}
            if item.label is not None:
                rec["true_class"] = item.label
            outputs.append(Output(rec))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        from featvis.attribution.leaderboard import summarize

        board = summarize(records).to_dict()
        table = {}
        for e in board["entries"]:
            table.setdefault(e["method"], {})[e["metric"]] = e
        seconds = {m: _mean([sum(v for v in r["seconds"][m].values()) for r in records if m in r["seconds"]])
                   for m in board["methods"]}
        return {"images": len(records), "methods": board["methods"], "metrics": board["metrics"],
                "leaderboard": board, "table": table, "seconds_per_image": seconds,
                "not_beating_random": [[e["method"], e["metric"]] for e in board["entries"]
                                       if e["beats_random"] is False],
                }

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        from featvis.figures import evaluation_curves, figure_png

        out = {}
        if any(r.get("curves") for r in records):
            out["curves.png"] = figure_png(evaluation_curves(records), dpi=110)
        clf = info.get("clf")
        if clf is not None and self.params.examples and records:
            out["examples.png"] = self._examples(clf, records[: self.params.examples])
        return out

    def _examples(self, clf, records: list[dict]) -> bytes:
        """The maps of every method on the first images (recomputed with each image's own seed)."""
        import torch

        from featvis.attribution import ATTRIBUTIONS
        from featvis.figures import figure_png, method_strip
        from featvis.images import load_image

        methods = self.methods(clf)
        per_method, _ = split_options(methods, self.params.options)
        x = torch.cat([load_image(r["input"], clf) for r in records])
        targets = torch.tensor([r["target"] for r in records], device=x.device)
        seeds = [r["seed"] for r in records]
        maps = {}
        for m in methods:
            spec = ATTRIBUTIONS.get(m)
            opts = dict(per_method.get(m, {}))
            if "seed" in spec.options:
                opts["seed"] = seeds
            maps[m] = spec(clf, x, targets, **opts)
        titles = [f"{item_name(r)}\n{r['target_name']}" for r in records]
        return figure_png(method_strip(x, maps, titles), dpi=100)

    @classmethod
    def section(cls, run) -> Section:
        from featvis.attribution.metric import METRICS

        summ = run.summary
        metrics = [m for m in summ["metrics"] if m != "seconds"]
        methods = summ["methods"]
        table = summ["table"]
        s = Section(f"Which explanation to trust: {len(methods) - 1} methods × {len(metrics)} metrics over "
                    f"{summ['images']} images",
                    "Each method's maps scored per image, with the mean and a bootstrap 95 % interval over images. "
                    "<b>↑</b> higher is better, <b>↓</b> lower; <b>★</b> marks the best method of a column; "
                    "<b>✗</b> marks a method that does not beat the uniform-random map beyond the interval (a "
                    "paired bootstrap of the per-image difference). Deletion/insertion follow RISE; ROAD removes "
                    "pixels with noisy linear imputation; max-sensitivity and infidelity are Yeh et al.'s; "
                    "sparseness is the Gini index; eMPRT the efficient model-randomization test.")
        best = {}
        for m in metrics:
            info = METRICS.get(m)
            vals = {k: table[k][m]["mean"] for k in methods if k != "random" and m in table.get(k, {})}
            if vals and info.higher_is_better is not None:
                best[m] = (max if info.higher_is_better else min)(vals, key=vals.get)
        arrows = {m: ("↑" if METRICS.get(m).higher_is_better else "↓") for m in metrics}
        rows = []
        for k in methods:
            row = [k]
            for m in metrics:
                e = table.get(k, {}).get(m)
                if e is None:
                    row.append("–")
                    continue
                mark = (" ★" if best.get(m) == k else "") + (" ✗" if e["beats_random"] is False else "")
                row.append(f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]{mark}")
            row.append(summ["seconds_per_image"].get(k))
            rows.append(row)
        s.tables.append(Table(LEADERBOARD_CAPTION, ["method", *(f"{m} {arrows[m]}" for m in metrics),
                                                                     "s / image"], rows))
        if summ.get("not_beating_random"):
            s.tables.append(Table("methods that do not beat the random map", ["method", "metric"],
                                  summ["not_beating_random"]))
        if "curves.png" in run.artifacts:
            s.figures.append(("curves.png", "deletion and insertion curves: mean over images with a 95 % band"))
        if "examples.png" in run.artifacts:
            s.figures.append(("examples.png", "example maps of every method on the first images"))
        return s


# The caption is the table's legend, in the terminal as in the report (the terminal had ✗ and ★ unexplained)
LEADERBOARD_CAPTION = ("leaderboard: mean [95 % interval] over images; ↑ higher is better, ↓ lower; ★ best of the "
                       "column; ✗ does not beat the random map")


def _resample(values: list[float], n: int = CURVE_POINTS) -> list[float]:
    if len(values) <= n:
        return [float(v) for v in values]
    x = np.linspace(0, 1, len(values))
    return [round(float(v), 6) for v in np.interp(np.linspace(0, 1, n), x, np.asarray(values, dtype=float))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
