"""Class-visualization quality: featvis presets against Lucent, judged by a model the images were not optimized for.

Protocol (the one featvis's quality claims are checked with, /work/shared/tools/judge_classvis.py): each image is
saved as an 8-bit PNG, read back, resized bicubic (PIL) to 260 px, normalized (x·255 − 127) / 128 and classified
by EfficientNet-Lite2; the score is Lite2's softmax probability of the intended class. Images are rendered on
EfficientNet-Lite0 at 224 px, all classes of a draw in one batch (each image's objective is its own class logit,
so batch-mates do not interact).

Classes: a seeded random draw of 20 of the 1000 ImageNet classes, `random.Random(15).sample(range(1000), 20)`.

    python benchmarks/classvis_quality.py lucid maco lab --seeds 0 1          # featvis presets
    python benchmarks/classvis_quality.py lucid:lr=0.1 --seeds 0              # a preset with options
    PYTHONPATH=/path/to/lucent-site .venv-integration/bin/python benchmarks/classvis_quality.py lucent --seeds 0 1

Lucent (torch-lucent 0.1.8 with kornia 0.4.1, installed with `pip install --target DIR --no-deps torch-lucent==0.1.8
kornia==0.4.1 decorator` plus IPython, run in the integration venv, which has torchvision) renders with
`param.image(224, fft=True, decorrelate=True)`, its standard transforms, Adam 0.05, `preprocess=False` on featvis's
pixel-space Classifier, objective `channel("net__fc", class, batch=i)` (the logit); the hooks it leaves on every
module are removed afterwards.

Results are merged into benchmarks/results/classvis_quality.json (one entry per configuration and seed); the PNGs
go to out/classvis_quality/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv

from _common import RESULTS, machine

CLASS_DRAW_SEED = 15  # issue 15
CLASSES = random.Random(CLASS_DRAW_SEED).sample(range(1000), 20)
JUDGE_SIZE = 260  # EfficientNet-Lite2's native input size
OUT = Path(__file__).resolve().parent.parent / "out" / "classvis_quality"
RESULT_FILE = RESULTS / "classvis_quality.json"


def load_judge() -> torch.nn.Module:
    """EfficientNet-Lite2 with its shipped ImageNet weights, the bare network (it takes (x·255 − 127) / 128)."""
    return fv.load_model("efficientnet-lite2").net.eval()


def judge(net: torch.nn.Module, paths: list[Path], classes: list[int]) -> list[float]:
    """Lite2's p(class) for each saved PNG, exactly as judge_classvis.py computes it."""
    out = []
    for path, cls in zip(paths, classes, strict=True):
        im = Image.open(path).convert("RGB").resize((JUDGE_SIZE, JUDGE_SIZE), Image.BICUBIC)
        x = (torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] - 127.0) / 128.0
        with torch.no_grad():
            out.append(float(net(x).softmax(1)[0, cls]))
    return out


def save_all(images: torch.Tensor, config: str, seed: int, classes: list[int]) -> list[Path]:
    folder = OUT / config.replace(":", "_").replace("=", "-").replace(",", "_") / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return [fv.save_image(img, folder / f"{cls:03d}.png") for img, cls in zip(images, classes, strict=True)]


def parse_config(config: str) -> tuple[str, dict]:
    """"lucid:lr=0.1,steps=300" → ("lucid", {"lr": "0.1", ...}); values are converted by the preset's spec."""
    name, _, rest = config.partition(":")
    options = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, options


def run_featvis(clf, config: str, seed: int, steps: int, size: int, classes: list[int]) -> tuple[torch.Tensor, float]:
    from featvis.optvis import class_visualization

    preset, options = parse_config(config)
    res = class_visualization(clf, classes, preset=preset, steps=steps, size=size, seed=seed, **options)
    return res.images, res.ms_per_step


def run_lucent(clf, seed: int, steps: int, size: int, classes: list[int]) -> tuple[torch.Tensor, float]:
    from lucent.optvis import objectives, param, render

    torch.manual_seed(seed)
    np.random.seed(seed)
    obj = objectives.channel("net__fc", classes[0], batch=0)  # image i climbs its own class's logit
    for i, c in enumerate(classes[1:], start=1):
        obj = obj + objectives.channel("net__fc", c, batch=i)
    t0 = time.perf_counter()
    try:
        out = render.render_vis(clf, obj, lambda: param.image(size, fft=True, decorrelate=True, batch=len(classes)),
                                thresholds=(steps,), preprocess=False, progress=False, show_image=False)
    finally:
        for m in clf.modules():  # Lucent hooks every module and never removes its hooks
            m._forward_hooks.clear()
    ms = 1e3 * (time.perf_counter() - t0) / steps
    return torch.from_numpy(out[-1]).permute(0, 3, 1, 2).float(), ms


def merge(config: str, seed: int, entry: dict) -> None:
    data = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {}
    data.setdefault("protocol", "Lite0 224 px render, saved 8-bit PNG -> PIL bicubic 260 px -> Lite2 p(target)")
    data["classes"] = CLASSES
    data["class_names"] = [fv.imagenet_labels()[c] for c in CLASSES]
    data.setdefault("runs", {}).setdefault(config, {})[str(seed)] = entry
    RESULTS.mkdir(exist_ok=True)
    tmp = RESULT_FILE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(RESULT_FILE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="preset names, preset:key=value,... or 'lucent'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="1: two threads on a loaded 2-core machine run 8x slower")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clf = fv.load_model()
    net = load_judge()
    for config in args.configs:
        for seed in args.seeds:
            if config == "lucent":
                images, ms = run_lucent(clf, seed, args.steps, args.size, CLASSES)
            else:
                images, ms = run_featvis(clf, config, seed, args.steps, args.size, CLASSES)
            paths = save_all(images, config, seed, CLASSES)
            p = judge(net, paths, CLASSES)
            entry = {"p": [round(v, 4) for v in p], "mean": statistics.mean(p), "steps": args.steps,
                     "size": args.size, "batch": len(CLASSES), "ms_per_step_batch": ms, "machine": machine()}
            merge(config, seed, entry)
            print(f"{config:40s} seed {seed}: mean p {entry['mean']:.3f}  ({ms:.0f} ms/step at batch "
                  f"{len(CLASSES)})  {[round(v, 2) for v in p]}", flush=True)


if __name__ == "__main__":
    main()
