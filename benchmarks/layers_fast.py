"""Layer hooks on the fast copy (issue 23): forward_until, capture and Grad-CAM before and after, side by side in
one process, alternating, medians of `--repeats` rounds.

On efficientnet-lite0 (shipped weights), the bundled photos at 224 px:

- full: `clf(x)` under no_grad on the fast copy: what a partial forward is a fraction of.
- until-<layer>: `forward_until(clf, x, layer)` under no_grad; objective-<layer>: the same plus the gradient of one
  channel's mean to the image (a feature-visualization step), beside the full forward + backward (floor).
- capture-<layer>: a full forward inside `capture(clf, layer, detach=True)`.
- gradcam: `fv.saliency(clf, x, method="gradcam")` (capture with as_leaf at the default layer, then a backward).

"before" runs the same call with `clf.fast = False` for it: a hook on the user's network turned the fast path off,
so that is the path featvis took before issue 23 (the user's network with hooks). "after" is the default. Grad-CAM
maps are compared after vs before (max abs, max relative to each map's peak, mean relative). To cross-check
"before" against the code as it was, run this file with PYTHONPATH pointing at an old checkout and `--label old`:
there the default is the old path.

    python benchmarks/layers_fast.py                    # writes benchmarks/results/layers_fast.json
    PYTHONPATH=/tmp/old/src python benchmarks/layers_fast.py --label old --configs after
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch
from _floor_parts import load_avg

import featvis as fv
from featvis.layers import capture, forward_until

from _common import machine, save

LAYERS = ("blocks.1", "blocks.5", "blocks.10")


def _calls(clf, images: torch.Tensor) -> dict:
    """name → a call to time (each returns something, so nothing is optimized away)."""
    one = images[:1]

    def until(x, layer):
        with torch.no_grad():
            return forward_until(clf, x, layer)

    def objective(x, layer):
        xx = x.clone().requires_grad_(True)
        with fv.models.frozen(clf):
            acts = forward_until(clf, xx, layer)
            return torch.autograd.grad(acts[:, 0].mean(), xx)[0]

    def floor(x):
        xx = x.clone().requires_grad_(True)
        with fv.models.frozen(clf):
            return torch.autograd.grad(clf(xx)[:, 0].sum(), xx)[0]

    def captured(x, layer):
        with torch.no_grad(), capture(clf, layer, detach=True) as cap:
            clf(x)
        return cap.act()

    calls = {}
    for tag, x in (("b1", one), (f"b{len(images)}", images)):
        calls[f"full/{tag}"] = lambda x=x: _no_grad(clf, x)
        calls[f"floor/{tag}"] = lambda x=x: floor(x)
        for layer in LAYERS:
            calls[f"until-{layer}/{tag}"] = lambda x=x, layer=layer: until(x, layer)
            calls[f"objective-{layer}/{tag}"] = lambda x=x, layer=layer: objective(x, layer)
        calls[f"capture-blocks.10/{tag}"] = lambda x=x: captured(x, "blocks.10")
    calls[f"gradcam/b{len(images)}"] = lambda: fv.saliency(clf, images, None, method="gradcam")
    return calls


def _no_grad(clf, x):
    with torch.no_grad():
        return clf(x)


def _time(clf, fn, config: str, inner: int) -> float:
    clf.fast = config != "before"
    try:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    finally:
        clf.fast = True


class _BatchNormCalls(torch.overrides.TorchFunctionMode):
    """Counts F.batch_norm calls: the user's network makes them, the folded copy none."""

    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.nn.functional.batch_norm
        return func(*args, **(kwargs or {}))


def _map_difference(clf, images: torch.Tensor) -> dict:
    with _BatchNormCalls() as seen:
        after = fv.saliency(clf, images, None, method="gradcam")
    clf.fast = False
    try:
        before = fv.saliency(clf, images, None, method="gradcam")
    finally:
        clf.fast = True
    diff = (after - before).abs()
    peak = before.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return {"max_abs": float(diff.max()), "max_rel_to_peak": float((diff / peak).max()),
            "mean_rel": float(diff.sum() / before.abs().sum()), "peak_min": float(peak.min()),
            "after_ran_on_the_copy": seen.calls == 0, "batch_norm_calls_after": seen.calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=3, help="calls per timing (their mean)")
    ap.add_argument("--configs", nargs="+", default=["before", "after"])
    ap.add_argument("--label", default="", help="results file suffix (layers_fast[-label].json)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("FEATVIS_BENCH_THREADS", "2")))
    clf = fv.load_model("efficientnet-lite0")
    images = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    calls = _calls(clf, images)
    loads = [load_avg()]
    for config in args.configs:  # warm-up: builds the copies (fused and, for BatchNorm layers, unfused)
        for fn in calls.values():
            _time(clf, fn, config, 1)
    times: dict[str, dict[str, list[float]]] = {name: {c: [] for c in args.configs} for name in calls}
    for r in range(args.repeats):
        order = args.configs if r % 2 == 0 else args.configs[::-1]  # alternate which config goes first
        for name, fn in calls.items():
            for config in order:
                times[name][config].append(_time(clf, fn, config, args.inner))
        loads.append(load_avg())
        print(f"round {r + 1}/{args.repeats} (load {loads[-1]})", file=sys.stderr)
    medians = {name: {c: 1e3 * statistics.median(ts) for c, ts in per.items()} for name, per in times.items()}
    out = {"what": __doc__.split("\n\n")[0], "machine": machine(), "load_avg": loads, "repeats": args.repeats,
           "inner": args.inner, "images": len(images), "size": 224, "median_ms": medians,
           "ratios": _ratios(medians, args.configs, len(images)),
           "paired_ratios": _paired(times, args.configs, len(images))}
    if "before" in args.configs and "after" in args.configs:
        out["gradcam_maps_after_vs_before"] = _map_difference(clf, images)
    out["fast_status"] = {k: v for k, v in fv.models.fast.status(clf).items() if k != "options"}
    path = save("layers_fast" + (f"-{args.label}" if args.label else ""), out)
    print(json.dumps({k: out[k] for k in ("median_ms", "paired_ratios")}, indent=1))
    print(f"wrote {path}", file=sys.stderr)


def _ratios(medians: dict, configs: list[str], batch: int) -> dict:
    """full fast forward ÷ forward_until (≥ 2: the issue's goal for an early block), before ÷ after."""
    ratios = {}
    for tag in ("b1", f"b{batch}"):
        full = medians[f"full/{tag}"]["after"] if "after" in configs else None
        for layer in LAYERS:
            for c in configs:
                if full is not None:
                    ratios[f"full-fast / until-{layer} ({c}) /{tag}"] = full / medians[f"until-{layer}/{tag}"][c]
    if "before" in configs and "after" in configs:
        for name, per in medians.items():
            ratios[f"before / after: {name}"] = per["before"] / per["after"]
    return ratios


def _paired(times: dict, configs: list[str], batch: int) -> dict:
    """The same ratios, taken within each round (the calls ran back to back) and then the median over rounds: less
    moved by a machine whose load drifts during the run than a ratio of medians."""
    def median_ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    ratios = {}
    if "after" in configs:
        for tag in ("b1", f"b{batch}"):
            for layer in LAYERS:
                ratios[f"full-fast / until-{layer} (after) /{tag}"] = median_ratio(
                    times[f"full/{tag}"]["after"], times[f"until-{layer}/{tag}"]["after"])
    if "before" in configs and "after" in configs:
        for name, per in times.items():
            ratios[f"before / after: {name}"] = median_ratio(per["before"], per["after"])
    return ratios


if __name__ == "__main__":
    main()
