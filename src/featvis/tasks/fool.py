"""The fool task (fooling images by any attack) and the attack checks it shares with the robustness task."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, ClassTarget, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.classify import per_class

FOOL_FIELDS = ["input", "method", "success", "steps", "original_class", "original_name", "target", "target_name",
               "predicted", "predicted_name", "original_prob_before", "original_prob_after", "target_prob_before",
               "target_prob_after", "l2", "linf", "l2_255", "linf_255", "psnr_db", "reloaded_predicted",
               "transfer_model", "transfer_predicted", "transfer_success", "transfer_changed", "label"]


def _csv(records: list[dict], fields: list[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode("utf-8")


def _target(value) -> str | int | None:
    """None/"none" → untargeted; "random", "true" and classes as given."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return value.strip().lower() if isinstance(value, str) and value.strip().lower() in ("random", "true") else value


def check_attack(method: str, target, options: Mapping[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """Canonical attack name, the target mode it can do, and its options checked against its spec."""
    from featvis.adversarial import ATTACKS

    name = ATTACKS.canonical(method)
    spec = ATTACKS.get(name)
    if "seed" in {k.replace("-", "_") for k in options}:
        raise FeatvisError("seed is the run's --seed (each image's seed derives from it); not an attack option")
    opts = spec.check(options, what=f"attack {name}")
    if target is not None and not spec.info.get("targeted", True):
        takers = ", ".join(n for n in ATTACKS.names() if ATTACKS.get(n).info.get("targeted"))
        raise FeatvisError(f"{name} is untargeted (it finds the nearest boundary): use --target none, or an attack "
                           f"that takes a target ({takers})")
    if target is None and not spec.info.get("untargeted", True):
        raise FeatvisError(f"{name} needs a target class (or --target random)")
    norm = opts.get("norm", "linf")
    eps = opts.get("eps")
    if eps is not None and math.isfinite(eps) and norm == "linf" and eps > 1:
        raise FeatvisError(f"eps {eps:g} is more than the whole pixel range [0, 1]; write the budget in [0, 1] units "
                           "(0.0314) or 8-bit levels (8/255)")
    return name, target, opts


def attack_targets(target, batch: Batch):
    """What the attack gets as target: per-image labels for "true", else the value as is."""
    if target == "true":
        if any(lab is None for lab in batch.labels):
            raise FeatvisError("target 'true' needs every image's label (ImageFolder layout or a CSV label column)")
        return batch.labels
    return target


def _reporter(total: int | None):
    from featvis import _progress

    def callback(step: int, active: int) -> None:
        _progress.update("attack step", step, total or step)

    return callback


@dataclass(frozen=True)
class FoolParams:
    method: str = param("ascent", help="An attack (see `featvis attacks`): ascent (the lab's step, capped), lab, "
                        "fgsm, pgd, mifgsm, cw, deepfool.", metavar="ATTACK")
    target: str | int | None = param("random", help="A class (index or name), 'random' (seeded per image), 'true' "
                                     "(each image's label) or 'none' (untargeted; the default of untargeted "
                                     "attacks).", short="-t", metavar="CLASS")
    options: dict[str, Any] = field(default_factory=dict)
    check_model: str | None = param(None, help="A second model to test transfer on.", metavar="MODEL")

    def __post_init__(self) -> None:
        from featvis.adversarial import ATTACKS

        target = _target(self.target)
        name = ATTACKS.canonical(self.method)
        if target == "random" and not ATTACKS.get(name).info.get("targeted", True):
            target = None  # an untargeted attack's default
        name, target, opts = check_attack(name, target, self.options)
        object.__setattr__(self, "method", name)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "options", opts)


@register
class FoolTask(ClassTarget, Task):
    """Fooling images: the fooled PNG (judged after 8-bit rounding), the lab's four panels, numbers per image."""

    name = "fool"
    title = "Fooling images"
    Params = FoolParams

    TARGET_WORDS = ("true", "random")

    def prepare(self, clf) -> None:
        super().prepare(clf)
        if self.params.check_model:
            self._transfer_model(clf)

    def _transfer_model(self, clf):
        other = getattr(self, "_other", None)
        if other is None:
            from featvis.models import load_model

            other = load_model(self.params.check_model, device=clf.device)
            self._other = other
        return other

    def _steps(self) -> int | None:
        from featvis.adversarial import ATTACKS

        spec = ATTACKS.get(self.params.method)
        key = spec.info.get("steps")
        if key is None:
            return 1
        steps = self.params.options.get(key, spec.options[key].default)
        search = self.params.options.get("search_steps", spec.options["search_steps"].default) \
            if "search_steps" in spec.options else 1
        return None if steps is None or search is None else steps * search  # None: the attack's default by mode

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.adversarial import ATTACKS, fool
        from featvis.figures import figure_png, fooling_panels
        from featvis.images import encode_png, load_image

        p = self.params
        opts = dict(p.options)
        if "seed" in ATTACKS.get(p.method).options:
            opts["seed"] = batch.seeds
        other = self._transfer_model(clf) if p.check_model else None
        res = fool(clf, batch.images, attack_targets(p.target, batch), method=p.method, check_model=other,
                   callback=_reporter(self._steps()), **opts)
        outputs = []
        for i, (item, rec) in enumerate(zip(batch.items, res.records(), strict=True)):
            png = encode_png(res.images[i])
            reloaded = load_image(png).to(clf.device)  # what the user keeps, read back
            rec["reloaded_predicted"] = clf.predict(reloaded, k=1)[0][0].index
            rec.update(fooled_png=f"fooled/{item.key}.png", figure=f"figures/{item.key}.png")
            arts = {rec["fooled_png"]: png, rec["figure"]: figure_png(fooling_panels(res.select(i)), dpi=110)}
            outputs.append(Output(rec, arts))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        out = fooling_summary(records)
        if any(r.get("label") is not None for r in records):
            out["per_class_success"] = per_class(records, info.get("labels"), lambda r: float(r["success"]))
        return out

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        return {"results.csv": _csv(records, FOOL_FIELDS)}

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        return {"fooled.png": record["fooled_png"], "panels.png": record["figure"]}

    @classmethod
    def section(cls, run) -> Section:
        p, summ = run.params, run.summary
        method = p.get("method", "?")
        opts = p.get("options", {})
        target = p.get("target")
        what = {None: "anything else (untargeted)", "random": "a random class per image",
                "true": "its true class"}.get(target, str(target))
        intro = _attack_intro(method, opts)
        s = Section(f"Fooling images: {method}, target {what}",
                    intro + " Panels: original, fooled image, the difference around grey scaled per image until "
                    "its largest change is black or white (the factor is in its title), and the difference "
                    "magnified ten times (the lab's). L∞ is the largest change of any pixel (0–255 units), L2 the "
                    "size of the whole change in [0, 1] units; PSNR above 40 dB is invisible to most people. Success "
                    "is judged on the saved 8-bit PNG.")
        for r in run.items:
            s.figures.append((r["figure"], f"{item_name(r)} → {r['target_name'] or 'anything else'}"))
        s.tables.append(Table("summary", ["images", "success rate", "median steps", "median L∞ /255", "mean L2",
                                          "median PSNR dB", "already the target"],
                              [[summ.get("images"), summ.get("success_rate"), summ.get("median_steps"),
                                summ.get("median_linf_255"), summ.get("mean_l2"), summ.get("median_psnr_db"),
                                summ.get("already_target", 0)]]))
        s.tables.append(Table("per image", ["image", "was", "target", "now", "fooled", "steps", "L∞ /255", "L2",
                                            "PSNR dB"],
                              [[item_name(r), r["original_name"], r["target_name"] or "(untargeted)",
                                r["predicted_name"], _fooled(r), r["steps"], r["linf_255"],
                                r["l2"], r["psnr_db"]] for r in run.items]))
        if summ.get("per_class_success"):
            s.tables.append(Table("success per true class", ["class", "images", "success rate"],
                                  [[c["name"], c["images"], c["mean"]] for c in summ["per_class_success"]]))
        return s

    @classmethod
    def overview(cls, run) -> Table:
        return cls.section(run).tables[1]


def _attack_intro(method: str, opts: Mapping[str, Any]) -> str:
    """What the attack does, from its own docstring (written once, in its file), and its budget (plain text: the
    report escapes it)."""
    from featvis.adversarial import ATTACKS
    from featvis.adversarial._base import budget_norms

    if method not in ATTACKS:
        return f"The {method} attack."
    text = ATTACKS.get(method).summary
    if budget_norms(method):
        default = ATTACKS.get(method).options["eps"].default  # the attack's own default budget
        text += f" Budget: {_norm_budget({'eps': default, **opts})}."
    return text + " Each image stops as soon as its saved 8-bit version fools the model."


def _fooled(record: Mapping[str, Any]) -> str:
    """The "fooled" cell: a target the model already predicted is said so, not counted as a quiet "yes"."""
    if record.get("already_target"):
        return "already the target"
    return "yes" if record["success"] else "no"


def _norm_budget(opts: Mapping[str, Any]) -> str:
    if opts.get("norm", "linf") == "linf":
        return f"L∞ ε = {_budget(opts.get('eps', 8 / 255))}"
    return f"L2 ε = {opts.get('eps', 1.0):g}"


def _budget(eps) -> str:
    if eps is None:
        return ""
    if not math.isfinite(eps):
        return "no limit"
    levels = eps * 255
    return f"{levels:.3g}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


def fooling_summary(records: list[dict]) -> dict[str, Any]:
    if not records:
        return {"images": 0, "success_rate": 0.0}
    return {"images": len(records),
            "success_rate": sum(r["success"] for r in records) / len(records),
            "median_steps": statistics.median(r["steps"] for r in records),
            "median_linf_255": statistics.median(r["linf_255"] for r in records),
            "mean_linf_255": statistics.mean(r["linf_255"] for r in records),
            "mean_l2": statistics.mean(r["l2"] for r in records),
            "median_psnr_db": statistics.median(r["psnr_db"] for r in records),
            "reloaded_agrees": all(r["reloaded_predicted"] == r["predicted"] for r in records),
            "transfer_rate": (sum(r["transfer_success"] for r in records) / len(records)
                              if "transfer_success" in records[0] else None),
            "already_target": sum(bool(r.get("already_target")) for r in records)}
