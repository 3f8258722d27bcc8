"""How an explanation metric is declared: one decorator next to the code that computes it.

A *metric group* is one computation that yields one or more metrics (deletion and insertion come from the same
curves; the three ROAD numbers from the same imputations). It is registered with the metrics it yields, each with
its direction, paper and protocol, and its options are read from a signature — the group function's own keyword-only
parameters, or those of the algorithm it wraps (`options_of=`) — so the CLI (`-O group.option=...`), the web API,
`featvis metrics`, `evaluate` and the report all read one declaration, and a new metric is one file:

    >>> @metric_group("toy", Metric("toy-score", True, "Me 2026", "the mean of the map"))
    ... def toy(c: Context, *, scale: float = 1.0) -> dict[str, torch.Tensor]:
    ...     return {"toy-score": scale * c.maps.flatten(1).mean(1)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from featvis._ops import Seed
from featvis._registry import Option, Registry, options_from

# parameters of a wrapped algorithm that the evaluation supplies itself: they are not a group's options
SUPPLIED = ("clf", "images", "maps", "targets", "method", "options", "seed", "batch_size")


@dataclass(frozen=True)
class Metric:
    """A registered metric: what it measures, which way is better, where it comes from and exactly how it is run."""

    name: str
    higher_is_better: bool | None  # None: not a quality score (time)
    paper: str
    protocol: str
    group: str = ""  # set by `metric_group`: the computation it comes from
    vs_random: bool = True  # False where the random map is the trivial optimum (an input-independent map is stable)
    default: bool = True  # in `evaluate`'s default set (False: expensive, on request)

    @property
    def direction(self) -> str:
        return {True: "↑", False: "↓", None: "↓ (cost)"}[self.higher_is_better]


@dataclass
class Context:
    """What a metric group gets for one method on one batch: the images, the explained classes, the maps, the
    method and its options (for metrics that recompute maps), the seed(s) and the group's own options."""

    clf: Any
    images: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor
    method: Callable
    options: dict
    seed: Seed
    group_options: Mapping[str, Any] = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # per-step curves a group may leave for the records (deletion...)


@dataclass(frozen=True)
class MetricGroup:
    """A registered computation: `fn(context, **options) -> {metric name: Tensor[B]}` and what it yields."""

    name: str
    fn: Callable[..., dict[str, torch.Tensor]]
    metrics: tuple[str, ...]
    options: Mapping[str, Option]

    def __call__(self, context: Context) -> dict[str, torch.Tensor]:
        return self.fn(context, **dict(context.group_options))


METRICS: Registry[Metric] = Registry("metric")
GROUPS: Registry[MetricGroup] = Registry("metric group")


def metric_group(name: str, *metrics: Metric, options_of: Callable | None = None) -> Callable[[Callable], Callable]:
    """Register `fn(context, **options)` as the metric group `name` yielding `metrics`. Its options are `fn`'s
    keyword-only parameters, or those of `options_of` (the algorithm it wraps, minus what the evaluation supplies);
    with `options_of`, `fn` receives them as keywords and passes them on."""

    def deco(fn: Callable) -> Callable:
        options = options_from(options_of, SUPPLIED) if options_of is not None else options_from(fn, SUPPLIED)
        for m in metrics:
            METRICS.add(m.name, replace(m, group=name))
        GROUPS.add(name, MetricGroup(name, fn, tuple(m.name for m in metrics), options))
        return fn

    return deco


def default_metrics() -> tuple[str, ...]:
    """The metrics `evaluate` computes unless told otherwise (every registered one not marked `default=False`)."""
    return tuple(n for n in METRICS.names() if METRICS.get(n).default)


def unregister_group(name: str) -> None:
    """Forget a metric group and its metrics (plugins and tests that register temporary ones)."""
    for m in GROUPS.get(name).metrics:
        METRICS.remove(m)
    GROUPS.remove(name)
