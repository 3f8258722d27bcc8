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
import fcntl
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
# Everything a run needs is imported before it starts: a run takes an hour on a loaded CPU, and a lazy import of a
# file another engineer changed meanwhile can fail at the very end.
import featvis as fv
from featvis.optvis import class_visualization

from _common import RESULTS, machine

CLASS_DRAW_SEED = 15  # issue 15
CLASSES = random.Random(CLASS_DRAW_SEED).sample(range(1000), 20)
JUDGE_SIZE = 260  # EfficientNet-Lite2's native input size
OUT = Path(__file__).resolve().parent.parent / "out" / "classvis_quality"
RESULT_FILE = RESULTS / "classvis_quality.json"
CLASS_NAMES = [fv.imagenet_labels()[c] for c in CLASSES]


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
    """The rendered tensor first (torch.save: nothing to re-import after a long run), then one 8-bit PNG per class,
    rounded as featvis.images.to_uint8 does."""
    folder = OUT / config.replace(":", "_").replace("=", "-").replace(",", "_") / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images.detach().cpu(), folder / "images.pt")
    paths = []
    for img, cls in zip(images, classes, strict=True):
        arr = img.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        paths.append(folder / f"{cls:03d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def parse_config(config: str) -> tuple[str, dict]:
    """"lucid:lr=0.1,steps=300" → ("lucid", {"lr": "0.1", ...}); values are converted by the preset's spec."""
    name, _, rest = config.partition(":")
    options = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, options


def run_featvis(clf, config: str, seed: int, steps: int, size: int, classes: list[int]) -> tuple[torch.Tensor, float]:
    preset, options = parse_config(config)
    t0 = time.perf_counter()

    def progress(state) -> None:
        if state.step % 25 == 0:
            print(f"  {config} seed {seed}: step {state.step}/{steps} after {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)

    res = class_visualization(clf, classes, preset=preset, steps=steps, size=size, seed=seed, callback=progress,
                              **options)
    return res.images, res.ms_per_step


def run_lucent(clf, seed: int, steps: int, size: int, classes: list[int],
               freeze: bool = True) -> tuple[torch.Tensor, float]:
    from lucent.optvis import objectives, param, render  # imported in main() before any run when asked for

    torch.manual_seed(seed)
    np.random.seed(seed)
    # Lucent leaves the model's parameters trainable and so also computes weight gradients; freezing them does not
    # change the images (only the image is optimized) and halves the work. Timings at batch 1 (--speed) use the
    # model as loaded.
    flags = [p.requires_grad for p in clf.parameters()]
    if freeze:
        for p in clf.parameters():
            p.requires_grad_(False)
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
        for p, flag in zip(clf.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    ms = 1e3 * (time.perf_counter() - t0) / steps
    return torch.from_numpy(out[-1]).permute(0, 3, 1, 2).float(), ms


def speed(clf, configs: list[str], steps: int, size: int, repeats: int = 3) -> None:
    """ms per step at batch 1 (one class), each configuration timed `repeats` times, interleaved."""
    times: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for config in configs:
            if config == "lucent":
                _, ms = run_lucent(clf, 0, steps, size, CLASSES[:1], freeze=False)
            else:
                _, ms = run_featvis(clf, config, 0, steps, size, CLASSES[:1])
            times[config].append(ms)
    for config, ms in times.items():
        entry = {"ms_per_step": statistics.median(ms), "all": [round(v, 1) for v in ms], "steps": steps, "size": size,
                 "batch": 1, "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine()}
        merge(f"speed:{config}", 0, entry)
        print(f"{config:40s} {entry['ms_per_step']:.1f} ms/step at batch 1 ({entry['all']})", flush=True)


def merge(config: str, seed: int, entry: dict) -> None:
    """Add one run to the results file (several runs may write it: an exclusive lock around read-modify-write)."""
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "classvis_quality.lock.tmp", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(config, seed, entry)


def _merge(config: str, seed: int, entry: dict) -> None:
    data = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {}
    data.setdefault("protocol", "Lite0 224 px render, saved 8-bit PNG -> PIL bicubic 260 px -> Lite2 p(target)")
    data["classes"] = CLASSES
    data["class_names"] = CLASS_NAMES
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
    ap.add_argument("--first", type=int, default=None, help="screen on the first N classes of the draw only "
                    "(stored as CONFIG@N)")
    ap.add_argument("--speed", type=int, default=0, metavar="STEPS", help="time STEPS steps at batch 1 instead "
                    "(3 interleaved repeats per configuration; stored under 'speed')")
    ap.add_argument("--threads", type=int, default=1, help="1: two threads on a loaded 2-core machine run 8x slower")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "lucent" in args.configs:
        import lucent.optvis.render  # noqa: F401  (see the note at the featvis import)
    clf = fv.load_model()
    net = load_judge()
    if args.speed:
        speed(clf, args.configs, args.speed, args.size)
        return
    classes = CLASSES[: args.first] if args.first else CLASSES
    for config in args.configs:
        key = f"{config}@{len(classes)}" if args.first else config
        for seed in args.seeds:
            if config == "lucent":
                images, ms = run_lucent(clf, seed, args.steps, args.size, classes)
            else:
                images, ms = run_featvis(clf, config, seed, args.steps, args.size, classes)
            paths = save_all(images, key, seed, classes)
            p = judge(net, paths, classes)
            entry = {"p": [round(v, 4) for v in p], "mean": statistics.mean(p), "classes": classes,
                     "steps": args.steps, "size": args.size, "batch": len(classes), "ms_per_step_batch": ms,
                     "machine": machine()}
            merge(key, seed, entry)
            print(f"{key:40s} seed {seed}: mean p {entry['mean']:.3f}  ({ms:.0f} ms/step at batch "
                  f"{len(classes)})  {[round(v, 2) for v in p]}", flush=True)


if __name__ == "__main__":
    main()
