"""featvis Sobol (Fel et al. 2021) and HSIC (Novello et al. 2022) attribution against slow float64 reimplementations.

Xplique (the reference implementation, TensorFlow) is compared in its own venv by xplique_crosscheck.py. Here the
reference is written straight from the papers' equations, one loop per cell and design, in float64:
- Jansen's total-order estimator, Sᵀᵢ = (1 / 2N) Σⱼ (f(Aⱼ) − f(Cᵢⱼ))² / Var f(A) (Xplique's JansenEstimator);
- HSICᵢ = tr(Kᵢ H L H) / (N − 1)² with explicit N × N Gram matrices (Xplique's BinaryEstimator kernels:
  kᵢ = 1.5 − (xᵢ − x′ᵢ)², RBF output kernel of width the median of the outputs, interpolated).
Both are fed the same masks (featvis's design functions) and the same model outputs: the featvis run goes through
a wrapper that records every logit the model returned. The reference rebuilds the perturbed images of one photo
itself (its own nearest upsampling and x ⊙ M, one image at a time) and checks the recorded scores. The stochastic
reference: featvis's seed-to-seed agreement (Spearman of the cell indices, seeds 0 and 1; the designs are
scrambled Sobol sequences). Faithfulness: deletion/insertion AUC of Sobol, HSIC, RISE and random maps. Time: each
method's wall time against the bare forward passes it makes (N·(d + 2) for Sobol, N for HSIC).

efficientnet-lite0 (shipped weights), the 6 bundled photos or (`--photos N`) a seeded draw of N evaluation-set photos
(benchmarks/evalset.py, out/evalset), resized to --size (default 160 px, for 2 CPU cores),
each explained for its predicted class, Xplique's defaults: grid 8, nb_design 32 (Sobol) / 500 (HSIC), black
inpainting baseline, logit score.

    python benchmarks/sobol_crosscheck.py     # writes benchmarks/results/sobol_crosscheck.json
    python benchmarks/sobol_crosscheck.py --size 224 --batch-size 8 --photos 8 --no-faithfulness \
        --timing-rounds 1 --out sobol_crosscheck_224     # the native size, 8 drawn photos: ~75 min of 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.hsic import hsic_cells, hsic_design
from featvis.attribution.metrics import deletion, insertion, random_maps
from featvis.attribution.sobol import sobol_cells, sobol_design, to_image

from _common import machine, median_time, photo_set, save

CELLS, SOBOL_N, HSIC_N, RISE_MASKS = 8, 32, 500, 1000


class Recorder(nn.Module):
    """The classifier's net, keeping every logit it returns (in call order)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.logits = net, []

    def forward(self, z):
        out = self.net(z)
        self.logits.append(out.detach().clone())
        return out


def recorded(clf, net) -> tuple[fv.Classifier, Recorder]:
    rec = Recorder(net)
    wrapped = fv.Classifier.wrap(rec, mean=clf.mean.flatten().tolist(), std=clf.std.flatten().tolist(),
                                 labels=list(clf.labels), input_size=clf.input_size)
    return wrapped, rec


def scores_of(rec: Recorder, targets: torch.Tensor, per_image: int) -> torch.Tensor:
    logits = torch.cat(rec.logits)  # [B·M, K], image-major as featvis's masked_scores
    rec.logits.clear()
    return logits.gather(1, targets.repeat_interleave(per_image)[:, None])[:, 0].view(-1, per_image).double()


def jansen_reference(y: list[float], n: int, d: int) -> list[float]:
    """Sᵀᵢ from the paper's equation, loops only: y = f(A) (n), f(B) (n), f(C₁) … f(C_d) (n each)."""
    fa = y[:n]
    mean = sum(fa) / n
    var = sum((v - mean) ** 2 for v in fa) / (n - 1)
    out = []
    for i in range(d):
        fc = y[2 * n + i * n: 2 * n + (i + 1) * n]
        out.append(sum((fa[j] - fc[j]) ** 2 for j in range(n)) / (2 * n * var))
    return out


def hsic_reference(masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HSICᵢ = tr(Kᵢ H L H) / (N − 1)², explicit float64 Gram matrices, one cell at a time."""
    masks, y = masks.double(), y.double()
    n, d = masks.shape
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    ordered = y.sort().values
    sigma = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2  # the median, interpolated (Xplique's percentile 50)
    gram_l = torch.exp(-(y[:, None] - y[None, :]) ** 2 / (2 * sigma ** 2))
    hlh = h @ gram_l @ h
    return torch.stack([torch.trace((1.5 - (masks[:, i, None] - masks[None, :, i]) ** 2) @ hlh) / (n - 1) ** 2
                        for i in range(d)])


def nearest_reference(cell: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling, pixel centres: source index ⌊(i + ½) · s / size⌋."""
    s = cell.shape[-1]
    idx = [min(s - 1, int((i + 0.5) * s / size)) for i in range(size)]
    return cell[idx][:, idx]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten() - a.double().mean(), b.double().flatten() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double())


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def timing(clf, x: torch.Tensor, targets: torch.Tensor, bs: int, rounds: int = 2,
           methods: tuple[str, ...] = ("sobol", "hsic")) -> dict:
    """Each method on photo 0 against the same number of bare forwards (same batch size), alternated `rounds`
    times and taken as medians, so both see the same load on a shared machine."""
    d = CELLS * CELLS
    out = {}
    for method, kw, count in (("sobol", {"designs": SOBOL_N}, SOBOL_N * (d + 2)),
                              ("hsic", {"designs": HSIC_N}, HSIC_N)):
        if method not in methods:
            continue
        batch = x[:1].expand(bs, -1, -1, -1).contiguous()
        method_s, bare_s = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            saliency(clf, x[:1], targets[:1], method=method, cells=CELLS, batch_size=bs, **kw)
            method_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                for start in range(0, count, bs):
                    clf(batch[: min(bs, count - start)])
            bare_s.append(time.perf_counter() - t0)
        m, b = statistics.median(method_s), statistics.median(bare_s)
        out[method] = {"method_s_per_image": m, "bare_forwards_s": b, "forwards": count, "ratio": m / b,
                       "rounds_method_s": method_s, "rounds_bare_s": bare_s}
        print(f"timing {method}: {m:.1f} s vs {b:.1f} s of bare forwards ({m / b:.2f}x)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only-timing", action="store_true", help="add the interleaved timing to the saved JSON")
    parser.add_argument("--photos", type=int, default=0,
                        help="a seeded draw of N evaluation-set photos (0: the 6 bundled)")
    parser.add_argument("--photo-seed", type=int, default=0)
    parser.add_argument("--methods", default="sobol,hsic", help="which of sobol, hsic to check")
    parser.add_argument("--timing-rounds", type=int, default=2)
    parser.add_argument("--no-faithfulness", action="store_true", help="skip deletion/insertion (needs both methods)")
    parser.add_argument("--out", default="sobol_crosscheck", help="results/<OUT>.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    clf = fv.load_model("efficientnet-lite0")
    names, x = photo_set(clf, args.photos, args.photo_seed)
    wanted = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    x = F.interpolate(x, size=args.size, mode="bilinear", antialias=True).clamp(0, 1)
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    if args.only_timing:
        import json

        from _common import RESULTS

        out = json.loads((RESULTS / f"{args.out}.json").read_text())
        out["timing_interleaved"] = timing(clf, x, targets, args.batch_size, args.timing_rounds, wanted)
        print("wrote", save(args.out, out))
        return
    net = clf.net.eval()
    rclf, rec = recorded(clf, net)
    bs, d = args.batch_size, CELLS * CELLS
    out: dict = {"machine": machine(), "model": "efficientnet-lite0", "photos": names, "size": args.size,
                 "targets": [clf.labels[int(t)] for t in targets], "batch_size": bs,
                 "options": {"cells": CELLS, "sobol_designs": SOBOL_N, "hsic_designs": HSIC_N, "baseline": "black",
                             "score": "logit", "rise_masks": RISE_MASKS}}
    xb = x[:1].expand(bs, -1, -1, -1).contiguous()
    with torch.no_grad():
        forward = median_time(lambda: rclf(xb), repeats=3, warmup=1) / bs
    rec.logits.clear()
    out["forward_s_per_image"] = forward
    print(f"bare forward: {forward * 1e3:.1f} ms/image at batch {bs}", flush=True)

    cells, times, per_image = {}, {}, {"sobol": SOBOL_N * (d + 2), "hsic": HSIC_N}
    for method, fn in (("sobol", sobol_cells), ("hsic", hsic_cells)):
        if method not in wanted:
            continue
        kw = {"cells": CELLS, "designs": SOBOL_N if method == "sobol" else HSIC_N, "batch_size": bs}
        for seed in (0, 1):
            t0 = time.perf_counter()
            cells[method, seed] = fn(rclf, x, targets, seed=seed, **kw)
            times[method, seed] = time.perf_counter() - t0
            ys = scores_of(rec, targets, per_image[method])
            if seed == 0:
                y0 = ys
            print(f"{method} seed {seed}: {times[method, seed]:.1f} s", flush=True)
        # --- the float64 reference on the same masks and outputs (seed 0) ---
        if method == "sobol":
            design = sobol_design(CELLS, SOBOL_N, 0)
            ref = torch.tensor([jansen_reference(y0[i].tolist(), SOBOL_N, d) for i in range(len(names))],
                               dtype=torch.float64)
        else:
            design = hsic_design(CELLS, HSIC_N, 0)
            ref = torch.stack([hsic_reference(design, y0[i]) for i in range(len(names))])
        ours = cells[method, 0]
        # the perturbation, rebuilt by hand for photo 0 on a spread of masks, one image at a time
        picks = torch.linspace(0, design.shape[0] - 1, 24).long().tolist()
        with torch.no_grad():
            redo = [float(clf(x[:1] * nearest_reference(design[k].view(CELLS, CELLS), args.size))[0, targets[0]])
                    for k in picks]
        pert = max(abs(a - float(y0[0, k])) / abs(float(y0[0, k])) for a, k in zip(redo, picks, strict=True))
        s2s = [spearman(cells[method, 0][i], cells[method, 1][i]) for i in range(len(names))]
        p2p = [pearson(cells[method, 0][i], cells[method, 1][i]) for i in range(len(names))]
        out[method] = {
            "vs_float64_reference": {"pearson": [pearson(ours[i], ref[i]) for i in range(len(names))],
                                     "max_rel_diff": [max_rel(ours[i], ref[i]) for i in range(len(names))],
                                     "perturbed_scores_max_rel_diff": pert},
            "seed_to_seed": {"spearman": s2s, "pearson": p2p, "spearman_mean": statistics.mean(s2s)},
            "seconds": {f"total_{len(names)}_photos_seed0": times[method, 0],
                        "per_image": times[method, 0] / len(names),
                        "forwards_per_image": per_image[method],
                        "overhead_vs_bare_forwards": times[method, 0] / (len(names) * per_image[method] * forward)},
            "sum_of_indices_per_image": ours.sum(1).tolist(),
        }
        print(method, out[method]["vs_float64_reference"], out[method]["seed_to_seed"]["spearman_mean"], flush=True)
        save(args.out, out)

    if args.no_faithfulness:
        out["timing_interleaved"] = timing(clf, x, targets, bs, args.timing_rounds, wanted)
        print("wrote", save(args.out, out))
        return
    # --- faithfulness: deletion / insertion AUC (RISE protocol, probability of the predicted class) ---
    side = args.size
    maps = {"sobol": to_image(cells["sobol", 0], CELLS, (side, side), torch.float32),
            "hsic": to_image(cells["hsic", 0], CELLS, (side, side), torch.float32)}
    t0 = time.perf_counter()
    maps["rise"] = saliency(clf, x, targets, method="rise", masks=RISE_MASKS, seed=0, batch_size=bs)
    out["rise_seconds_per_image"] = (time.perf_counter() - t0) / len(names)
    maps["random"] = random_maps(x, seed=0)
    faith = {}
    for name, m in maps.items():
        dele = deletion(clf, x, m, pixels_per_step=4 * side, batch_size=bs, targets=targets).auc
        ins = insertion(clf, x, m, pixels_per_step=4 * side, batch_size=bs, targets=targets).auc
        faith[name] = {"deletion_auc": float(dele.mean()), "insertion_auc": float(ins.mean()),
                       "deletion_per_image": dele.tolist(), "insertion_per_image": ins.tolist()}
        print(f"{name}: deletion {faith[name]['deletion_auc']:.3f} insertion {faith[name]['insertion_auc']:.3f}",
              flush=True)
    out["faithfulness"] = {"pixels_per_step": 4 * side, "lower_deletion_higher_insertion_is_better": True, **faith}
    out["timing_interleaved"] = timing(clf, x, targets, bs, args.timing_rounds, wanted)
    print("wrote", save(args.out, out))


if __name__ == "__main__":
    main()
