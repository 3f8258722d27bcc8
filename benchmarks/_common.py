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
EVALSET = Path("out/evalset")  # benchmarks/evalset.py writes it


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


def alternate(ours: Callable[[], object], theirs: Callable[[], object], repeats: int, n: int = 1, *,
              peer: str = "captum", warmup: bool = True):
    """featvis and a peer in turn, `repeats` timed rounds (after one untimed call of each when `warmup`), so both see
    the same load on a shared machine: (ours' last result, theirs', times), times in seconds per image (medians over
    the rounds, `n` images a call) with their ratio and every round."""
    if warmup:
        ours(), theirs()
    t_ours, t_theirs, a, b = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = theirs()
        t_theirs.append(time.perf_counter() - t0)
    f, c = statistics.median(t_ours) / n, statistics.median(t_theirs) / n
    return a, b, {"featvis_s_per_image": round(f, 4), f"{peer}_s_per_image": round(c, 4), "ratio": round(f / c, 3),
                  "rounds_featvis_s": [round(t, 3) for t in t_ours],
                  f"rounds_{peer}_s": [round(t, 3) for t in t_theirs]}


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


def evalset_photos(clf, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """A seeded draw of `n` photos of the evaluation set (benchmarks/evalset.py), sorted, at the model's size."""
    import featvis as fv

    files = sorted(p for p in EVALSET.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if EVALSET.is_dir() else []
    if len(files) < n:
        raise SystemExit(f"{EVALSET} has {len(files)} images; run benchmarks/evalset.py first")
    pick = sorted(torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return [files[i].stem for i in pick], fv.load_images([files[i] for i in pick], clf)


def photo_set(clf, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """The 6 bundled photos (n = 0) or a seeded draw of n evaluation-set photos."""
    import featvis as fv

    if n:
        return evalset_photos(clf, n, seed)
    names = list(fv.samples.names())
    return names, torch.cat([fv.samples.load(name, clf) for name in names])


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}


def save(name: str, data: dict) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
