"""The classify task: each image's top-k classes; with labels, accuracy, per-class accuracy and the mistakes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, Output, Section, Table, Task, item_name, param, register


@dataclass(frozen=True)
class ClassifyParams:
    top_k: int = param(5, help="How many classes per image.", short="-k", low=1)

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
            "wrong": [{"key": r["key"], "input": r["input"], "name": r.get("name"), "label": r["label"],
                       "label_name": _label_name(r["label"], labels), "predicted": r.get("predicted"),
                       "predicted_name": _label_name(r.get("predicted"), labels)}
                      for r in known if not r[correct_key]][:200]}


def _label_name(index: Any, labels) -> str | None:
    if not isinstance(index, int) or labels is None or not 0 <= index < len(labels):
        return None
    return labels[index]


def _true(record: Mapping[str, Any]) -> str:
    """A record's true class for a table: "name (index)", or "-" when the image has none."""
    label = record.get("label")
    if label is None:
        return "-"
    name = record.get("label_name")
    return f"{name} ({label})" if name else str(label)


def add_accuracy(section: Section, summary: Mapping[str, Any], top_k: int | None = None) -> None:
    """Accuracy, per-class accuracy and the images the model gets wrong, when the inputs had labels (`top_k`: add
    the summary's top-k accuracy as a column)."""
    if "accuracy" not in summary:
        return
    k = [f"top-{top_k} accuracy"] if top_k else []
    section.tables.append(Table("accuracy on the labelled images", ["images", "top-1 accuracy", *k, "wrong"],
                                [[summary["labelled"], summary["accuracy"],
                                  *([summary.get("top_k_accuracy")] if top_k else []),
                                  len(summary.get("wrong", []))]]))
    section.tables.append(Table("accuracy per true class", ["class", "images", "top-1 accuracy"],
                                [[c["name"], c["images"], c["mean"]] for c in summary["per_class_accuracy"]]))
    if summary.get("wrong"):
        section.tables.append(Table("images the model gets wrong", ["image", "true class", "predicted"],
                                    [[item_name(w), _true(w), _true({"label": w.get("predicted"),
                                                                      "label_name": w.get("predicted_name")})]
                                     for w in summary["wrong"]]))


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
                rec["label_name"] = clf.labels[item.label]
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
        labelled = any(r.get("label") is not None for r in run.items)
        rows = [[item_name(r), *([_true(r)] if labelled else []),
                 *(f"{p['name']} ({p['index']}) {p['prob']:.3f}" for p in r.get("predictions", []))]
                for r in run.items]
        s.tables.append(Table(f"top-{k} classes per image", ["image", *(["true class"] if labelled else []),
                                                             *(f"top-{i + 1}" for i in range(k))], rows))
        add_accuracy(s, run.summary, top_k=k if k > 1 else None)
        return s

    @classmethod
    def overview(cls, run) -> list[Table]:
        """Every table: with labels, the terminal shows the accuracy, per class, and the mistakes too."""
        return cls.section(run).tables
