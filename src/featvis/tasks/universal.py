"""The universal task: how well one fitted universal perturbation fools held-out images (and a random one of the
same size, the baseline), per image and per true class, with the lab's panels for a few of them.

The fit itself (`featvis.tasks.universal_fit.run_universal`) is sequential — every batch updates the one
perturbation — and runs in the driver, checkpointed into the run folder. This task is the part that distributes:
each held-out batch is independent given v, so it runs through the runner on any executor (`--executor ray`). The
task carries the fitted v with its parameters (sent to workers with it); the manifest records v's SHA-256, so a
resumed evaluation is of the same v.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.classify import per_class

FIT = "fit"  # the fit's folder inside the run folder: checkpoint.pt while it runs, fit.json when done
FIT_SUMMARY = f"{FIT}/fit.json"
CSV_FIELDS = ["input", "label", "original_class", "original_name", "predicted", "predicted_name", "fooled",
              "random_predicted", "random_name", "random_fooled", "original_prob_before", "original_prob_after",
              "linf_255", "l2", "psnr_db"]


@dataclass(frozen=True)
class UniversalParams:
    method: str = param("sgd", help="The fit: sgd (batched gradient ascent, Shafahi et al. 2020; fast) or deepfool "
                        "(the paper's Algorithm 1, Moosavi-Dezfooli et al. 2017).", metavar="FIT")
    eps: float | str = param("10/255", help="Budget ξ in [0, 1] units or 8-bit levels (10/255, the paper's L∞; "
                             "L2: e.g. 2000/255).", metavar="BUDGET")
    norm: str = param("linf", help="linf or l2.", metavar="NORM")
    epochs: int = param(10, help="Most passes over the training images.", low=1, high=10_000, metavar="N")
    target_rate: float = param(0.8, help="Stop the fit once this share of the training images is fooled (the "
                               "paper's 1 - delta).", low=0.0, high=1.0, metavar="RATE")
    holdout: float = param(0.3, help="Share of the images held out of the fit (seeded by --seed and each image's "
                           "identity); their fooling rate is the reported number.", low=0.0, high=0.95,
                           metavar="SHARE")
    fit_batch: int = param(16, help="Images per fit step (deepfool: 1 is the paper's exact sequence).", low=1,
                           high=4096, metavar="N")
    step: float | None = param(None, help="sgd's step (default: eps/8 for L∞, eps/10 for L2).", low=0.0,
                               metavar="X", show_default=False)
    panels: int = param(4, help="Held-out images drawn as the lab's four panels.", low=0, high=64, metavar="N")

    def __post_init__(self) -> None:
        from featvis._registry import parse_budget
        from featvis.adversarial.universal import METHODS

        if self.method not in METHODS:
            raise FeatvisError(f"unknown universal fit {self.method!r}; use {' or '.join(METHODS)}")
        norm = str(self.norm).lower().replace("-", "")
        if norm not in ("linf", "l2"):
            raise FeatvisError(f"unknown norm {self.norm!r}; use 'linf' or 'l2'")
        eps = parse_budget(self.eps)
        if not math.isfinite(eps) or (norm == "linf" and eps > 1):
            raise FeatvisError(f"eps {eps:g} is not a budget inside the pixel range; write 10/255 for 10 levels")
        if not 0 < self.target_rate <= 1:
            raise FeatvisError(f"target_rate must be in (0, 1], got {self.target_rate}")
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "eps", eps)


def _restore(cls, params, perturbation, panel_keys, seed):
    return cls(params, perturbation=perturbation, panel_keys=panel_keys, seed=seed)


@register
class UniversalTask(Task):
    """A universal perturbation's fooling rate on held-out images, against a random perturbation of the same size."""

    name = "universal"
    title = "Universal perturbation"
    Params = UniversalParams
    default_batch = 16

    def __init__(self, params: Any = None, /, *, perturbation: torch.Tensor | None = None,
                 panel_keys: tuple[str, ...] = (), seed: int = 0, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.perturbation = None if perturbation is None else perturbation.detach().cpu().float()
        self.panel_keys, self.seed = tuple(panel_keys), int(seed)

    def __reduce__(self):  # the fitted v travels with the parameters (a Ray worker needs it)
        return (_restore, (type(self), self.params, self.perturbation, self.panel_keys, self.seed))

    def param_dict(self) -> dict[str, Any]:
        v = self.perturbation
        sha = None if v is None else hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
        return super().param_dict() | {"perturbation_sha256": sha, "panel_keys": list(self.panel_keys),
                                       "baseline_seed": self.seed}

    def prepare(self, clf) -> None:
        v = self.perturbation
        if v is None:
            raise FeatvisError("the universal task evaluates a fitted perturbation: run it through run_universal "
                               "(CLI: featvis universal), or give perturbation=")
        if tuple(v.shape) != (3, clf.input_size, clf.input_size):
            raise FeatvisError(f"the perturbation is {tuple(v.shape)} but the model takes 3×{clf.input_size}×"
                               f"{clf.input_size} images; fit it with this model")

    def baseline(self) -> torch.Tensor:
        from featvis.adversarial.universal import random_perturbation

        return random_perturbation(self.perturbation.shape, self.params.eps, self.params.norm, seed=self.seed)

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.adversarial.result import FoolingResult
        from featvis.adversarial.universal import apply
        from featvis.figures import figure_png, fooling_panels
        from featvis.images import encode_png
        from featvis.models.classifier import frozen

        x = batch.images
        v = self.perturbation.to(x.device, x.dtype)
        with torch.no_grad(), frozen(clf):
            p_before = clf(x).softmax(-1)
            adv = apply(x, v)
            p_after = clf(adv).softmax(-1)
            random_pred = clf(apply(x, self.baseline())).argmax(-1)
        clean, pred = p_before.argmax(-1), p_after.argmax(-1)
        idx = clean[:, None]
        res = FoolingResult("universal", adv, x, None, clean, pred, pred != clean,
                            torch.zeros(len(x), dtype=torch.long), p_before.gather(1, idx)[:, 0],
                            p_after.gather(1, idx)[:, 0], None, None, labels=clf.labels,
                            params={"eps": self.params.eps, "norm": self.params.norm})
        outputs = []
        for i, (item, row) in enumerate(zip(batch.items, res.records(), strict=True)):
            rec = {k: row[k] for k in ("original_class", "original_name", "predicted", "predicted_name",
                                       "original_prob_before", "original_prob_after", "l2", "linf_255", "psnr_db")}
            rec |= {"fooled": row["success"], "random_predicted": int(random_pred[i]),
                    "random_name": clf.labels[int(random_pred[i])], "random_fooled": bool(random_pred[i] != clean[i])}
            arts = {}
            if item.key in self.panel_keys:
                rec |= {"perturbed_png": f"perturbed/{item.key}.png", "figure": f"figures/{item.key}.png"}
                arts = {rec["perturbed_png"]: encode_png(adv[i]),
                        rec["figure"]: figure_png(fooling_panels(res.select(i)), dpi=110)}
            outputs.append(Output(rec, arts))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        n = len(records)
        out: dict[str, Any] = {
            "images": n, "eps": self.params.eps, "norm": self.params.norm, "method": self.params.method,
            "fooling_rate": sum(r["fooled"] for r in records) / n if n else 0.0,
            "random_fooling_rate": sum(r["random_fooled"] for r in records) / n if n else 0.0,
            "perturbation": "perturbation.png", "perturbation_npy": "perturbation.npy"}
        v = self.perturbation
        out |= {"linf_255": round(float(v.abs().max()) * 255, 3), "l2": float(v.norm())}
        try:
            fit = json.loads(info["read"](FIT_SUMMARY)) if "read" in info else {}
        except (FeatvisError, ValueError):  # no fit summary (a perturbation given by hand): the held-out numbers stand
            fit = {}
        out["fit"] = fit
        if any(r.get("label") is not None for r in records):
            labels = info.get("labels")
            rand = {c["class"]: c["mean"] for c in per_class(records, labels, lambda r: float(r["random_fooled"]))}
            out["per_class"] = [c | {"random": rand.get(c["class"])}
                                for c in per_class(records, labels, lambda r: float(r["fooled"]))]
        return out

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        import numpy as np

        from featvis.images import encode_png

        v, p = self.perturbation, self.params
        top = p.eps if p.norm == "linf" else max(float(v.abs().max()), 1e-12)
        buf = io.BytesIO()
        np.save(buf, v.numpy().astype(np.float32), allow_pickle=False)
        return {"perturbation.png": encode_png((0.5 + v / (2 * top)).clamp(0, 1)), "perturbation.npy": buf.getvalue(),
                "results.csv": _csv(records, CSV_FIELDS)}

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        return {"panels.png": record["figure"]} if record.get("figure") else {}

    @classmethod
    def section(cls, run) -> Section:
        s, fit = run.summary, run.summary.get("fit", {})
        budget = f"L∞ ξ = {s['eps'] * 255:.3g}/255" if s.get("norm") == "linf" else f"L2 ξ = {s.get('eps', 0):.4g}"
        how = {"deepfool": "DeepFool at x+v for each training image it does not fool yet, then projection onto the "
                           "ball (Moosavi-Dezfooli et al., CVPR 2017, Algorithm 1)",
               "sgd": "signed gradient steps on the training batches' cross-entropy, then projection (Shafahi et "
                      "al. 2020)"}.get(s.get("method"), str(s.get("method")))
        sec = Section(f"Universal perturbation: {s.get('method')}, {budget}",
                      f"One perturbation v, added to every image, fitted by {how} on {fit.get('images', '?')} "
                      f"training images and measured on {s.get('images')} held-out images the fit never saw. An "
                      "image counts as fooled when the model's prediction on the saved 8-bit image x+v differs from "
                      "its prediction on x. The baseline is a random perturbation of the same size (random signs "
                      "±ξ for L∞). The first figure is v itself, mid-grey plus v stretched until ±ξ is black or "
                      "white; the panels show held-out images: original, perturbed, the difference scaled per "
                      "image, and ×10.")
        sec.figures.append((s.get("perturbation", "perturbation.png"), "the universal perturbation, magnified"))
        for r in run.items:
            if r.get("figure"):
                sec.figures.append((r["figure"], f"{item_name(r)}: {r['original_name']} → {r['predicted_name']}"))
        sec.tables.append(Table("held-out fooling rate", [
            "held-out images", "fooling rate", "random perturbation", "training images", "training fooling rate",
            "passes", "fit seconds", "L∞ /255", "L2"], [[
                s.get("images"), s.get("fooling_rate"), s.get("random_fooling_rate"), fit.get("images"),
                fit.get("fooling_rate"), len(fit.get("history", [])), fit.get("seconds"), s.get("linf_255"),
                s.get("l2")]]))
        if s.get("per_class"):
            sec.tables.append(Table("fooling rate per true class", ["class", "images", "fooled", "random"],
                                    [[c["name"], c["images"], c["mean"], c["random"]] for c in s["per_class"]]))
        sec.tables.append(Table("held-out images", ["image", "was", "now", "fooled", "random: now"],
                                [[item_name(r), r["original_name"], r["predicted_name"], r["fooled"],
                                  r["random_name"]] for r in run.items]))
        return sec


def _csv(records: list[dict], fields: list[str]) -> bytes:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode("utf-8")
