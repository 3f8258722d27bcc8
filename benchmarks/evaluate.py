"""Which explanation to trust for EfficientNet-Lite0: every attribution method × every metric on the bundled photos,
with the random-map baseline, bootstrap intervals and beats-random flags; the known results (Adebayo: guided backprop
fails randomization; RISE vs Grad-CAM on deletion/insertion; SmoothGrad family on ROAD); the cost per image per
method and metric; and each metric's time over the time of the bare batched forwards it needs.

    python benchmarks/evaluate.py [--quick] [--steps-pixels N]
    python benchmarks/evaluate.py --all --dataset out/evalset --draw 10 --out evaluate-all --no-ratios  # issue 26

Settings below are what a shared 2-core CPU affords in under an hour; each departure from a paper's default is
named in the JSON (`settings`). Results: benchmarks/results/evaluate.json (rewritten after every method).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.attribution import metrics as curves
from featvis.attribution.evaluation import evaluate_batch
from featvis.attribution.leaderboard import RANDOM, summarize
from featvis.attribution.road import linear_impute, removal_masks, road
from featvis.attribution.robust_metrics import infidelity
from featvis.attribution.sanity import FLAG_SPEARMAN
from featvis.models.classifier import frozen

from _common import machine, save

# Method options on this CPU (paper defaults in brackets); cheap methods first, so a partial run is still useful.
METHODS = {
    "gradient": {}, "input-x-gradient": {}, "guided-backprop": {}, "gradcam": {}, "gradcam++": {}, "layercam": {},
    "smoothgrad": {"samples": 10}, "smoothgrad-sq": {"samples": 10}, "vargrad": {"samples": 10},  # [50]
    "integrated-gradients": {"steps": 16},  # [50]
    "expected-gradients": {"samples": 16},  # references: the other photos
    "rise": {"masks": 1000},  # [4000]
    "scorecam": {"layer": "_blocks.15"},  # 320 channels instead of _bn1's 1280 (4× fewer forwards)
}
# The methods registered since (issue 26), cheap first; `--all` adds them (every registered method that applies
# to a CNN: attention-rollout and chefer are ViT-only).
NEW_METHODS = {
    "deeplift": {}, "lrp": {}, "deconvnet": {}, "guided-gradcam": {},
    "deeplift-shap": {"samples": 8},  # [16]
    "smooth:integrated-gradients": {"samples": 4, "steps": 8},  # [samples 50, steps 50]
    "occlusion": {"window": 32, "stride": 16},  # [16, 8]: 169 forwards instead of 729
    "hsic": {"designs": 128},  # [500]
    "lime": {"samples": 128}, "kernel-shap": {"samples": 128},  # [256]
    "sobol": {"designs": 8},  # [32]: 8 · (64 + 2) = 528 forwards instead of 2112
}
CORE = ("deletion", "insertion", "road-morf", "road-lerf", "road-gap", "infidelity", "sparseness", "seconds")
# Metrics that re-run the method: only where the method costs one or a few passes per image.
SENSITIVITY = {"gradient", "input-x-gradient", "guided-backprop", "gradcam", "gradcam++", "layercam"}
EMPRT = SENSITIVITY | {"smoothgrad", "smoothgrad-sq", "vargrad", "integrated-gradients", "expected-gradients"}
RANDOMIZATION = {"gradient", "guided-backprop"}
ROAD_FRACTIONS = (0.2, 0.5, 0.8)  # [0.1 … 0.9 by 0.1]
SENS_SAMPLES = 3  # [10]
INFIDELITY_SAMPLES = 8  # [16]


def bare_forward_seconds(clf, images: torch.Tensor, count: int, chunk: int) -> float:
    """Time of `count` forwards of images like these in chunks of `chunk`, nothing else (no_grad, eval)."""
    x = images[:1].expand(chunk, -1, -1, -1).contiguous()
    with torch.no_grad(), frozen(clf):
        clf(x)
        t0 = time.perf_counter()
        done = 0
        while done < count:
            n = min(chunk, count - done)
            clf(x[:n])
            done += n
    return time.perf_counter() - t0


def _paired(metric, bare, repeats: int = 5) -> tuple[float, float, float]:
    """(metric s, bare s, ratio): the two alternate `repeats` times, so a drift of a shared machine or of the heap hits
    both; medians, and the median of the per-pair ratios."""
    ts, fs, rs = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        metric()
        t = time.perf_counter() - t0
        f = bare()
        ts.append(t)
        fs.append(f)
        rs.append(t / f)
    return statistics.median(ts), statistics.median(fs), statistics.median(rs)


def ratios(clf, photos: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, pixels: int, chunk: int) -> dict:
    """Metric time ÷ time of the same number of bare forwards in the same chunks (median of 5 alternating pairs)."""
    b, _, h, w = photos.shape
    n = -(-h * w // pixels)
    cases = {
        "deletion": (lambda: curves.deletion(clf, photos, maps, pixels_per_step=pixels, batch_size=chunk),
                     b * (n + 1) + b, None),
        "road": (lambda: road(clf, photos, maps, fractions=ROAD_FRACTIONS, batch_size=chunk),
                 b * 2 * len(ROAD_FRACTIONS) + b, "the rest is the imputation's linear solve, not model calls"),
        "infidelity": (lambda: infidelity(clf, photos, maps, targets, samples=INFIDELITY_SAMPLES, batch_size=chunk),
                       b * INFIDELITY_SAMPLES + b, None),
    }
    out = {}
    for name, (run, count, note) in cases.items():
        t, fwd, ratio = _paired(run, lambda count=count: bare_forward_seconds(clf, photos, count, chunk))
        out[name] = {"seconds": t, "forwards": count, "forward_seconds": fwd, "ratio": ratio}
        if note:
            out[name]["note"] = note
    return out


def road_tolerance_effect(clf, photos: torch.Tensor, maps: torch.Tensor) -> dict:
    """How much the CG tolerance moves ROAD's probabilities (default tolerance vs a 100× tighter solve)."""
    loose = road(clf, photos, maps, fractions=(0.5, 0.9), noise=0.0)
    tight = road(clf, photos, maps, fractions=(0.5, 0.9), noise=0.0, tol=1e-5)
    morf, _ = removal_masks(maps, (0.9,))
    a = linear_impute(photos[:1], morf[:1, 0])
    c = linear_impute(photos[:1].double(), morf[:1, 0], tol=1e-9, max_iter=5000)
    return {"max_abs_prob_diff": float(torch.cat([(loose.morf - tight.morf).abs(), (loose.lerf - tight.lerf).abs()])
                                       .max()),
            "max_abs_pixel_diff_vs_float64": float((a.double() - c).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 methods, 2 photos (a smoke run)")
    ap.add_argument("--steps-pixels", type=int, default=224 * 16, help="pixels per deletion/insertion step [224]")
    ap.add_argument("--ratios-only", action="store_true", help="recompute the cost ratios into the existing JSON")
    ap.add_argument("--methods", default="", help="comma-separated subset, saved to evaluate-<first>.json "
                    "without the random baseline (for a second process); --merge folds it in")
    ap.add_argument("--dataset", type=Path, default=None,
                    help="a folder of images instead of the bundled photos (e.g. out/evalset: benchmarks/evalset.py)")
    ap.add_argument("--chunk", type=int, default=8, help="images per evaluate_batch call")
    ap.add_argument("--all", action="store_true", help="also the methods registered in issue 26 (NEW_METHODS)")
    ap.add_argument("--draw", type=int, default=0, help="a seeded random draw of N images of --dataset (0: all)")
    ap.add_argument("--draw-seed", type=int, default=0)
    ap.add_argument("--out", default="evaluate", help="results/<OUT>.json (default evaluate)")
    ap.add_argument("--no-ratios", action="store_true", help="skip the metric-cost ratios and the ROAD tolerance")
    ap.add_argument("--executors", action="store_true",
                    help="time `fv.evaluate` over --dataset locally (2 threads) and with Ray (1x2, 2x1 workers)")
    ap.add_argument("--merge", default="", help="fold evaluate-<NAME>.json's records into evaluate.json")
    args = ap.parse_args()
    if args.merge:
        merge_into_main(args.merge)
        return
    fv.tune_allocator()  # as the CLI does: freed activations stay in the heap (see featvis/_alloc.py)
    torch.set_num_threads(2)
    clf = fv.load_model()
    if args.executors:
        executor_cost(clf, args.dataset or Path(fv.samples.path("chelsea")).parent)
        return
    if args.dataset:
        files = sorted(p for p in args.dataset.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if args.draw:
            pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(args.draw_seed))[:args.draw]
            files = [files[i] for i in sorted(pick.tolist())]
        names = [p.stem for p in files]
        photos = fv.load_images(files, clf)
    else:
        names = fv.samples.names()
        photos = torch.cat([fv.samples.load(n, clf) for n in names])
    if args.ratios_only:
        import json

        from _common import RESULTS

        data = json.loads((RESULTS / "evaluate.json").read_text())
        with torch.no_grad():
            targets = clf(photos).argmax(-1)
        maps = fv.attribution.saliency(clf, photos, targets)
        data["ratios"] = ratios(clf, photos, maps, targets, args.steps_pixels, 32)
        data["road_tolerance"] = road_tolerance_effect(clf, photos[:2], maps[:2])
        print(json.dumps({"ratios": data["ratios"], "road_tolerance": data["road_tolerance"]}, indent=1))
        print(f"saved {save('evaluate', data)}")
        return
    methods = METHODS | NEW_METHODS if args.all else dict(METHODS)
    part = [m.strip() for m in args.methods.split(",") if m.strip()]
    if part:
        methods = {k: (METHODS | NEW_METHODS).get(k, {}) for k in part}
    if args.quick:
        photos, names = photos[:2], names[:2]
        methods = {k: methods[k] for k in ("gradient", "gradcam", "guided-backprop")}
    with torch.no_grad():
        targets = clf(photos).argmax(-1)
    seeds = list(range(len(names)))
    metric_options = {"curves": {"pixels_per_step": args.steps_pixels}, "road": {"fractions": ROAD_FRACTIONS},
                      "max-sensitivity": {"samples": SENS_SAMPLES}, "infidelity": {"samples": INFIDELITY_SAMPLES}}
    settings = {"methods": methods, "pixels_per_step": args.steps_pixels, "road_fractions": ROAD_FRACTIONS,
                "max_sensitivity_samples": SENS_SAMPLES, "infidelity_samples": INFIDELITY_SAMPLES,
                "max_sensitivity_for": sorted(SENSITIVITY), "emprt_for": sorted(EMPRT),
                "randomization_for": sorted(RANDOMIZATION), "photos": names,
                "dataset": str(args.dataset or "bundled photos"), "targets": targets.tolist(),
                "draw": {"images": args.draw, "seed": args.draw_seed} if args.draw else None,
                "score": "softmax probability of the predicted class (all curve metrics)"}
    records = [{"index": i, "target": int(targets[i]), "scores": {}, "seconds": {}, "curves": {}}
               for i in range(len(names))]
    data = {"machine": machine(), "model": clf.id, "settings": settings}

    def merge(new):
        for rec, add in zip(records, new, strict=True):
            for key in ("scores", "seconds", "curves"):
                rec[key].update(add[key])

    def run(name, metrics, opts, rb=False):
        t0 = time.perf_counter()
        new = []
        for i in range(0, len(names), args.chunk):  # expected-gradients' references: the chunk's other images
            new += evaluate_batch(clf, photos[i:i + args.chunk], targets[i:i + args.chunk],
                                  [name] if name != RANDOM else [], metrics, seed=seeds[i:i + args.chunk],
                                  method_options={name: opts},
                                  metric_options=metric_options, random_baseline=rb)
        merge(new)
        print(f"{name:22s} {time.perf_counter() - t0:7.1f} s", flush=True)

    out_name = f"{args.out}-{part[0]}" if part else args.out
    every = (*CORE, "max-sensitivity", "emprt", "randomization")
    if not part:
        run(RANDOM, every, {}, rb=True)
    for name, opts in methods.items():
        metrics = list(CORE)
        if name in SENSITIVITY:
            metrics.append("max-sensitivity")
        if name in EMPRT:
            metrics.append("emprt")
        if name in RANDOMIZATION:
            metrics.append("randomization")
        run(name, metrics, opts)
        board = summarize(records, seed=0)
        data.update(records=records, leaderboard=board.to_dict())
        save(out_name, data)
    if part:
        return
    finish(data, records, args.out)
    if args.no_ratios:
        return
    grad_maps = fv.attribution.saliency(clf, photos, targets)
    data["ratios"] = ratios(clf, photos, grad_maps, targets, args.steps_pixels, 32)
    data["road_tolerance"] = road_tolerance_effect(clf, photos[:2], grad_maps[:2])
    save(args.out, data)


# The executor comparison's run: the methods × metrics a user would start with, paper-sized options where cheap.
EXEC_METHODS = ("gradient", "gradcam", "smoothgrad", "integrated-gradients")
EXEC_OPTIONS = {"smoothgrad.samples": 10, "integrated-gradients.steps": 16,
                "curves.pixels_per_step": 224 * 16}


def executor_cost(clf, dataset: Path, images: int = 8) -> None:
    """Seconds per image per method (all default metrics) through the tasks layer: local vs Ray at equal cores, on
    the first `images` files of the data set."""
    import json
    import shutil
    import tempfile

    import ray

    from featvis.tasks.ray_executor import RayExecutor

    from _common import RESULTS

    root = Path(tempfile.mkdtemp(prefix="featvis-evalcost-"))
    runs = {}
    files = sorted(str(p) for p in dataset.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:images]

    def one(name, executor):
        t0 = time.perf_counter()
        res = fv.evaluate(clf, files, methods=EXEC_METHODS, out=root / name, executor=executor,
                          options=EXEC_OPTIONS, batch_size=4)
        seconds = time.perf_counter() - t0
        n = len(res.records) if hasattr(res, "records") else None
        runs[name] = {"seconds": round(seconds, 1), "images": n,
                      "seconds_per_image_per_method": round(seconds / n / len(EXEC_METHODS), 2) if n else None}
        print(name, runs[name], flush=True)

    one("local", "local")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        one("ray-1x2", RayExecutor(workers=1, cpus_per_worker=2))
        one("ray-2x1", RayExecutor(workers=2, cpus_per_worker=1))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    data = json.loads((RESULTS / "evaluate.json").read_text()) if (RESULTS / "evaluate.json").exists() else {}
    data["executor_cost"] = {"dataset": str(dataset), "images": len(files), "methods": EXEC_METHODS,
                             "options": EXEC_OPTIONS, "metrics": "default (all but randomization)", "batch_size": 4,
                             "runs": runs}
    for name in ("ray-1x2", "ray-2x1"):
        data["executor_cost"][f"{name}_overhead"] = round(runs[name]["seconds"] / runs["local"]["seconds"] - 1, 3)
    save("evaluate", data)


def finish(data: dict, records: list, out: str = "evaluate") -> None:
    """Leaderboard and known-result comparisons from the records; saved, and printed."""
    board = summarize(records, seed=0)
    lb = {(e.method, e.metric): e for e in board.entries}
    known = {}
    if ("guided-backprop", "randomization") in lb:
        known["adebayo_randomization"] = {
            "claim": "guided backprop stays similar when the top layers are randomized; the gradient does not",
            "gradient": lb[("gradient", "randomization")].mean,
            "guided-backprop": lb[("guided-backprop", "randomization")].mean, "flag_threshold": FLAG_SPEARMAN}
    if ("rise", "deletion") in lb:
        known["rise_vs_gradcam"] = {
            "paper_resnet50": {"gradcam": [0.123, 0.677], "rise": [0.108, 0.727]},
            "lite0_here": {m: [lb[(m, "deletion")].mean, lb[(m, "insertion")].mean] for m in ("gradcam", "rise")}}
    known["smoothgrad_family_on_road"] = {
        m: {k: lb[(m, k)].mean for k in ("road-morf", "road-lerf", "road-gap")}
        for m in ("gradient", "smoothgrad", "smoothgrad-sq", "vargrad") if (m, "road-gap") in lb}
    data["known_results"] = known
    data.update(records=records, leaderboard=board.to_dict())
    print(f"saved {save(out, data)}")
    for e in board.entries:
        flag = "" if e.beats_random is None else ("  beats random" if e.beats_random else "  NOT better than random")
        print(f"{e.method:22s} {e.metric:16s} {e.mean:9.4f} [{e.low:9.4f}, {e.high:9.4f}]{flag}")


def merge_into_main(name: str) -> None:
    import json

    from _common import RESULTS

    data = json.loads((RESULTS / "evaluate.json").read_text())
    extra = json.loads((RESULTS / f"evaluate-{name}.json").read_text())
    for rec, add in zip(data["records"], extra["records"], strict=True):
        for key in ("scores", "seconds", "curves"):
            rec[key].update(add[key])
    data["settings"]["methods"].update(extra["settings"]["methods"])
    finish(data, data["records"])


if __name__ == "__main__":
    main()
