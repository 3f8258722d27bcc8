"""The classify task: each image's top-k classes; with labels, accuracy, per-class accuracy and the mistakes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, Output, Section, Table, Task, register, short_name


@dataclass(frozen=True)
class ClassifyParams:
    top_k: int = 5

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise FeatvisError(f"top_k must be at least 1, got {self.top_k}")


def per_class(records: list[dict], labels, value) -> list[dict[str, Any]]:
    """Per true class: how many images and the mean of `value(record)` (records without a label are left out)."""
    groups: dict[int, list[float]] = {}
    for r in records:
        if r.get("label") is not None:
            v = value(r)
            if v is not None:
                groups.setdefault(int(r["label"]), []).append(float(v))
    return [{"class": c, "name": labels[c] if labels is not None else str(c), "images": len(v),
             "mean": sum(v) / len(v)} for c, v in sorted(groups.items())]


def accuracy_summary(records: list[dict], labels, correct_key: str = "correct") -> dict[str, Any]:
    """Accuracy over the labelled records, per class, and the images the model gets wrong."""
    known = [r for r in records if r.get("label") is not None and r.get(correct_key) is not None]
    if not known:
        return {}
    return {"labelled": len(known), "accuracy": sum(bool(r[correct_key]) for r in known) / len(known),
            "per_class_accuracy": per_class(known, labels, lambda r: float(bool(r[correct_key]))),
            "wrong": [{"key": r["key"], "input": r["input"], "label": r["label"],
                       "predicted": r.get("predicted")} for r in known if not r[correct_key]][:200]}


def add_accuracy(section: Section, summary: Mapping[str, Any]) -> None:
    """Accuracy, per-class accuracy and the images the model gets wrong, when the inputs had labels."""
    if "accuracy" not in summary:
        return
    section.tables.append(Table("accuracy on the labelled images", ["images", "top-1 accuracy", "wrong"],
                                [[summary["labelled"], summary["accuracy"], len(summary.get("wrong", []))]]))
    section.tables.append(Table("accuracy per true class", ["class", "images", "top-1 accuracy"],
                                [[c["name"], c["images"], c["mean"]] for c in summary["per_class_accuracy"]]))
    if summary.get("wrong"):
        section.tables.append(Table("images the model gets wrong", ["image", "true class", "predicted"],
                                    [[short_name(w["input"]), w["label"], w["predicted"]] for w in
                                     summary["wrong"]]))


@register
class ClassifyTask(Task):
    """Top-k classes per image."""

    name = "classify"
    title = "Classification"
    Params = ClassifyParams
    default_batch = 16

    def run(self, clf, batch: Batch) -> list[Output]:
        k = self.params.top_k
        outputs = []
        for item, top in zip(batch.items, clf.predict(batch.images, k=k), strict=True):
            rec: dict[str, Any] = {"predictions": [{"index": p.index, "name": p.name, "prob": round(p.prob, 6)}
                                                   for p in top],
                                   "predicted": top[0].index}
            if item.label is not None:
                rec["correct"] = top[0].index == item.label
                rec["in_top_k"] = any(p.index == item.label for p in top)
            outputs.append(Output(rec))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"images": len(records)}
        acc = accuracy_summary(records, info.get("labels"))
        if acc:
            known = [r for r in records if r.get("label") is not None]
            acc["top_k_accuracy"] = sum(bool(r.get("in_top_k")) for r in known) / len(known)
        return out | acc

    @classmethod
    def section(cls, run) -> Section:
        k = max((len(r.get("predictions", [])) for r in run.items), default=0)
        s = Section("Classification", "The model's most likely ImageNet classes for each photo, with softmax "
                    "probabilities. Everything below explains, fools or visualizes this same model.")
        rows = [[short_name(r.get("input")), *(f"{p['name']} ({p['index']}) {p['prob']:.3f}"
                                               for p in r.get("predictions", []))] for r in run.items]
        s.tables.append(Table(f"top-{k} classes per image", ["image", *(f"top-{i + 1}" for i in range(k))], rows))
        summ = run.summary
        if "accuracy" in summ:
            s.tables.append(Table(f"top-{k} accuracy", ["images", "top-1", f"top-{k}"],
                                  [[summ["labelled"], summ["accuracy"], summ.get("top_k_accuracy")]]))
        add_accuracy(s, summ)
        return s
