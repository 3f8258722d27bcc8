"""The saliency task (maps per method, optional deletion/insertion) and the sanity task (model randomization)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from featvis._io import npy_bytes
from featvis.attribution._base import SCORES  # the one list of scores a method can explain
from featvis.attribution.units import is_unit, parse_unit, unit_classifier
from featvis.errors import FeatvisError, did_you_mean
from featvis.tasks.base import Batch, ClassTarget, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.classify import accuracy_summary, add_accuracy, per_class

# File names of a method's maps: names such as smooth:integrated-gradients hold ':', which Windows and zip archives
# refuse; ':' becomes '~', anything else outside this set '_' (registry names are kebab-case, so this rarely fires).
FILE_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+~")


def file_stems(methods) -> dict[str, str]:
    """Each method's file-name stem (`smooth:gradient` → `smooth~gradient`), unique within the run."""
    out: dict[str, str] = {}
    for name in methods:
        stem = "".join("~" if c == ":" else c if c in FILE_SAFE else "_" for c in name) or "method"
        unique, k = stem, 2
        while unique in out.values():
            unique, k = f"{stem}-{k}", k + 1
        out[name] = unique
    return out


def check_methods(methods, options: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Canonical method names and the options checked against their specs: every option must be taken by at least
    one of the methods (each method gets the options it declares)."""
    from featvis.attribution import ATTRIBUTIONS

    names = (methods,) if isinstance(methods, str) else tuple(methods)
    canon = tuple(dict.fromkeys(ATTRIBUTIONS.canonical(m) for m in names if str(m).strip()))
    if not canon:
        raise FeatvisError("name at least one attribution method (see `featvis methods`)")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        takers = [m for m in canon if name in ATTRIBUTIONS.get(m).options]
        if name == "seed":
            raise FeatvisError("seed is the run's --seed (each image's seed derives from it); not a method option")
        if not takers:
            owners = [m for m in ATTRIBUTIONS.names() if name in ATTRIBUTIONS.get(m).options]
            if owners:
                raise FeatvisError(f"option {key!r} belongs to {', '.join(owners)}, not to {', '.join(canon)}")
            every = sorted({o for m in canon for o in ATTRIBUTIONS.get(m).options})
            raise did_you_mean(f"option for {', '.join(canon)}", key, every or ["(they take no options)"])
        checked[name] = ATTRIBUTIONS.get(takers[0]).options[name].parse(value)
    return canon, checked


def method_options(method: str, options: Mapping[str, Any], seeds: list[int], score: str) -> dict[str, Any]:
    """The keyword arguments one method gets: its own options, the score, and per-image seeds where it draws."""
    from featvis.attribution import ATTRIBUTIONS

    takes = ATTRIBUTIONS.get(method).options
    out = {k: v for k, v in options.items() if k in takes}
    if "score" in takes:
        out["score"] = score
    if "seed" in takes:
        out["seed"] = seeds
    return out


def batch_targets(clf, images: torch.Tensor, target, labels: list[int | None]) -> torch.Tensor:
    """Class indices [B]: None → the predicted class, "true" → each item's label, else one class for all."""
    from featvis.attribution import resolve_targets as resolve

    if isinstance(target, str) and target.strip().lower() == "true":
        if any(lab is None for lab in labels):
            raise FeatvisError("target 'true' needs every image's label (ImageFolder layout or a CSV label column)")
        return torch.tensor(labels, device=images.device, dtype=torch.long)
    return resolve(clf, images, target)


@dataclass(frozen=True)
class SaliencyParams:
    methods: tuple[str, ...] = param(("gradient",), help="Method name(s), comma-separated (see `featvis methods`).",
                                     flag="--method", metavar="NAMES")
    target: str | int | None = param(None, help="Class index or name, 'true' (each image's label), an internal unit "
                                     "(layer:blocks.8:17 a channel, layer:blocks.8:17@7,7 a neuron, "
                                     "layer:blocks.8:dir=v.npy a direction), or leave it out for the predicted "
                                     "class.", short="-t", metavar="CLASS")
    score: str = param("logit", help="What is explained: logit, log-prob or prob.", metavar="SCORE")
    metrics: bool = param(False, help="Deletion/insertion AUC per map (RISE protocol).")
    metric_steps: int | None = param(None, help="Deletion/insertion steps (default: the image side, RISE's protocol).",
                                     low=2, metavar="N")
    shared_scale: bool = param(False, help="One colour scale across methods.")
    overlays: bool = param(False, help="Also write each map as a heatmap PNG and an overlay PNG (the web page shows "
                           "them).", cli=False)
    # A matplotlib figure per image costs ~0.4 s (more than a gradient map): off for data sets of thousands, where the
    # maps (.npy), the records and the summary are what is read.
    figures: bool = param(True, help="A figure per image (~0.4 s each): --no-figures for data sets of thousands (maps, "
                          "records and summary are still written).")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        methods, options = check_methods(self.methods, self.options)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "options", options)
        if self.score not in SCORES:
            raise FeatvisError(f"unknown score {self.score!r}; use one of {', '.join(SCORES)}")
        if self.target is not None and str(self.target).strip().lower() == "predicted":
            object.__setattr__(self, "target", None)
        if is_unit(self.target):
            parse_unit(self.target)  # its spelling is checked here, its layer and channel when the model runs
            if self.score != "logit":
                raise FeatvisError(f"score {self.score!r} needs class probabilities; a unit target (layer:...) is "
                                   "explained by its value: drop --score")
            if self.metrics:
                raise FeatvisError("deletion/insertion curves measure a class probability; drop --metrics for a unit "
                                   "target (layer:...)")
        if self.metric_steps is not None and self.metric_steps < 2:
            raise FeatvisError(f"metric_steps must be at least 2, got {self.metric_steps}")


@register
class SaliencyTask(ClassTarget, Task):
    """Saliency maps of every method for each image, a figure per image, and deletion/insertion on request."""

    name = "saliency"
    title = "Saliency maps"
    Params = SaliencyParams

    def prepare(self, clf) -> None:
        if is_unit(self.params.target):
            unit_classifier(clf, self.params.target)  # an unknown layer fails here, before any image is read
        else:
            super().prepare(clf)

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis import _progress
        from featvis.attribution import ATTRIBUTIONS
        from featvis.attribution.evaluation import GROUPS, RANDOM, Context
        from featvis.attribution.metrics import random_maps
        from featvis.figures import compare_methods, figure_png, overlay, saliency_panels, scale_maps
        from featvis.images import encode_png
        from featvis.models.classifier import frozen

        p = self.params
        x = batch.images
        unit = unit_classifier(clf, p.target) if is_unit(p.target) else None
        targets = batch_targets(clf, x, p.target, batch.labels) if unit is None else None
        with torch.no_grad(), frozen(clf):
            probs = clf(x).softmax(-1)
            values = None if unit is None else unit(x)[:, 0]
        maps, seconds = {}, {}
        for i, name in enumerate(p.methods):
            _progress.update(f"map: {name}", i, len(p.methods))
            t0 = time.perf_counter()
            model, target = (clf, targets) if unit is None else (unit, unit.unit)  # a unit: its classifier, built once
            options = method_options(name, p.options, batch.seeds, p.score)
            maps[name] = ATTRIBUTIONS.get(name)(model, x, target, **options)
            seconds[name] = (time.perf_counter() - t0) / len(batch)
        curves: dict[str, dict[str, torch.Tensor]] = {}  # method → {"deletion": AUC [B], "insertion": AUC [B]}
        if p.metrics:  # evaluate's own deletion/insertion (the "curves" metric group), against its random map
            pps = -(-x.shape[-1] * x.shape[-2] // p.metric_steps) if p.metric_steps else None
            names = [*p.methods, RANDOM]
            group = GROUPS.get("curves")
            for i, name in enumerate(names):
                _progress.update(f"deletion/insertion: {name}", i, len(names))
                m = random_maps(x, batch.seeds) if name == RANDOM else maps[name]
                curves[name] = group(Context(clf, x, targets, m, None, {}, batch.seeds, {"pixels_per_step": pps}))
        outputs = []
        stem = file_stems(p.methods)
        for i, item in enumerate(batch.items):
            pred = int(probs[i].argmax())
            arts = {f"maps/{item.key}/{stem[n]}.npy": npy_bytes(maps[n][i]) for n in p.methods}
            if unit is None:
                t = int(targets[i])
                rec: dict[str, Any] = {"target": t, "target_name": clf.labels[t], "prob": float(probs[i, t])}
                title = f"{clf.labels[t]} ({t}) p={probs[i, t]:.3f}"
            else:  # an internal unit: its value stands where a class's probability would
                rec = {"target": unit.labels[0], "target_name": unit.labels[0], "prob": None,
                       "unit_value": float(values[i])}
                title = f"unit {unit.labels[0]} = {float(values[i]):.3g}"
            rec |= {"predicted": pred, "predicted_name": clf.labels[pred],
                    "maps": {n: f"maps/{item.key}/{stem[n]}.npy" for n in p.methods},
                    "seconds": {n: round(s, 5) for n, s in seconds.items()}}
            if p.figures:
                if len(p.methods) == 1:
                    fig = saliency_panels(x[i:i + 1], maps[p.methods[0]][i:i + 1], [title], method=p.methods[0],
                                          shared_scale=p.shared_scale)
                else:
                    scores = {n: f"del {curves[n]['deletion'][i]:.3f} · ins {curves[n]['insertion'][i]:.3f}"
                              for n in p.methods} if p.metrics else None
                    fig = compare_methods(x[i], {n: maps[n][i] for n in p.methods}, title,
                                          shared_scale=p.shared_scale, scores=scores)
                rec["figure"] = f"figures/{item.key}.png"
                arts[rec["figure"]] = figure_png(fig, dpi=110)
            if item.label is not None:
                rec["correct"] = pred == item.label
            if p.overlays:
                heats = scale_maps([maps[n][i] for n in p.methods], p.shared_scale)
                rec["heatmaps"] = {n: f"heatmaps/{item.key}/{stem[n]}.png" for n in p.methods}
                rec["overlays"] = {n: f"overlays/{item.key}/{stem[n]}.png" for n in p.methods}
                for n, heat in zip(p.methods, heats, strict=True):
                    h = torch.from_numpy(heat)
                    arts[rec["heatmaps"][n]] = encode_png(h[None].expand(3, -1, -1))
                    arts[rec["overlays"][n]] = encode_png(torch.from_numpy(overlay(x[i], heat)).permute(2, 0, 1) / 255)
            if p.metrics:
                rec["deletion_auc"] = {n: float(c["deletion"][i]) for n, c in curves.items()}
                rec["insertion_auc"] = {n: float(c["insertion"][i]) for n, c in curves.items()}
            outputs.append(Output(rec, arts))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        labels = info.get("labels")
        out: dict[str, Any] = {"methods": list(self.params.methods), "images": len(records),
                               "seconds_per_image": {m: _mean(r["seconds"].get(m) for r in records)
                                                     for m in self.params.methods}}
        if self.params.metrics and records:
            names = [*self.params.methods, "random"]
            out["mean_auc"] = {n: {"deletion": _mean(r["deletion_auc"][n] for r in records),
                                   "insertion": _mean(r["insertion_auc"][n] for r in records)} for n in names}
            if any(r.get("label") is not None for r in records):
                out["per_class_auc"] = {n: {"deletion": per_class(records, labels, lambda r, n=n:
                                                                  r["deletion_auc"][n]),
                                            "insertion": per_class(records, labels, lambda r, n=n:
                                                                   r["insertion_auc"][n])} for n in names}
        return out | accuracy_summary(records, labels)

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        """The figure, and the first method's overlay and heat map (when drawn)."""
        out = {"panels.png": record["figure"]} if record.get("figure") else {}
        for name, key in (("overlay.png", "overlays"), ("heatmap.png", "heatmaps")):
            if record.get(key):
                out[name] = next(iter(record[key].values()))
        return out

    @classmethod
    def section(cls, run) -> Section:
        res, p = run.summary, run.params
        methods = res.get("methods", p.get("methods", []))
        s = Section(f"Saliency maps: {', '.join(methods)}",
                    "Which pixels move the class score. <b>gradient</b> is the lab's map: |∂score/∂pixel|, max over "
                    "colour channels (Simonyan et al. 2013); other methods smooth it (SmoothGrad), integrate it from a "
                    "baseline (Integrated Gradients), or weight a late feature map by its gradients (Grad-CAM). Bright "
                    "means important; each map has its own colour scale unless the figure says it is shared. "
                    "Faithfulness (RISE protocol): <i>deletion</i> removes the most salient pixels first and should "
                    "make the probability collapse (lower AUC is better); <i>insertion</i> reveals them first on a "
                    "blurred image and should restore it (higher is better). A uniform-random map is the baseline to "
                    "beat.")
        for r in run.items:
            if "figure" in r:  # not with figures=False (--no-figures)
                s.figures.append((r["figure"], f"{item_name(r)}: explaining {r['target_name']} "
                                               f"(p={r['prob']:.3f})"))
        if "mean_auc" in res:
            s.tables.append(Table("mean AUC over the images", ["method", "deletion AUC ↓", "insertion AUC ↑"],
                                  [[k, v["deletion"], v["insertion"]] for k, v in res["mean_auc"].items()]))
            rows = [[item_name(r), n, r["deletion_auc"][n], r["insertion_auc"][n]]
                    for r in run.items for n in [*methods, "random"] if n in r.get("deletion_auc", {})]
            s.tables.append(Table("per image", ["image", "method", "deletion AUC", "insertion AUC"], rows))
        else:
            s.tables.append(Table("maps", ["image", "class explained", "p"],
                                  [[item_name(r), r["target_name"], r["prob"]] for r in run.items]))
        if res.get("per_class_auc"):
            names = list(res["per_class_auc"])
            dele = {n: {c["class"]: c for c in res["per_class_auc"][n]["deletion"]} for n in names}
            ins = {n: {c["class"]: c for c in res["per_class_auc"][n]["insertion"]} for n in names}
            classes = list(dele[names[0]])
            s.tables.append(Table("mean deletion / insertion AUC per true class",
                                  ["class", "images", *(f"{n} del / ins" for n in names)],
                                  [[dele[names[0]][c]["name"], dele[names[0]][c]["images"],
                                    *(f"{dele[n][c]['mean']:.3f} / {ins[n][c]['mean']:.3f}" for n in names)]
                                   for c in classes]))
        add_accuracy(s, res)
        return s


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class SanityParams:
    methods: tuple[str, ...] = param(("gradient", "guided-backprop", "gradcam"), help="Method name(s), "
                                     "comma-separated (see `featvis methods`).", flag="--method", metavar="NAMES")
    target: str | int | None = param(None, help="Class index or name, 'true' (each image's label), or leave it out for "
                                            "the predicted class.", short="-t", metavar="CLASS")
    independent: bool = param(True, help="Also randomize each block alone.")
    randomization_seed: int = param(0, help="Seed of the re-initialization (one randomized model for every image).",
                                    metavar="N")
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        methods, options = check_methods(self.methods, self.options)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "options", options)


@register
class SanityTask(ClassTarget, Task):
    """Adebayo et al.'s cascading (and independent) model randomization, per image, summarized per method."""

    name = "sanity"
    title = "Sanity check (model randomization)"
    Params = SanityParams

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis import _progress
        from featvis.attribution.sanity import sanity_check

        p = self.params
        targets = batch_targets(clf, batch.images, p.target, batch.labels)
        results = {}
        for i, name in enumerate(p.methods):
            _progress.update(f"randomization: {name}", i, len(p.methods))
            opts = method_options(name, p.options, batch.seeds, "logit")
            opts.pop("score", None)
            results[name] = sanity_check(clf, batch.images, targets, method=name, independent=p.independent,
                                         seed=p.randomization_seed, **opts)
        outputs = []
        for i, _item in enumerate(batch.items):
            rec = {"target": int(targets[i]), "target_name": clf.labels[int(targets[i])],
                   "units": results[p.methods[0]].units, "methods": {
                       n: {"spearman_abs": r.spearman_abs[:, i].tolist(),
                           "spearman_signed": r.spearman_signed[:, i].tolist(), "ssim": r.ssim[:, i].tolist(),
                           "independent_spearman_abs": r.independent_spearman_abs[:, i].tolist()
                           if p.independent else None} for n, r in results.items()}}
            outputs.append(Output(rec))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        from featvis.attribution.sanity import FLAG_SPEARMAN

        if not records:
            return {"images": 0, "methods": {}}
        units = records[0]["units"]
        half = max(1, len(units) // 2)
        methods = {}
        for n in self.params.methods:
            curves = {k: [_mean(r["methods"][n][k][u] for r in records) for u in range(len(units))]
                      for k in ("spearman_abs", "spearman_signed", "ssim")}
            indep = None
            if self.params.independent:
                indep = [_mean(r["methods"][n]["independent_spearman_abs"][u] for r in records)
                         for u in range(len(units))]
            top_half = sum(abs(v) for v in curves["spearman_abs"][:half]) / half
            methods[n] = curves | {"independent_spearman_abs": indep, "top_half_spearman": top_half,
                                   "flagged": top_half >= FLAG_SPEARMAN}
        return {"images": len(records), "units": units, "methods": methods, "figure": "sanity.png"}

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        from featvis.figures import figure_png, sanity_curves

        if not summary.get("methods"):
            return {}
        return {"sanity.png": figure_png(sanity_curves(summary["units"], summary["methods"]), dpi=110)}

    @classmethod
    def section(cls, run) -> Section:
        res = run.summary
        s = Section("Sanity check (model randomization)",
                    "Adebayo et al. 2018: re-initialize the model from the logits down and see whether the maps "
                    "change. A map that explains the model must change when the model is destroyed; one that stays "
                    "similar (high rank correlation) shows the image's edges, not the model. Flagged: the mean |rank "
                    "correlation| over the top half of the cascade stays at 0.5 or above.")
        if res.get("methods"):
            s.figures.append(("sanity.png", "rank correlation with the original map as blocks are randomized"))
            s.tables.append(Table("Spearman of |map| with the original (mean over images)",
                                  ["method", "after logits", "top half (mean)", "all randomized", "verdict"],
                                  [[k, v["spearman_abs"][0], v["top_half_spearman"], v["spearman_abs"][-1],
                                    "fails" if v["flagged"] else "passes"] for k, v in res["methods"].items()]))
        return s
