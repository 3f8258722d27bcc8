"""One report section per kind of run, read from the run's results and manifest (never recomputed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    anchor: str
    intro: str
    manifest: dict
    figures: list[tuple[Path, str]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)


def _results(d: Path) -> dict | list:
    return json.loads((d / "results.json").read_text("utf-8"))


def _anchor(d: Path, command: str) -> str:
    return f"{command}-{abs(hash(str(d.resolve()))) % 10**6}"


def classify(d: Path, m: dict) -> Section:
    res = _results(d)
    s = Section("Classification", _anchor(d, "classify"),
                "The model's five most likely ImageNet classes for each photo, with softmax probabilities. "
                "Everything below explains, fools or visualizes this same model.", m)
    rows = [[Path(r["image"]).name, *(f"{p['name']} ({p['index']}) {p['prob']:.3f}" for p in r["predictions"])]
            for r in res]
    k = max((len(r["predictions"]) for r in res), default=0)
    s.tables.append(("top-k classes per image", ["image", *(f"top-{i + 1}" for i in range(k))], rows))
    return s


def saliency(d: Path, m: dict) -> Section:
    res = _results(d)
    methods = res["methods"]
    s = Section("Saliency maps", _anchor(d, "saliency"),
                "Which pixels move the class score. <b>gradient</b> is the lab's map: |∂score/∂pixel|, max over "
                "colour channels (Simonyan et al. 2013); the other methods smooth it (SmoothGrad), integrate it from "
                "a black image (Integrated Gradients), or weight a late feature map by its gradients (Grad-CAM). "
                "Bright means important; each map has its own colour scale unless the figure says it is shared. "
                "Faithfulness (RISE protocol): <i>deletion</i> removes the most salient pixels first and should make "
                "the probability collapse (lower AUC is better); <i>insertion</i> reveals them first on a blurred "
                "image and should restore it (higher is better). A uniform-random map is the baseline to beat.", m)
    for r in res["results"]:
        s.figures.append((d / r["figure"], f"{Path(r['image']).name}: explaining {r['target_name']} "
                                           f"(p={r['prob']:.3f})"))
    if "mean_auc" in res:
        s.tables.append(("mean AUC over the images", ["method", "deletion AUC ↓", "insertion AUC ↑"],
                         [[k, v["deletion"], v["insertion"]] for k, v in res["mean_auc"].items()]))
        rows = [[Path(r["image"]).name, n, r["deletion_auc"][n], r["insertion_auc"][n]] for r in res["results"]
                for n in [*methods, "random"]]
        s.tables.append(("per image", ["image", "method", "deletion AUC", "insertion AUC"], rows))
    return s


def fool(d: Path, m: dict) -> Section:
    res = _results(d)
    s = Section("Fooling images", _anchor(d, "fool"),
                "Each photo is changed, imperceptibly, until the model calls it the target class. The default "
                "(ascent) takes the lab's normalized gradient steps on the target's log-probability, keeps every "
                "pixel within 3/255 of the original, and stops as soon as the saved 8-bit image is classified as "
                "the target (method 'lab' is the lab's recipe as written: the logit, no cap). "
                "Panels: original, fooled image, the difference around grey, and the "
                "difference magnified ten times. L∞ is the largest change of any pixel (0–255 units), L2 the size "
                "of the whole change in [0, 1] units; PSNR above 40 dB is invisible to most people.", m)
    for r in res["results"]:
        s.figures.append((d / r["figure"], f"{Path(r['image']).name} → {r['target_name'] or 'anything else'}"))
    rows = [[Path(r["image"]).name, r["original_name"], r["target_name"] or "(untargeted)", r["predicted_name"],
             "yes" if r["success"] else "no", r["steps"], r["linf_255"], r["l2"], r["psnr_db"]] for r in res["results"]]
    s.tables.append(("per image", ["image", "was", "target", "now", "fooled", "steps", "L∞ /255", "L2", "PSNR dB"],
                     rows))
    summ = res.get("summary", {})
    s.tables.append(("summary", ["success rate", "median steps", "median L∞ /255", "mean L2", "median PSNR dB"],
                     [[summ.get("success_rate"), summ.get("median_steps"), summ.get("median_linf_255"),
                       summ.get("mean_l2"), summ.get("median_psnr_db")]]))
    return s


def robustness(d: Path, m: dict) -> Section:
    res = _results(d)
    summ = res["summary"]
    curve = summ["curve"]
    linf = curve["norm"] == "linf"
    target = m["params"].get("target")
    goal = "change its prediction" if target in (None, "none") else f"predict the target ({target})"
    s = Section("Robustness: how small a change fools it", _anchor(d, "robustness"),
                f"The {res['method']} attack run at growing budgets ε; an image counts as fooled at ε when an image "
                f"within ε of it, saved as 8-bit PNG, makes the model {goal}. The curve is the share of images "
                "fooled at each budget" + (" (ε in 8-bit levels: 1/255 is the smallest visible-in-principle "
                                           "change)." if linf else " (L2 size of the change in [0, 1] units)."), m)
    s.figures.append((d / res["figure"], "images fooled against the budget"))
    scale, unit = (255, "/255") if linf else (1, "")
    s.tables.append(("share fooled", ["budget ε", "images fooled"],
                     [[f"{e * scale:.3g}{unit}", f"{r:.0%}"] for e, r in zip(curve["eps"], curve["fooled_rate"],
                                                                            strict=True)]))
    s.tables.append(("per image", ["image", "was", "target", "now", "smallest fooling ε"],
                     [[Path(r["image"]).name, r["original_name"], r["target_name"] or "(untargeted)",
                       r["predicted_name"], f"{r['min_eps'] * scale:.3g}{unit}" if r["fooled"] else "not fooled"]
                      for r in res["results"]]))
    return s


def _gallery(d: Path, m: dict, title: str, command: str, intro: str) -> Section:
    res = _results(d)
    s = Section(title, _anchor(d, command), intro, m)
    s.figures.append((d / "grid.png", f"{len(res['results'])} images, preset {m['params'].get('preset')}"))
    s.tables.append(("per image", ["image", "objective score", "model's top-1", "p"],
                     [[r["title"], r["score"], f"{r['top1_name']} ({r['top1']})", r.get("target_prob", r["top1_prob"])]
                      for r in res["results"]]))
    return s


def classvis(d: Path, m: dict) -> Section:
    return _gallery(d, m, f"Class visualization ({m['params'].get('preset')})", "classvis",
                    "Images synthesized from noise to maximize one class score. The <b>lab</b> preset is CS231n's "
                    "recipe (pixels, normalized gradient ascent, L2 penalty, jitter, periodic blur); <b>lucid</b> "
                    "optimizes a Fourier-space, colour-decorrelated image that must survive random jitter, scaling "
                    "and rotation (Olah et al. 2017), which turns adversarial noise into recognizable parts. "
                    "p is the model's probability of the class on the saved image.")


def features(d: Path, m: dict) -> Section:
    return _gallery(d, m, f"Feature visualization: {m['params'].get('layer')}", "features",
                    "What single channels of a layer respond to: each image maximizes one channel's mean activation "
                    "(or its centre neuron). Early layers answer to colours and edges, middle ones to textures and "
                    "parts, late ones to object-like patterns. The forward pass stops at the layer.")


def sanity(d: Path, m: dict) -> Section:
    res = json.loads((d / "sanity.json").read_text("utf-8"))
    s = Section("Sanity check (model randomization)", _anchor(d, "sanity"),
                "Adebayo et al. 2018: re-initialize the model from the logits down and see whether the maps change. "
                "A map that explains the model must change when the model is destroyed; one that stays similar "
                "(high rank correlation) shows the image's edges, not the model.", m)
    s.figures.append((d / res["figure"], "rank correlation with the original map as blocks are randomized"))
    s.tables.append(("Spearman of |map| with the original", ["method", "after logits", "all randomized", "verdict"],
                     [[k, v["spearman_abs"][0], v["spearman_abs"][-1], "fails" if v["flagged"] else "passes"]
                      for k, v in res["methods"].items()]))
    return s


SECTIONS: dict[str, Callable[[Path, dict], Section]] = {
    "classify": classify, "saliency": saliency, "fool": fool, "robustness": robustness, "classvis": classvis,
    "features": features, "sanity": sanity}
