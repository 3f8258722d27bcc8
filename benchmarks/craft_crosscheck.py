"""featvis CRAFT against the reference package `craft-xai` (deel-ai/Craft, `craft.craft_torch.Craft`), on the same
activations.

efficientnet-lite0 (shipped weights), split at CRAFT's default (the head ReLU6, `swish` call=1, [1280, 7, 7]); the
six bundled photos; `CROPS` seeded random crops per photo (featvis's `random_crops`, resized to 224). featvis
computes every activation once and hands them to the reference in a side venv (it does not install beside this
one's packages: `python -m venv /work/venvs/craft; pip install torch==2.13.0 scikit-learn; pip install --no-deps
craft-xai`), whose g and h are look-ups of those activations and the model's own head (mean over space, then the
classifier layer, checked here to equal featvis's h). Its `craft/sobol/sampler.py` imports tensorflow at the top
for one sampler that CRAFT's torch path does not use: the side script puts an empty module in its place.

Compared:
- the factorization: `Craft.fit` (scikit-learn `NMF(n_components=k)`) and `fit_concepts` on the same pooled
  activations: W and U, max relative difference (|Δ| / max |ref|);
- the coefficients of the full photos' activations per location: the reference's `NMF.transform` (scikit-learn)
  against featvis's torch `transform`;
- concept importance (total Sobol indices, per photo for its top class): with the reference's own masks (Halton,
  unscrambled) fed to featvis: Pearson, Spearman, max relative difference; featvis with its scrambled Sobol design
  against the reference; and the yardsticks of how much a seed or a design alone moves the indices: the reference
  run with numpy's global RNG seeded 0 and 1 (its `NMF(n_components=k)` leaves `random_state` None, so its
  randomized-SVD init draws from there; its samplers are unscrambled and take no seed), the reference's estimator
  on its Sobol design against its Halton one, and featvis seed 0 against seed 1.
Timings (this machine, `torch.set_num_threads(2)`): fit and importance per image.

    python benchmarks/craft_crosscheck.py [--python /work/venvs/craft/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import torch

import featvis as fv
from featvis.concepts import (
    concept_importance_per_image,
    fit_concepts,
    random_crops,
    split_at,
    transform,
)

from _common import RESULTS, machine, save

K = 10
CROPS = 16
CROP_FRACTION = 0.4
DESIGNS = 32
SEED = 0
SIDE_VENV = "/work/venvs/craft/bin/python"

# Runs in the side venv: the reference's Craft on the activations of npz `data`; writes npz `out`.
REFERENCE = r'''
import sys, types
sys.modules.setdefault("tensorflow", types.ModuleType("tensorflow"))  # sampler.py imports it for TFSobolSequence
import numpy as np, torch
from craft.craft_torch import Craft
from craft.sobol.sampler import HaltonSequence, ScipySobolSequence
from craft.sobol.estimators import JansenEstimator

d = np.load(sys.argv[1])
crop_acts, image_acts = torch.from_numpy(d["crop_acts"]), torch.from_numpy(d["image_acts"])
fc_w, fc_b = torch.from_numpy(d["fc_w"]), torch.from_numpy(d["fc_b"])

def lookup(table):
    state = {"at": 0}
    def g(x):  # the reference's batches arrive in order: hand out the precomputed activations of the same rows
        i = state["at"]
        state["at"] = i + len(x)
        return table[i:i + len(x)]
    return g

def h(a):  # efficientnet-lite0 after the head ReLU6: average pool, (eval) dropout, classifier
    return a.mean((2, 3)) @ fc_w.T + fc_b

k = int(d["k"]); n = len(crop_acts); designs = int(d["designs"]); classes = d["classes"]


def run(seed):
    # NMF(n_components=k) leaves random_state None: its init's randomized SVD draws from numpy's global RNG
    np.random.seed(seed)
    craft = Craft(lookup(crop_acts), h, number_of_concepts=k, batch_size=64, patch_size=8, device="cpu")
    # one 8x8 "image" per crop: unfold gives exactly one patch each, in order, and g looks up its activation
    _, U, W = craft.fit(torch.zeros(n, 3, 8, 8))
    out = {"W": W, "U": U}
    craft.input_to_latent = lookup(image_acts)
    out["image_U"] = craft.transform(torch.zeros(len(image_acts), 3, 8, 8))
    imp = []
    for i, c in enumerate(classes):
        craft.input_to_latent = lookup(image_acts[i:i + 1])
        imp.append(craft.estimate_importance(torch.zeros(1, 3, 8, 8), int(c), nb_design=designs))
    out["importance"] = np.stack(imp)
    return out


out = run(int(d["seed"]))
other = run(int(d["seed"]) + 1)
out.update({f"seed1_{key}": v for key, v in other.items()})
out["halton"] = HaltonSequence()(k, nb_design=designs).astype(np.float32)
sobol = ScipySobolSequence()(k, nb_design=designs).astype(np.float32)
imp_sobol = []
for i, c in enumerate(classes):  # the reference's estimator on its other deterministic design (Sobol)
    u = out["image_U"][i]
    a = (u[None] * sobol[:, None, None, :]).reshape(-1, k) @ out["W"]
    a = np.moveaxis(a.reshape(len(sobol), u.shape[0], u.shape[1], -1), -1, 1)
    y = h(torch.from_numpy(np.ascontiguousarray(a))).numpy()[:, int(c)]
    imp_sobol.append(JansenEstimator()(sobol, y, designs))
out["importance_sobol"] = np.stack(imp_sobol)
np.savez(sys.argv[2], **out)
'''


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def agreement(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Pooled over photos × concepts, and the mean per-photo Spearman (the ranking each photo gets)."""
    return {"pearson": pearson(ours, ref), "spearman": spearman(ours.ravel(), ref.ravel()),
            "spearman_per_image_mean": float(np.mean([spearman(o, r) for o, r in zip(ours, ref, strict=True)])),
            "max_rel_diff": rel(ours, ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=SIDE_VENV, help="the side venv's python with craft-xai")
    args = parser.parse_args()
    torch.set_num_threads(2)
    clf = fv.load_model("efficientnet-lite0")
    split = split_at(clf)
    names = fv.samples.names()
    images = torch.cat([fv.samples.load(n, clf) for n in names])
    with torch.no_grad():
        classes = clf(images).argmax(1)

    t0 = time.perf_counter()
    bank = fit_concepts(split, images, K, crops=CROPS, crop_fraction=CROP_FRACTION, seed=SEED)
    fit_s = time.perf_counter() - t0
    size = round(CROP_FRACTION * images.shape[-1])
    resized, _, _ = random_crops(images, size, CROPS, torch.Generator().manual_seed(SEED), out=clf.input_size)
    with torch.no_grad():
        crop_acts = torch.cat([split.latent(b) for b in resized.split(64)])
        image_acts = split.latent(images)
    fc = split.clf.net._fc
    head_err = float((split.head(image_acts) - (image_acts.mean((2, 3)) @ fc.weight.T + fc.bias)).abs().max())

    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "acts.npz"), os.path.join(tmp, "ref.npz")
        np.savez(data, crop_acts=crop_acts.numpy(), image_acts=image_acts.numpy(), fc_w=fc.weight.detach().numpy(),
                 fc_b=fc.bias.detach().numpy(), k=K, designs=DESIGNS, classes=classes.numpy(), seed=SEED)
        t1 = time.perf_counter()
        subprocess.run([args.python, "-c", REFERENCE, data, out], check=True)
        ref_s = time.perf_counter() - t1
        ref = dict(np.load(out))

    W, U = bank.W.cpu().numpy(), bank.U.numpy()
    image_u = transform(bank.W.new_tensor(ref["W"]), image_acts).permute(0, 2, 3, 1).numpy()  # ref W: same problem
    halton = torch.from_numpy(ref["halton"])
    t2 = time.perf_counter()
    ours_halton = np.stack([concept_importance_per_image(split, _with_w(bank, ref["W"]), images[i:i + 1], int(c),
                                                         masks=halton)[0].numpy()
                            for i, c in enumerate(classes.tolist())])
    imp_s = (time.perf_counter() - t2) / len(images)
    ours = {s: np.stack([concept_importance_per_image(split, _with_w(bank, ref["W"]), images[i:i + 1], int(c),
                                                      designs=DESIGNS, seed=s)[0].numpy()
                         for i, c in enumerate(classes.tolist())]) for s in (0, 1)}
    report = {
        "setup": {"model": "efficientnet-lite0", "layer": split.label, "mode": split.mode, "photos": names,
                  "classes": classes.tolist(), "k": K, "crops_per_image": CROPS, "crop_fraction": CROP_FRACTION,
                  "designs": DESIGNS, "masks_per_image": DESIGNS * (K + 2), "seed": SEED,
                  "reference": "craft-xai 0.0.3 (craft.craft_torch.Craft), side venv", "machine": machine()},
        "head_vs_linear_head_max_abs": head_err,
        "nmf": {"W_max_rel_diff": rel(W, ref["W"]), "U_max_rel_diff": rel(U, ref["U"]),
                "reference_seed0_vs_seed1_W_max_rel_diff": rel(ref["seed1_W"], ref["W"]),
                "reconstruction_error": bank.reconstruction_error},
        "transform": {"max_rel_diff": rel(image_u, ref["image_U"]),
                      "note": "featvis torch coordinate descent vs the reference's scikit-learn NMF.transform"},
        "importance_same_masks": agreement(ours_halton, ref["importance"]),
        "importance_featvis_sobol_seed0_vs_reference": agreement(ours[0], ref["importance"]),
        "yardstick_reference_seed0_vs_seed1": agreement(ref["seed1_importance"], ref["importance"]),
        "yardstick_reference_sobol_vs_halton": agreement(ref["importance_sobol"], ref["importance"]),
        "yardstick_featvis_seed0_vs_seed1": agreement(ours[0], ours[1]),
        "seconds": {"fit_per_image": fit_s / len(images), "importance_per_image": imp_s,
                    "reference_total": ref_s},
        "importance": {"featvis_same_masks": ours_halton.tolist(), "reference": ref["importance"].tolist()},
    }
    path = save("craft_crosscheck", report)
    (RESULTS / "craft_crosscheck.md").write_text(markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k != "importance"}, indent=2))
    print(f"wrote {path}")


def _with_w(bank, W: np.ndarray):
    """The bank with the reference's W (identical up to float noise): importance then differs only by the rest."""
    from dataclasses import replace

    return replace(bank, W=torch.from_numpy(W).to(bank.W))


def markdown(r: dict) -> str:
    s, n = r["setup"], r["nmf"]

    def row(name: str, a: dict) -> str:
        return (f"| {name} | {a['pearson']:.4f} | {a['spearman']:.4f} | {a['spearman_per_image_mean']:.4f} | "
                f"{a['max_rel_diff']:.3g} |")

    return "\n".join([
        "# CRAFT cross-check: featvis vs craft-xai 0.0.3 on the same activations",
        "",
        f"{s['model']}, layer `{s['layer']}` (h by {s['mode']}), {len(s['photos'])} bundled photos, "
        f"{s['crops_per_image']} crops each (side {s['crop_fraction']} of the photo), k = {s['k']}, "
        f"{s['designs']} designs ({s['masks_per_image']} masks per photo), each photo's top class. "
        "Written by `python benchmarks/craft_crosscheck.py`.",
        "",
        f"- NMF (both scikit-learn, same init and seed): W max rel diff {n['W_max_rel_diff']:.3g}, U "
        f"{n['U_max_rel_diff']:.3g} (relative reconstruction error {n['reconstruction_error']:.3f}); the reference "
        f"with another seed of its NMF init: W {n['reference_seed0_vs_seed1_W_max_rel_diff']:.3g}.",
        f"- Coefficients per location (torch NNLS vs scikit-learn `NMF.transform`): max rel diff "
        f"{r['transform']['max_rel_diff']:.3g}.",
        f"- h: featvis's traced head vs the linear head given to the reference: max abs "
        f"{r['head_vs_linear_head_max_abs']:.3g}.",
        "",
        "| total Sobol indices | Pearson | Spearman (pooled) | Spearman (per photo, mean) | max rel diff |",
        "| --- | --- | --- | --- | --- |",
        row("featvis on the reference's masks vs reference", r["importance_same_masks"]),
        row("featvis (scrambled Sobol, seed 0) vs reference", r["importance_featvis_sobol_seed0_vs_reference"]),
        row("yardstick: reference, NMF seed 0 vs seed 1", r["yardstick_reference_seed0_vs_seed1"]),
        row("yardstick: reference, Sobol vs Halton design", r["yardstick_reference_sobol_vs_halton"]),
        row("yardstick: featvis seed 0 vs seed 1", r["yardstick_featvis_seed0_vs_seed1"]),
        "",
        f"Time per image (2 threads): fit {r['seconds']['fit_per_image']:.2f} s ({s['crops_per_image']} crops), "
        f"importance {r['seconds']['importance_per_image']:.2f} s.",
        "",
    ])


if __name__ == "__main__":
    main()
