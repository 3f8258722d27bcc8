"""The leaderboard of an evaluation: per method × metric the mean over images with a seeded percentile-bootstrap 95 %
interval, and `beats_random` from a *paired* bootstrap of the per-image difference to the random map (same images,
so the pairing removes the image-to-image spread that an unpaired comparison of two intervals would keep)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from featvis._stats import CONFIDENCE, RESAMPLES, bootstrap_interval
from featvis.attribution.metric import METRICS
from featvis.errors import FeatvisError

RANDOM = "random"  # the pseudo-method of the uniform-random map (featvis.attribution.evaluation)


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
