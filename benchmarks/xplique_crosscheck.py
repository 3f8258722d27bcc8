"""featvis Sobol (Fel et al. 2021) and HSIC (Novello et al. 2022) attribution against Xplique, their authors' library.

Xplique 2.0.2 is TensorFlow; its `TorchWrapper` runs a PyTorch model inside its explainers, so both libraries explain
the same efficientnet-lite0 (shipped weights) on the same photos: a seeded draw of `--photos` evaluation-set photos
(benchmarks/evalset.py, out/evalset) at `--size` px, each for its predicted class (the logit, Xplique's default
operator), Xplique's defaults (grid 8, nb_design 32 for Sobol, 500 for HSIC, "inpainting" = black baseline) and
model batch `--batch-size` on both sides. It needs a side venv (Xplique pins tensorflow[and-cuda] <= 2.20 and
torch <= 2.10; scripts/venv_xplique.sh installs it --no-deps over tensorflow-cpu 2.20 beside torch 2.13.0):

    . scripts/venv_xplique.sh && python benchmarks/xplique_crosscheck.py   # writes results/xplique_crosscheck.json

Per method, three things:
1. The same design. Xplique's masks (its unscrambled TF Sobol sequence, one fixed design) go through featvis's
   perturbation and estimator (`masked_scores` + `jansen_total_order` / `hsic_scores`), against Xplique's `explain`
   on the same photos. Xplique's cell indices are read from its own estimator on the scores its explain made (a
   recording wrapper on the torch side keeps every logit), and checked to resize to the map explain returned.
   Reported: the perturbed scores' max relative difference, and the cell indices' Pearson / Spearman / max relative
   difference (HSIC: Xplique divides by N, featvis by (N − 1)², so featvis's is rescaled by (N − 1)² / N first).
2. featvis's own designs. featvis scrambles its Sobol sequence and seeds it (seeds 0 and 1, independent designs):
   featvis-vs-Xplique agreement set against featvis's seed-to-seed agreement, the reference's sampling noise.
3. Time per image at batch `--batch-size`, featvis's `saliency` vs Xplique's `explain` (TorchWrapper with
   requires_grad=False, the black-box setting, so its forwards build no graph), alternated `--rounds` rounds on the
   first `--timing-photos` photos after an untimed call of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf  # imported before torch: Xplique's advice for its TorchWrapper
import torch
import torch.nn.functional as F
from xplique.attributions import HsicAttributionMethod, SobolAttributionMethod
from xplique.wrappers import TorchWrapper

sys.path.insert(0, os.path.dirname(__file__))
from sobol_crosscheck import Recorder, max_rel, pearson, spearman

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.hsic import hsic_cells, hsic_scores
from featvis.attribution.sobol import jansen_total_order, masked_scores, sobol_cells

from _common import alternate, machine, photo_set, save

CELLS = 8
DESIGNS = {"sobol": 32, "hsic": 500}
EXPLAINERS = {"sobol": SobolAttributionMethod, "hsic": HsicAttributionMethod}
FEATVIS_CELLS = {"sobol": sobol_cells, "hsic": hsic_cells}


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, object]:
    """Per image Pearson, Spearman and max relative difference (to the reference's largest |value|), and their
    worst case over the images."""
    p = [pearson(a, b) for a, b in zip(ours, ref, strict=True)]
    s = [spearman(a, b) for a, b in zip(ours, ref, strict=True)]
    r = [max_rel(a, b) for a, b in zip(ours, ref, strict=True)]
    return {"pearson_min": min(p), "pearson_median": statistics.median(p), "spearman_min": min(s),
            "spearman_median": statistics.median(s), "max_rel_diff_max": max(r), "pearson": p, "spearman": s,
            "max_rel_diff": r}


def xplique_run(method: str, wrapped: TorchWrapper, rec: Recorder, x: torch.Tensor, targets: torch.Tensor,
                bs: int):
    """Xplique's explain on every photo: (maps [B, H, W], cell indices [B, d] from its estimator on its own scores,
    the scores [B, M], its masks [M, s, s])."""
    explainer = EXPLAINERS[method](wrapped, grid_size=CELLS, nb_design=DESIGNS[method], batch_size=bs)
    inputs = x.permute(0, 2, 3, 1).numpy()  # NHWC, as Xplique takes images
    onehot = tf.one_hot(targets.numpy(), 1000).numpy()
    rec.logits.clear()
    maps = explainer.explain(inputs, onehot).numpy()[..., 0]
    logits = torch.cat(rec.logits)
    if logits.shape[0] != x.shape[0] * explainer.masks.shape[0]:
        raise SystemExit(f"{method}: Xplique ran {logits.shape[0]} images, expected one per mask and photo")
    logits = logits.view(x.shape[0], -1, logits.shape[1])
    scores = logits.gather(2, targets.view(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]  # [B, M]
    masks = explainer.masks
    cells = []
    for i in range(x.shape[0]):
        cell = explainer.estimator(masks, tf.constant(scores[i].numpy()), DESIGNS[method])
        up = tf.image.resize(tf.reshape(cell, (1, CELLS, CELLS, 1)), x.shape[2:], method="bicubic").numpy()
        if not np.allclose(up[0, ..., 0], maps[i], rtol=1e-5, atol=1e-7 * np.abs(maps[i]).max()):
            raise SystemExit(f"{method}: Xplique's estimator on the recorded scores does not give its map (photo {i})")
        cells.append(torch.from_numpy(np.asarray(cell)).flatten().double())
    return torch.from_numpy(maps), torch.stack(cells), scores, torch.from_numpy(masks.numpy()[..., 0])


def timing(method: str, clf, wrapped: TorchWrapper, x: torch.Tensor, targets: torch.Tensor, bs: int,
           rounds: int) -> dict:
    """featvis's saliency and Xplique's explain (a new explainer each call: both draw their design), alternated."""
    inputs, onehot = x.permute(0, 2, 3, 1).numpy(), tf.one_hot(targets.numpy(), 1000).numpy()
    ours = lambda: saliency(clf, x, targets, method=method, seed=0, batch_size=bs)  # noqa: E731
    theirs = lambda: EXPLAINERS[method](wrapped, grid_size=CELLS, nb_design=DESIGNS[method],  # noqa: E731
                                        batch_size=bs).explain(inputs, onehot)
    return alternate(ours, theirs, rounds, x.shape[0], peer="xplique")[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=8, help="a seeded draw of N evaluation-set photos (0: 6 bundled)")
    ap.add_argument("--photo-seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="sobol,hsic")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timing rounds")
    ap.add_argument("--timing-photos", type=int, default=2)
    ap.add_argument("--out", default="xplique_crosscheck", help="results/<OUT>.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    clf = fv.load_model("efficientnet-lite0")
    names, x = photo_set(clf, args.photos, args.photo_seed)
    x = F.interpolate(x, size=args.size, mode="bilinear", antialias=True).clamp(0, 1)
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    rec = Recorder(clf.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TF is set to run eagerly": what its TorchWrapper does, by design
        wrapped = TorchWrapper(rec.eval(), device="cpu", is_channel_first=True, requires_grad=False)
    bs = args.batch_size
    import xplique

    out: dict = {"machine": machine(), "tensorflow": tf.__version__, "xplique": xplique.__version__,
                 "model": "efficientnet-lite0", "photos": names, "size": args.size, "batch_size": bs,
                 "targets": [clf.labels[int(t)] for t in targets],
                 "options": {"cells": CELLS, "designs": DESIGNS, "baseline": "black (Xplique's inpainting)",
                             "score": "logit"}}
    for method in (m.strip() for m in args.methods.split(",") if m.strip()):
        n = DESIGNS[method]
        _, cells_x, scores_x, masks = xplique_run(method, wrapped, rec, x, targets, bs)
        # 1. Xplique's design through featvis
        scores_f = masked_scores(clf, x, targets, masks[None], torch.zeros_like(x), "logit", bs, method)
        if method == "sobol":
            cells_f = jansen_total_order(scores_f, n)
        else:
            cells_f = hsic_scores(masks.flatten(1)[None], scores_f) * (n - 1) ** 2 / n
        same = {"perturbed_scores_max_rel_diff": max_rel(scores_f, scores_x), "cells": agreement(cells_f, cells_x)}
        # 2. featvis's own seeded designs (cell indices, before either library's bicubic upsampling)
        own = {s: FEATVIS_CELLS[method](clf, x, targets, cells=CELLS, designs=n, seed=s, batch_size=bs)
               for s in (0, 1)}
        seeds = {"featvis_seed0_vs_xplique": agreement(own[0], cells_x),
                 "featvis_seed1_vs_xplique": agreement(own[1], cells_x),
                 "featvis_seed0_vs_seed1": agreement(own[0], own[1])}
        # 3. time per image, alternated
        k = min(args.timing_photos, x.shape[0])
        times = timing(method, clf, wrapped, x[:k], targets[:k], bs, args.rounds)
        out[method] = {"same_design": same, "own_designs": seeds, "timing": {"photos": k, **times}}
        c = same["cells"]
        print(f"{method} same design: scores max rel {same['perturbed_scores_max_rel_diff']:.2e}, cells Pearson "
              f"min {c['pearson_min']:.7f} Spearman min {c['spearman_min']:.5f} max rel {c['max_rel_diff_max']:.2e}",
              flush=True)
        for key, v in seeds.items():
            print(f"{method} {key}: Spearman median {v['spearman_median']:.3f} Pearson median "
                  f"{v['pearson_median']:.3f}", flush=True)
        print(f"{method} time: featvis {times['featvis_s_per_image']:.1f} s/image, Xplique "
              f"{times['xplique_s_per_image']:.1f} s/image ({times['ratio']:.2f}x)", flush=True)
        save(args.out, out)
    print("wrote", save(args.out, out))


if __name__ == "__main__":
    main()
