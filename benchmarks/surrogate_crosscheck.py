"""featvis LIME / KernelSHAP against Captum's `Lime` / `KernelShap` with the same segments, kernel and baseline.

efficientnet-lite0 (shipped weights), the 6 bundled photos at 224 px, each explained for its predicted class (the
logit), segments an 8 × 8 grid (and SLIC superpixels for one more comparison), baseline the model's mean colour,
256 coalitions per image. Captum gets featvis's segments as its feature mask and the same baseline; its Lime the
same kernel (its default: cosine distance of the images, width 1) and a Ridge(alpha=1) as featvis's default (Captum's
own default is a Lasso, α = 0.01); its KernelShap is unchanged.

Compared per image, on the segment coefficients (M = 64):
- "replayed": Captum fed featvis's coalitions (tests/_captum_surrogate.py): Pearson, Spearman, max |difference|
  relative to the largest |coefficient|; this checks kernel, weights and fit, and should agree to float precision.
- "seed to seed": featvis with two seeds, and Captum with two torch seeds (its own draws): how far sampling alone
  moves the coefficients at this budget; and featvis vs Captum on their own draws, which should land as close as
  either library to itself.
Timings: whole attributions of the 6 images (segments, model calls, fit), featvis and Captum alternating in one run,
`--repeats` rounds, medians; featvis/Captum ratios.

    python benchmarks/surrogate_crosscheck.py     # writes benchmarks/results/surrogate_crosscheck.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch

import featvis as fv
from _captum_surrogate import captum_kernel_shap, captum_lime, segment_values
from featvis.attribution.integrated import make_baseline
from featvis.attribution.surrogate import surrogate_fit

from _common import machine, photo_set, save

SEED_A, SEED_B = 0, 1


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(a.argsort().argsort().double(), b.argsort().argsort().double())


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Per-image agreement of [B, M] coefficient sets, medians and worst over the images."""
    rows = [(pearson(a, b), spearman(a, b), float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)))
            for a, b in zip(ours, ref, strict=True)]
    p, s, r = zip(*rows, strict=True)
    return {"pearson_median": statistics.median(p), "pearson_min": min(p),
            "spearman_median": statistics.median(s), "spearman_min": min(s),
            "max_rel_diff_median": statistics.median(r), "max_rel_diff_max": max(r),
            "per_image": [{"pearson": a, "spearman": b, "max_rel_diff": c} for a, b, c in rows]}


def run_featvis(clf, x, targets, kind, seed, args, segments="grid"):
    t0 = time.perf_counter()
    fit = surrogate_fit(clf, x, targets, kind=kind, segments=segments, cells=args.cells, samples=args.samples,
                        baseline="mean", seed=seed, batch_size=args.batch_size)
    return fit, time.perf_counter() - t0


def run_captum(clf, x, targets, kind, fit, args, seed=None):
    """Captum on each image with featvis's segments; featvis's coalitions when seed is None, else its own draws."""
    base = make_baseline(clf, x, "mean")
    out = torch.zeros_like(fit.coefficients)
    t0 = time.perf_counter()
    for i in range(x.shape[0]):
        m = int(fit.counts[i])
        rows = None if seed is not None else fit.coalitions[i, :, :m]
        explainer = captum_kernel_shap(clf, rows) if kind == "kernel-shap" else captum_lime(clf, rows, alpha=1.0)
        if seed is not None:
            torch.manual_seed(seed * 1000 + i)
        with torch.no_grad():
            attr = explainer.attribute(x[i:i + 1], baselines=base[i:i + 1], target=int(targets[i]),
                                       feature_mask=fit.labels[i][None, None], n_samples=args.samples,
                                       perturbations_per_eval=args.batch_size)
        out[i, :m] = segment_values(attr, fit.labels[i], m)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="extra timing rounds beyond the measured runs")
    ap.add_argument("--photos", type=int, default=0, help="a seeded draw of N evaluation-set photos (0: the 6 bundled)")
    ap.add_argument("--photo-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", torch.get_num_threads())))
    clf = fv.load_model("efficientnet-lite0")
    names, x = photo_set(clf, args.photos, args.photo_seed)
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    seeds_a = [SEED_A * 100 + i for i in range(len(names))]  # per-image seeds, as the task runner gives
    seeds_b = [SEED_B * 100 + i for i in range(len(names))]
    results: dict = {"model": "efficientnet-lite0", "images": names, "targets": targets.tolist(),
                     "samples": args.samples, "cells": args.cells, "batch_size": args.batch_size,
                     "baseline": "mean", "score": "logit", "machine": machine(), "methods": {}}
    for kind in ("kernel-shap", "lime"):
        times = {"featvis": [], "captum": [], "captum_replayed": []}
        fit_a, t = run_featvis(clf, x, targets, kind, seeds_a, args)
        times["featvis"].append(t)
        cap_a, t = run_captum(clf, x, targets, kind, fit_a, args, seed=SEED_A)
        times["captum"].append(t)
        fit_b, t = run_featvis(clf, x, targets, kind, seeds_b, args)
        times["featvis"].append(t)
        cap_b, t = run_captum(clf, x, targets, kind, fit_a, args, seed=SEED_B)
        times["captum"].append(t)
        replayed, t = run_captum(clf, x, targets, kind, fit_a, args)
        times["captum_replayed"].append(t)
        for _ in range(args.repeats):
            times["featvis"].append(run_featvis(clf, x, targets, kind, seeds_a, args)[1])
            times["captum"].append(run_captum(clf, x, targets, kind, fit_a, args, seed=SEED_A)[1])
        ours_a, ours_b = fit_a.coefficients, fit_b.coefficients
        entry = {
            "replayed": agreement(ours_a, replayed),
            "featvis_seed_to_seed": agreement(ours_b, ours_a),
            "captum_seed_to_seed": agreement(cap_b, cap_a),
            "featvis_vs_captum_own_draws": agreement(ours_a, cap_a),
            "seconds": {k: statistics.median(v) for k, v in times.items()},
            "seconds_all": times,
        }
        entry["time_ratio_featvis_over_captum"] = entry["seconds"]["featvis"] / entry["seconds"]["captum"]
        if kind == "kernel-shap":  # efficiency: Σφ = f(x) − f(x₀), pinned by the 10⁶ weights
            gap = fit_a.scores[:, 0] - fit_a.scores[:, 1]
            entry["efficiency_max_rel_error"] = float(((ours_a.sum(-1) - gap).abs() / gap.abs()).max())
        results["methods"][kind] = entry
        print(kind, {k: entry[k] for k in ("seconds", "time_ratio_featvis_over_captum")},
              {k: (round(entry[k]["pearson_median"], 4), round(entry[k]["spearman_median"], 4),
                   f"{entry[k]['max_rel_diff_max']:.2e}")
               for k in ("replayed", "featvis_seed_to_seed", "captum_seed_to_seed", "featvis_vs_captum_own_draws")},
              flush=True)
    # SLIC superpixels: the same replayed check on a colour-following segmentation (KernelSHAP)
    slic_fit, t = run_featvis(clf, x, targets, "kernel-shap", seeds_a, args, segments="slic")
    slic_cap, t_cap = run_captum(clf, x, targets, "kernel-shap", slic_fit, args)
    results["slic_kernel_shap_replayed"] = {"segments": slic_fit.counts.tolist(), "seconds_featvis": t,
                                            "seconds_captum": t_cap, **agreement(slic_fit.coefficients, slic_cap)}
    print("slic", slic_fit.counts.tolist(), round(results["slic_kernel_shap_replayed"]["pearson_median"], 6),
          f"{results['slic_kernel_shap_replayed']['max_rel_diff_max']:.2e}", flush=True)
    print(save("surrogate_crosscheck", results))


if __name__ == "__main__":
    main()
