"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_step(clf, images: torch.Tensor) -> Callable[[], object]:
    """The floor every gradient method is measured against: one forward + backward to the input pixels
    (parameters frozen, as featvis's algorithms run)."""
    for p in clf.parameters():
        p.requires_grad_(False)

    def step():
        x = images.detach().requires_grad_(True)
        logits = clf(x)
        return torch.autograd.grad(logits[:, 0].sum(), x)[0]

    return step


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}


def save(name: str, data: dict) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
