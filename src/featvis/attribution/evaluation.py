"""Which explanation to trust for this model: every metric for every method on a batch, and a leaderboard.

`evaluate_batch` computes per-image records (method → metric → value, seconds per image per method, deletion and
insertion curves) including the `random` pseudo-method: a seeded uniform map that ignores both the input and the
model, the baseline every method must beat. `summarize` turns records (of one batch or many) into a leaderboard:
per method × metric the mean over images with a seeded percentile-bootstrap 95 % interval, and `beats_random` from
a *paired* bootstrap of the per-image difference to the random map (same images, so the pairing removes the
image-to-image spread that an unpaired comparison of two intervals would keep).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from featvis._ops import Seed, first_seed
from featvis._registry import Option, Spec
from featvis.attribution import metrics as _curves
from featvis.attribution._base import ATTRIBUTIONS, prepare_inputs
from featvis.attribution.complexity import gini
from featvis.attribution.leaderboard import RANDOM
from featvis.attribution.metric import GROUPS, METRICS, Context, Metric, default_metrics, metric_group
from featvis.attribution.road import road
from featvis.attribution.robust_metrics import infidelity, max_sensitivity
from featvis.attribution.sanity import efficient_mprt, randomization_similarity
from featvis.errors import FeatvisError, did_you_mean

RISE_PAPER = "Petsiuk, Das, Saenko 2018, RISE (BMVC)"
ROAD_PAPER = "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution Methods (ICML)"
YEH_PAPER = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"


@metric_group("curves",
              Metric("deletion", False, RISE_PAPER, "p(class) as the most salient pixels are replaced by the model's "
                     "mean colour, `pixels_per_step` (default: the image side) per step; AUC = trapezoid / steps"),
              Metric("insertion", True, RISE_PAPER, "p(class) as the most salient pixels are put back on a "
                     "Gaussian-blurred copy (kernel 11, σ 5); AUC = trapezoid / steps"),
              options_of=_curves.deletion)
def deletion_insertion(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    dele = _curves.deletion(c.clf, c.images, c.maps, targets=c.targets, **options)
    ins = _curves.insertion(c.clf, c.images, c.maps, targets=c.targets, **options)
    c.curves = {"deletion": dele.probs, "insertion": ins.probs}
    return {"deletion": dele.auc, "insertion": ins.auc}


@metric_group("road",
              Metric("road-morf", False, ROAD_PAPER, "mean p(class) after removing 10..90 % of the pixels, most "
                     "relevant first, filled by noisy linear imputation (σ 0.01 normalized)"),
              Metric("road-lerf", True, ROAD_PAPER, "mean p(class) after removing 10..90 % of the pixels, least "
                     "relevant first, filled by noisy linear imputation"),
              Metric("road-gap", True, ROAD_PAPER, "road-lerf − road-morf"),
              options_of=road)
def _road(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    r = road(c.clf, c.images, c.maps, targets=c.targets, seed=c.seed, **options)
    return {"road-morf": r.morf_mean, "road-lerf": r.lerf_mean, "road-gap": r.gap}


@metric_group("max-sensitivity",
              Metric("max-sensitivity", False, YEH_PAPER, "max over 10 uniform L∞ perturbations of radius 0.02 of "
                     "‖Φ(x+δ) − Φ(x)‖/‖Φ(x)‖ (captum.metrics.sensitivity_max); randomized methods keep their own "
                     "draws; the random map ignores the input, so it scores 0 and is not a bar to beat",
                     vs_random=False),
              options_of=max_sensitivity)
def _sensitivity(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    return {"max-sensitivity": max_sensitivity(c.clf, c.images, c.maps, c.targets, c.method, options=c.options,
                                               seed=c.seed, **options)}


@metric_group("infidelity",
              Metric("infidelity", False, YEH_PAPER, "E[(Iᵀ β·Φ − (f(x) − f(x − I)))²] over 16 random squares (1/7 "
                     "of the side) set to the mean colour, f the target logit, β the optimal scale "
                     "(captum.metrics.infidelity, normalize=True)"),
              options_of=infidelity)
def _infidelity(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    return {"infidelity": infidelity(c.clf, c.images, c.maps, c.targets, seed=c.seed, **options)}


@metric_group("sparseness",
              Metric("sparseness", True, "Chalasani et al. 2020, Concise Explanations ... Adversarial Training "
                     "(ICML)", "Gini index of |map| (Quantus Sparseness)"))
def _sparseness(c: Context) -> dict[str, torch.Tensor]:
    return {"sparseness": gini(c.maps)}


@metric_group("emprt",
              Metric("emprt", True, "Hedström et al. 2024, Sanity Checks Revisited (TMLR): efficient MPRT",
                     "entropy of the |map| histogram (100 bins) with every block re-initialized ÷ with the trained "
                     "model"),
              options_of=efficient_mprt)
def _emprt(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    return {"emprt": efficient_mprt(c.clf, c.images, c.maps, c.targets, c.method, options=c.options,
                                    seed=first_seed(c.seed), **options)}


@metric_group("randomization",
              Metric("randomization", False, "Adebayo et al. 2018, Sanity Checks for Saliency Maps (NeurIPS)",
                     "mean Spearman correlation of |map| with the original while the top half of the blocks is "
                     "re-initialized, logits first (cascading); expensive (10 maps per method on Lite0): not in the "
                     "default set", default=False),
              options_of=randomization_similarity)
def _randomization(c: Context, **options: Any) -> dict[str, torch.Tensor]:
    return {"randomization": randomization_similarity(c.clf, c.images, c.maps, c.targets, c.method,
                                                      options=c.options, seed=first_seed(c.seed), **options)}


@metric_group("time", Metric("seconds", None, "", "wall time of the map per image (the method alone, batched)"))
def _time(c: Context) -> dict[str, torch.Tensor]:
    return {}  # evaluate_batch times each map itself


def _random(clf, images: torch.Tensor, target=None, *, seed: Seed = 0, batch_size: int | None = None) -> torch.Tensor:
    """A uniform-random map that ignores the input and the model (the baseline every method must beat)."""
    return _curves.random_maps(images, seed)


RANDOM_SPEC = Spec(RANDOM, _random, {"seed": Option("seed", 0, "seed")}, "uniform-random map")


def _method_options(spec, given: Mapping[str, Any], seed: Seed) -> dict[str, Any]:
    """The caller's options, plus the batch's seed for a randomized method that was given none: per-image seeds when
    the method takes them (its `seed` is annotated `Seed`), else the first one."""
    opts = dict(given)
    if "seed" in getattr(spec, "options", {}) and "seed" not in opts:
        ann = inspect.signature(spec.fn).parameters["seed"].annotation
        opts["seed"] = seed if str(ann) == "Seed" else first_seed(seed)
    return opts


def _number(value: torch.Tensor) -> float | None:
    """A JSON-safe value: None where a metric is undefined for the image (NaN)."""
    x = float(value)
    return x if math.isfinite(x) else None


def evaluate_batch(clf, images: torch.Tensor, targets=None, methods: Sequence[str] = ("gradient", "gradcam"),
                   metrics: Sequence[str] | None = None, *, seed: Seed = 0,
                   reference_images: torch.Tensor | None = None,
                   method_options: Mapping[str, Mapping[str, Any]] | None = None,
                   metric_options: Mapping[str, Mapping[str, Any]] | None = None,
                   random_baseline: bool = True) -> list[dict[str, Any]]:
    """Every metric for every method (and the random map) on one batch, as one record per image.

    Args:
        targets: the classes to explain and to measure (index/name, one per image, or None: the predicted classes).
        methods: registered attribution methods.
        metrics: registered metric names (`METRICS.names()`; default: `default_metrics()`, which leaves out the
            expensive "randomization").
        seed: one int or one per image: the random map, ROAD noise, perturbations, and randomized methods' draws.
        reference_images: baselines for methods that take `references` (expected-gradients), e.g. drawn from the
            data set; default: the other images of the batch.
        method_options: method name → its options (e.g. {"rise": {"masks": 1000}}).
        metric_options: metric group → keyword options ("curves": pixels_per_step, "road": fractions/noise/tol,
            "max-sensitivity": radius/samples, "infidelity": samples/square, "emprt": bins, "randomization": depth).
        random_baseline: also evaluate the random map (needed by `summarize`'s beats_random).

    Returns:
        One dict per image: {"index", "target", "scores": {method: {metric: value, None where undefined}},
        "seconds": {method: {"map": s, group: s, ...}} (seconds per image), "curves": {method: {"deletion": [...],
        "insertion": [...]}}}.
    """
    metrics = default_metrics() if metrics is None else metrics
    for name in metrics:
        METRICS.get(name)
    images, target_idx = prepare_inputs(clf, images, targets)
    b = images.shape[0]
    groups = list(dict.fromkeys(METRICS.get(m).group for m in metrics))
    wanted = {METRICS.canonical(m) for m in metrics}
    specs = [(ATTRIBUTIONS.canonical(m), ATTRIBUTIONS.get(m)) for m in methods]
    if random_baseline:
        specs.append((RANDOM, RANDOM_SPEC))
    records: list[dict[str, Any]] = [{"index": i, "target": int(target_idx[i]), "scores": {}, "seconds": {},
                                      "curves": {}} for i in range(b)]
    for name, spec in specs:
        opts = _method_options(spec, (method_options or {}).get(name, {}), seed)
        if "references" in spec.options and reference_images is not None and "references" not in opts:
            opts["references"] = reference_images
        t0 = time.perf_counter()
        maps = spec(clf, images, target_idx, **opts)
        seconds = {"map": (time.perf_counter() - t0) / b}
        if maps.shape != (b, *images.shape[-2:]):
            raise FeatvisError(f"method {name} returned maps of shape {tuple(maps.shape)}; evaluate needs [B, H, W]")
        values: dict[str, torch.Tensor] = {}
        curves: dict = {}
        for group in groups:
            if group == "time":
                continue
            ctx = Context(clf, images, target_idx, maps.detach(), spec, opts, seed,
                          (metric_options or {}).get(group, {}))
            t0 = time.perf_counter()
            values.update(GROUPS.get(group)(ctx))
            seconds[group] = (time.perf_counter() - t0) / b
            curves |= ctx.curves
        values["seconds"] = torch.full((b,), seconds["map"])
        for i, rec in enumerate(records):
            rec["scores"][name] = {k: _number(v[i]) for k, v in values.items() if k in wanted}
            rec["seconds"][name] = seconds
            if curves:
                rec["curves"][name] = {k: v[i].tolist() for k, v in curves.items()}
    return records


def split_options(methods: tuple[str, ...], options: Mapping[str, Any]) -> tuple[dict, dict]:
    """`-O` options → (per-method options, per-metric-group options). Keys: `option` (every chosen method that
    takes it), `method.option` (one method), `group.option` (a metric group: curves, road, max-sensitivity,
    infidelity, emprt, randomization)."""
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    per_group: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        head, _, tail = key.partition(".")
        if tail and head.replace("_", "-") in GROUPS:
            group = head.replace("_", "-")
            takes = GROUPS.get(group).options
            name = tail.replace("-", "_")
            if name not in takes:
                raise did_you_mean(f"option for metric group {group}", tail, list(takes) or ["(none)"])
            parsed = takes[name].parse(value)
            if takes[name].kind == "any" and isinstance(parsed, str):  # a list such as road's fractions
                try:
                    parsed = tuple(float(v) for v in parsed.split(","))
                except ValueError:
                    raise FeatvisError(f"option {key}={value!r} must be numbers separated by commas") from None
            per_group.setdefault(group, {})[name] = parsed
            continue
        if tail:
            name = ATTRIBUTIONS.canonical(head)
            if name not in methods:
                raise FeatvisError(f"option {key!r} is for {name}, which is not among the methods evaluated")
            per_method[name] |= ATTRIBUTIONS.get(name).check({tail: value}, what=name)
            continue
        takers = [m for m in methods if key.replace("-", "_") in ATTRIBUTIONS.get(m).options]
        if not takers:
            every = sorted({o for m in methods for o in ATTRIBUTIONS.get(m).options} | set(GROUPS))
            raise did_you_mean("evaluate option", key, every,
                               hint="write method.option or curves/road/infidelity/... .option for one of them")
        for m in takers:
            per_method[m] |= ATTRIBUTIONS.get(m).check({key: value}, what=m)
    for m, opts in per_method.items():
        if "seed" in opts:
            raise FeatvisError(f"seed is the run's --seed (each image's seed derives from it); not an option of {m}")
    return per_method, per_group


def applicable_methods(clf=None) -> tuple[str, ...]:
    """Every registered method that can run on this model ("all"): attention methods only on attention models."""
    names = []
    for n in ATTRIBUTIONS.names():
        needs = ATTRIBUTIONS.get(n).info.get("needs")
        if needs == "attention":
            if clf is None:
                continue
            from featvis.layers import is_attention, root

            if not any(is_attention(m) for m in root(clf).modules()):
                continue
        names.append(n)
    return tuple(names)
