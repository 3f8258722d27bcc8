"""Universal adversarial perturbations on the embedded EfficientNet-Lite0 at 224 px, L∞ ξ = 10/255: the held-out
fooling rate of the two fits (the paper's DeepFool loop and the batched SGD fit) against random perturbations of the
same size, and the time each fit takes.

The photos here: out/evalset (16, the 6 bundled among them; `python benchmarks/evalset.py`) and out/conceptset (27;
`python benchmarks/conceptset.py`), 43 distinct photos. A seeded 30 % is held out (never seen by a fit, not even as
a crop); the training photos are augmented deterministically (horizontal flip, and with --augment 4 also two
85 % corner crops resized back), since the paper fits on 10,000 ImageNet images and 30 photos are far too few.

    python benchmarks/universal.py [--augment 2|4] [--methods sgd,deepfool] [--candidates 10] [--target-rate 0.8]

Each configuration is kept in benchmarks/results/universal.json under runs["METHOD-augmentK-targetR"], so runs of
other configurations add to the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.adversarial.universal import fooled, random_perturbation, universal_perturbation

from _common import machine, save

EPS = 10 / 255
HOLDOUT = 0.3
RANDOM_DRAWS = 10
ROOT = Path(__file__).resolve().parents[1]


def photos() -> list[Path]:
    found = []
    for folder in (ROOT / "out" / "evalset", ROOT / "out" / "conceptset"):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing: run benchmarks/{folder.name}.py first")
        found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return found


def augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """k deterministic views of each image: itself, its mirror, then 85 % top-left / bottom-right crops."""
    views = [x, x.flip(-1)]
    if k >= 4:
        s = x.shape[-1]
        c = round(0.85 * s)
        for crop in (x[..., :c, :c], x[..., s - c:, s - c:]):
            views.append(F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1))
    return torch.cat(views[:k])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--augment", type=int, default=2, choices=(1, 2, 4))
    ap.add_argument("--methods", default="sgd,deepfool")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--deepfool-epochs", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--target-rate", type=float, default=0.8)
    args = ap.parse_args()
    clf = fv.load_model()
    files = photos()
    order = sorted(files, key=lambda p: hashlib.sha256(f"0:{p.name}".encode()).hexdigest())
    held_files = order[:round(HOLDOUT * len(order))]
    train_files = [p for p in files if p not in held_files]
    held = fv.load_images([str(p) for p in held_files], clf)
    train_photos = fv.load_images([str(p) for p in train_files], clf)
    train = augment(train_photos, args.augment)
    out = {"machine": machine(), "model": clf.id, "eps": EPS, "eps_255": 10, "norm": "linf",
           "photos": len(files), "held_out": len(held_files), "train_photos": len(train_files),
           "train_images": int(train.shape[0]), "augment": args.augment,
           "held_out_files": [p.name for p in held_files], "runs": {}}
    earlier = ROOT / "benchmarks" / "results" / "universal.json"
    if earlier.exists():
        old = json.loads(earlier.read_text())
        for m, r in old.get("methods", {}).items():  # the first format: one configuration
            out["runs"][f"{m}-augment{old['augment']}-target0.8"] = r | {"train_images": old["train_images"]}
        out["runs"].update(old.get("runs", {}))
    rand = [fooled(clf, held, random_perturbation(held.shape[1:], EPS, seed=s))[0].float().mean().item()
            for s in range(RANDOM_DRAWS)]
    out["random_baseline"] = {"draws": RANDOM_DRAWS, "mean_fooling_rate": sum(rand) / len(rand),
                              "max_fooling_rate": max(rand), "kind": "random signs ±ξ (an L∞ corner)"}
    print(f"{len(files)} photos: {len(held_files)} held out, {train.shape[0]} training images; random "
          f"perturbation fools {out['random_baseline']['mean_fooling_rate']:.0%} of the held-out", flush=True)
    for method in args.methods.split(","):
        opts = {"epochs": args.epochs} if method == "sgd" else {"epochs": args.deepfool_epochs,
                                                                "candidates": args.candidates}

        def progress(state, method=method, t0=time.perf_counter()):
            print(f"  {method}: pass {state.epoch + 1}, batch {state.batch}, {time.perf_counter() - t0:.0f} s"
                  + (f", training fooling rate after pass {len(state.history)}: {state.history[-1]:.0%}"
                     if state.history else ""), flush=True)

        t0 = time.perf_counter()
        res = universal_perturbation(clf, train, eps=EPS, method=method, batch_size=args.batch, seed=0,
                                     target_rate=args.target_rate, callback=progress, **opts)
        seconds = time.perf_counter() - t0
        ok, _, _ = fooled(clf, held, res.perturbation)
        photos_ok, _, _ = fooled(clf, train_photos, res.perturbation)
        out["runs"][f"{method}-augment{args.augment}-target{args.target_rate:g}"] = {
            "train_images": int(train.shape[0]),
            "held_out_fooling_rate": ok.float().mean().item(), "train_fooling_rate": res.fooling_rate,
            "train_photos_fooling_rate": photos_ok.float().mean().item(), "history": list(res.history),
            "passes": res.epochs, "fit_seconds": round(seconds, 1), "linf_255": round(res.linf * 255, 2),
            "l2": round(res.l2, 3), "params": res.params}
        print(f"{method}: held-out {ok.float().mean():.0%} (random {out['random_baseline']['mean_fooling_rate']:.0%})"
              f", training {res.fooling_rate:.0%}, {res.epochs} passes, {seconds:.0f} s", flush=True)
        picture = ROOT / "benchmarks" / "results" / f"universal-{method}-augment{args.augment}.png"
        fv.save_image(res.magnified(), picture)
        save("universal", out)  # after each method: a long run interrupted keeps what it measured


if __name__ == "__main__":
    main()
