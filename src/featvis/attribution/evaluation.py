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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from featvis._ops import Seed, first_seed
from featvis._registry import Option, Registry, Spec
from featvis.attribution import metrics as _curves
from featvis.attribution._base import ATTRIBUTIONS, prepare
from featvis.attribution.complexity import gini
from featvis.attribution.road import road
from featvis.attribution.robust_metrics import infidelity, max_sensitivity
from featvis.attribution.sanity import efficient_mprt, randomization_similarity
from featvis.errors import FeatvisError

RANDOM = "random"
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    """A registered metric: what it measures, which way is better, where it comes from and exactly how it is run."""

    name: str
    higher_is_better: bool | None  # None: not a quality score (time)
    paper: str
    protocol: str
    group: str  # metrics of one group come from one computation
    vs_random: bool = True  # False where the random map is the trivial optimum (an input-independent map is stable)

    @property
    def direction(self) -> str:
        return {True: "↑", False: "↓", None: "↓ (cost)"}[self.higher_is_better]


METRICS: Registry[Metric] = Registry("metric")


def _metric(name: str, better: bool | None, paper: str, protocol: str, group: str | None = None,
            vs_random: bool = True) -> None:
    METRICS.add(name, Metric(name, better, paper, protocol, group or name, vs_random))


RISE_PAPER = "Petsiuk, Das, Saenko 2018, RISE (BMVC)"
ROAD_PAPER = "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution Methods (ICML)"
YEH_PAPER = "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)"
_metric("deletion", False, RISE_PAPER, "p(class) as the most salient pixels are replaced by the model's mean colour, "
        "`pixels_per_step` (default: the image side) per step; AUC = trapezoid / steps", "curves")
_metric("insertion", True, RISE_PAPER, "p(class) as the most salient pixels are put back on a Gaussian-blurred copy "
        "(kernel 11, σ 5); AUC = trapezoid / steps", "curves")
_metric("road-morf", False, ROAD_PAPER, "mean p(class) after removing 10..90 % of the pixels, most relevant first, "
        "filled by noisy linear imputation (σ 0.01 normalized)", "road")
_metric("road-lerf", True, ROAD_PAPER, "mean p(class) after removing 10..90 % of the pixels, least relevant first, "
        "filled by noisy linear imputation", "road")
_metric("road-gap", True, ROAD_PAPER, "road-lerf − road-morf", "road")
_metric("max-sensitivity", False, YEH_PAPER, "max over 10 uniform L∞ perturbations of radius 0.02 of "
        "‖Φ(x+δ) − Φ(x)‖/‖Φ(x)‖ (captum.metrics.sensitivity_max); randomized methods keep their own draws; "
        "the random map ignores the input, so it scores 0 and is not a bar to beat", vs_random=False)
_metric("infidelity", False, YEH_PAPER, "E[(Iᵀ β·Φ − (f(x) − f(x − I)))²] over 16 random squares (1/7 of the side) "
        "set to the mean colour, f the target logit, β the optimal scale (captum.metrics.infidelity, normalize=True)")
_metric("sparseness", True, "Chalasani et al. 2020, Concise Explanations ... Adversarial Training (ICML)",
        "Gini index of |map| (Quantus Sparseness)")
_metric("emprt", True, "Hedström et al. 2024, Sanity Checks Revisited (TMLR): efficient MPRT",
        "entropy of the |map| histogram (100 bins) with every block re-initialized ÷ with the trained model")
_metric("randomization", False, "Adebayo et al. 2018, Sanity Checks for Saliency Maps (NeurIPS)",
        "mean Spearman correlation of |map| with the original while the top half of the blocks is re-initialized, "
        "logits first (cascading); expensive (10 maps per method on Lite0): not in the default set")
_metric("seconds", None, "", "wall time of the map per image (the method alone, batched)", "time")

DEFAULT_METRICS = ("deletion", "insertion", "road-morf", "road-lerf", "road-gap", "max-sensitivity", "infidelity",
                   "sparseness", "emprt", "seconds")


def _random(clf, images: torch.Tensor, target=None, *, seed: Seed = 0, batch_size: int | None = None) -> torch.Tensor:
    """A uniform-random map that ignores the input and the model (the baseline every method must beat)."""
    return _curves.random_maps(images, seed)


RANDOM_SPEC = Spec(RANDOM, _random, {"seed": Option("seed", 0, "seed")}, "uniform-random map")


@dataclass
class _Context:
    clf: Any
    images: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor
    method: Callable
    options: dict
    seed: Seed
    metric_options: Mapping[str, Mapping[str, Any]]
    curves: dict = field(default_factory=dict)

    def opts(self, group: str) -> dict:
        return dict(self.metric_options.get(group, {}))


def _g_curves(c: _Context) -> dict[str, torch.Tensor]:
    o = c.opts("curves")
    dele = _curves.deletion(c.clf, c.images, c.maps, targets=c.targets, **o)
    ins = _curves.insertion(c.clf, c.images, c.maps, targets=c.targets, **o)
    c.curves = {"deletion": dele.probs, "insertion": ins.probs}
    return {"deletion": dele.auc, "insertion": ins.auc}


def _g_road(c: _Context) -> dict[str, torch.Tensor]:
    r = road(c.clf, c.images, c.maps, targets=c.targets, seed=c.seed, **c.opts("road"))
    return {"road-morf": r.morf_mean, "road-lerf": r.lerf_mean, "road-gap": r.gap}


def _g_sensitivity(c: _Context) -> dict[str, torch.Tensor]:
    return {"max-sensitivity": max_sensitivity(c.clf, c.images, c.maps, c.targets, c.method, options=c.options,
                                               seed=c.seed, **c.opts("max-sensitivity"))}


def _g_infidelity(c: _Context) -> dict[str, torch.Tensor]:
    return {"infidelity": infidelity(c.clf, c.images, c.maps, c.targets, seed=c.seed, **c.opts("infidelity"))}


def _g_sparseness(c: _Context) -> dict[str, torch.Tensor]:
    return {"sparseness": gini(c.maps)}


def _g_emprt(c: _Context) -> dict[str, torch.Tensor]:
    return {"emprt": efficient_mprt(c.clf, c.images, c.maps, c.targets, c.method, options=c.options,
                                    seed=first_seed(c.seed), **c.opts("emprt"))}


def _g_randomization(c: _Context) -> dict[str, torch.Tensor]:
    return {"randomization": randomization_similarity(c.clf, c.images, c.maps, c.targets, c.method,
                                                      options=c.options, seed=first_seed(c.seed),
                                                      **c.opts("randomization"))}


GROUPS: dict[str, Callable[[_Context], dict[str, torch.Tensor]]] = {
    "curves": _g_curves, "road": _g_road, "max-sensitivity": _g_sensitivity, "infidelity": _g_infidelity,
    "sparseness": _g_sparseness, "emprt": _g_emprt, "randomization": _g_randomization,
}


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
                   metrics: Sequence[str] = DEFAULT_METRICS, *, seed: Seed = 0,
                   reference_images: torch.Tensor | None = None,
                   method_options: Mapping[str, Mapping[str, Any]] | None = None,
                   metric_options: Mapping[str, Mapping[str, Any]] | None = None,
                   random_baseline: bool = True) -> list[dict[str, Any]]:
    """Every metric for every method (and the random map) on one batch, as one record per image.

    Args:
        targets: the classes to explain and to measure (index/name, one per image, or None: the predicted classes).
        methods: registered attribution methods.
        metrics: registered metric names (`METRICS.names()`); "randomization" is the expensive optional one.
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
    for name in metrics:
        METRICS.get(name)
    images, target_idx = prepare(clf, images, targets)
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
        ctx = _Context(clf, images, target_idx, maps.detach(), spec, opts, seed, metric_options or {})
        values: dict[str, torch.Tensor] = {}
        for group in groups:
            if group == "time":
                continue
            t0 = time.perf_counter()
            values.update(GROUPS[group](ctx))
            seconds[group] = (time.perf_counter() - t0) / b
        values["seconds"] = torch.full((b,), seconds["map"])
        for i, rec in enumerate(records):
            rec["scores"][name] = {k: _number(v[i]) for k, v in values.items() if k in wanted}
            rec["seconds"][name] = seconds
            if ctx.curves:
                rec["curves"][name] = {k: v[i].tolist() for k, v in ctx.curves.items()}
    return records


@dataclass(frozen=True)
class Entry:
    """One cell of the leaderboard."""

    method: str
    metric: str
    mean: float
    low: float  # bootstrap interval of the mean over images
    high: float
    n: int
    random_mean: float | None
    diff_low: float | None  # paired bootstrap interval of mean(method − random)
    diff_high: float | None
    beats_random: bool | None  # None for the random map itself, for time, and for max-sensitivity (see Metric)


@dataclass(frozen=True)
class Leaderboard:
    """Mean and bootstrap interval per method × metric, with the random baseline and the beats_random flags."""

    entries: list[Entry]
    methods: list[str]
    metrics: list[str]
    confidence: float
    resamples: int
    seed: int

    def get(self, method: str, metric: str) -> Entry:
        for e in self.entries:
            if e.method == method and e.metric == metric:
                return e
        raise FeatvisError(f"no leaderboard entry for {method} × {metric}")

    def not_beating_random(self) -> list[tuple[str, str]]:
        """(method, metric) pairs where the method is not better than the random map beyond the interval."""
        return [(e.method, e.metric) for e in self.entries if e.beats_random is False]

    def to_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "resamples": self.resamples, "seed": self.seed,
                "methods": self.methods, "metrics": {m: {"direction": METRICS.get(m).direction,
                                                         "paper": METRICS.get(m).paper,
                                                         "protocol": METRICS.get(m).protocol}
                                                     for m in self.metrics},
                "entries": [asdict(e) for e in self.entries]}


def bootstrap_interval(values: torch.Tensor, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       generator: torch.Generator | None = None) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` [n] (float64)."""
    n = values.shape[0]
    if n == 0:
        return math.nan, math.nan
    idx = torch.randint(0, n, (resamples, n), generator=generator)
    means = values.double()[idx].mean(1)
    tail = (1 - confidence) / 2
    q = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(q[0]), float(q[1])


def summarize(records: Sequence[Mapping[str, Any]], *, seed: int = 0, resamples: int = RESAMPLES,
              confidence: float = CONFIDENCE) -> Leaderboard:
    """The leaderboard of per-image records (from one or many `evaluate_batch` calls).

    beats_random: the paired-bootstrap interval of the mean per-image difference (method − random) lies entirely on
    the metric's better side. Images where either value is missing or not finite are left out of that pair. Not
    computed (None) for time and for max-sensitivity, where the input-independent random map is the trivial optimum.
    """
    methods: list[str] = list(dict.fromkeys(m for r in records for m in r["scores"]))
    metric_names: list[str] = list(dict.fromkeys(k for r in records for s in r["scores"].values() for k in s))
    gen = torch.Generator().manual_seed(seed)
    entries = []

    def column(method: str, metric: str) -> list[float]:
        values = [r["scores"].get(method, {}).get(metric) for r in records]
        return [math.nan if v is None else v for v in values]

    for metric in metric_names:
        info = METRICS.get(metric) if metric in METRICS else None
        better = info.higher_is_better if info else None
        compare = better is not None and (info.vs_random if info else False)
        rand = torch.tensor(column(RANDOM, metric), dtype=torch.float64)
        rand_ok = rand[torch.isfinite(rand)]
        rand_mean = float(rand_ok.mean()) if rand_ok.numel() and better is not None else None
        for method in methods:
            vals = torch.tensor(column(method, metric), dtype=torch.float64)
            ok = torch.isfinite(vals)
            if not ok.any():
                continue
            low, high = bootstrap_interval(vals[ok], resamples=resamples, confidence=confidence, generator=gen)
            d_low = d_high = None
            beats = None
            if compare and method != RANDOM and rand_mean is not None:
                pair = ok & torch.isfinite(rand)
                if pair.any():
                    d_low, d_high = bootstrap_interval((vals - rand)[pair], resamples=resamples,
                                                       confidence=confidence, generator=gen)
                    beats = d_low > 0 if better else d_high < 0
            entries.append(Entry(method, metric, float(vals[ok].mean()), low, high, int(ok.sum()),
                                 rand_mean if method != RANDOM else None, d_low, d_high, beats))
    return Leaderboard(entries, methods, metric_names, confidence, resamples, seed)
