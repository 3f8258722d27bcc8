"""Feature-visualization measurements beyond class probability (issue 15's closing note):

* speed     cost per optimization step of the lucid and maco presets against the bare forward+backward on exactly
            what the model sees per step (lucid: one 236 px view of a 224 px image; maco: `views` crops resized
            to 224 px), batch 1, CPU, one thread; timings interleaved with the floor so load drifts cancel.
* activation  for 16 seeded-random channels of an early, a middle and a late layer of Lite0 (blocks.2, blocks.8,
            blocks.15): the channel mean the visualization reaches, divided by the channel mean of the channel's
            top dataset example. Dataset: the 6 bundled photos plus 5 public-domain / CC0 images from the
            scikit-image 0.26.0 wheel (grass, gravel, brick, hubble_deep_field, retina), each as its centre crop
            and 15 seeded random crops (25–100 % of the short side), all at 128 px — 176 examples. Visualizations
            are rendered at 128 px and measured at 128 px, as the dataset is.
* spectrum  the radially averaged power-spectrum slope (featvis.optvis.stats.spectrum_slope) of the saved class
            visualizations of benchmarks/classvis_quality.py (out/classvis_quality/) next to the bundled photos'.

    python benchmarks/optvis_measures.py speed
    python benchmarks/optvis_measures.py activation --skimage-wheel /tmp/skimg/scikit_image-0.26.0-*.whl
    python benchmarks/optvis_measures.py spectrum

Results: benchmarks/results/optvis_measures.json (one key per measurement).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import featvis as fv
from featvis.layers import forward_until
from featvis.optvis import class_visualization, feature_visualization
from featvis.optvis.stats import spectrum_slope

from _common import RESULTS, machine

OUT = Path(__file__).resolve().parent.parent / "out"
RESULT_FILE = RESULTS / "optvis_measures.json"
LAYERS = ("_blocks.2", "_blocks.8", "_blocks.15")
CHANNEL_SEED = 15
SKIMAGE = ("grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "retina.jpg")
SIDE = 128


def save(key: str, value: object) -> None:
    data = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {}
    data[key] = value
    data.setdefault("machine", machine())
    RESULTS.mkdir(exist_ok=True)
    tmp = RESULT_FILE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(RESULT_FILE)


# --- speed -----------------------------------------------------------------------------------------------------

def _floor(clf, batch: int, side: int):
    x0 = torch.rand(batch, 3, side, side)

    def step():
        x = x0.clone().requires_grad_(True)
        return torch.autograd.grad(clf(x)[:, 0].sum(), x)[0]

    return step


def _per_step(clf, preset: str, steps: int, **options) -> float:
    """Seconds per step of `steps` steps beyond a 2-step run (setup and the final evaluation cancel out)."""
    t0 = time.perf_counter()
    class_visualization(clf, [1], preset=preset, steps=2, size=224, **options)
    t1 = time.perf_counter()
    class_visualization(clf, [1], preset=preset, steps=2 + steps, size=224, **options)
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / steps


def speed(args) -> None:
    clf = fv.load_model()
    for p in clf.parameters():
        p.requires_grad_(False)
    cases = {"lucid": ({}, 1, 236), "maco (views 1)": ({"views": 1}, 1, 224),
             "maco (views 4)": ({"views": 4}, 4, 224)}
    out = {}
    for name, (options, batch, side) in cases.items():
        preset = name.split()[0]
        floor = _floor(clf, batch, side)
        for _ in range(3):
            floor()
        _per_step(clf, preset, 2, **options)  # warm-up: one-time setup (first call of a preset/size) is not a step
        floors, steps = [], []
        for _ in range(args.repeats):  # interleaved: a load change hits both
            t = time.perf_counter()
            for _ in range(args.steps):
                floor()
            floors.append((time.perf_counter() - t) / args.steps)
            steps.append(_per_step(clf, preset, args.steps, **options))
        f, s = statistics.median(floors), statistics.median(steps)
        out[name] = {"ms_per_step": 1e3 * s, "floor_ms": 1e3 * f, "ratio": s / f,
                     "floor_input": [batch, 3, side, side], "all_ms": [round(1e3 * v, 1) for v in steps],
                     "all_floor_ms": [round(1e3 * v, 1) for v in floors]}
        print(f"{name:16s} {1e3 * s:7.1f} ms/step, floor {1e3 * f:7.1f} ms ({batch}×{side}²) → {s / f:.2f}×",
              flush=True)
    save("speed", {"threads": torch.get_num_threads(), "batch": 1, "size": 224, "cases": out})


# --- activation ------------------------------------------------------------------------------------------------

def _dataset(wheel: str | None) -> tuple[torch.Tensor, list[str]]:
    images: dict[str, Image.Image] = {}
    for name in fv.samples.names():
        images[name] = Image.open(fv.samples.path(name)).convert("RGB")
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            for name in SKIMAGE:
                images[name] = Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB")
    gen = random.Random(CHANNEL_SEED)
    crops, names = [], []
    for name, im in images.items():
        short = min(im.size)
        boxes = [((im.width - short) // 2, (im.height - short) // 2, short)]
        for _ in range(15):
            side = int(short * gen.uniform(0.25, 1.0))
            boxes.append((gen.randint(0, im.width - side), gen.randint(0, im.height - side), side))
        for left, top, side in boxes:
            crop = im.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.BICUBIC)
            crops.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1))
            names.append(f"{name}@{left},{top},{side}")
    return torch.stack(crops), names


def _channel_means(clf, images: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([forward_until(clf, chunk, [layer])[layer].mean((2, 3)) for chunk in images.split(32)])


def activation(args) -> None:
    clf = fv.load_model()
    data, names = _dataset(args.skimage_wheel)
    print(f"dataset: {data.shape[0]} examples at {SIDE} px", flush=True)
    result = {"dataset": {"examples": data.shape[0], "side": SIDE, "sources": sorted({n.split('@')[0] for n in names})},
              "steps": args.steps, "presets": {}}
    for layer in LAYERS:
        acts = _channel_means(clf, data, layer)  # [N, C]
        channels = random.Random(CHANNEL_SEED).sample(range(acts.shape[1]), 16)
        top, arg = acts[:, channels].max(0)
        for preset in args.presets:
            options = {"crop_size": SIDE} if preset == "maco" else {}
            res = feature_visualization(clf, layer, channels, preset=preset, size=SIDE, steps=args.steps, seed=0,
                                        **options)
            reached = _channel_means(clf, res.images, layer)[torch.arange(16), torch.tensor(channels)]
            ratio = reached / top
            fv.save_image(torch.cat(list(res.images), 2), OUT / "optvis_measures" / f"features-{preset}-{layer}.png")
            row = {"channels": channels, "top_example": [names[i] for i in arg.tolist()],
                   "top_activation": top.tolist(), "reached": reached.tolist(), "ratio": ratio.tolist(),
                   "median_ratio": float(ratio.median()), "mean_ratio": float(ratio.mean()),
                   "spectrum_slope": spectrum_slope(res.images).tolist()}
            result["presets"].setdefault(preset, {})[layer] = row
            print(f"{preset:6s} {layer:10s} ratio median {row['median_ratio']:.2f} mean {row['mean_ratio']:.2f} "
                  f"({[round(v, 2) for v in ratio.tolist()]})", flush=True)
            save("activation", result)


# --- spectrum --------------------------------------------------------------------------------------------------

def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def spectrum(args) -> None:
    out = {"photos": {n: float(spectrum_slope(fv.samples.load(n))) for n in fv.samples.names()}, "renders": {}}
    root = OUT / "classvis_quality"
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        files = sorted(folder.glob("seed*/*.png"))
        if not files:
            continue
        slopes = spectrum_slope(torch.stack([_load(f) for f in files]))
        out["renders"][folder.name] = {"images": len(files), "mean": float(slopes.mean()),
                                       "sd": float(slopes.std()) if len(files) > 1 else 0.0}
    vals = list(out["photos"].values())
    out["photos_mean"] = statistics.mean(vals)
    listed = ", ".join(f"{k} {v:.2f}" for k, v in out["photos"].items())
    print(f"bundled photos: mean {out['photos_mean']:.2f} ({listed})")
    for k, v in out["renders"].items():
        print(f"{k:45s} {v['mean']:6.2f} ± {v['sd']:.2f} ({v['images']} images)")
    save("spectrum", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--repeats", type=int, default=5)
    a = sub.add_parser("activation")
    a.add_argument("--skimage-wheel", default=None)
    a.add_argument("--steps", type=int, default=128)
    a.add_argument("--presets", nargs="+", default=["lucid", "maco"])
    sub.add_parser("spectrum")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"speed": speed, "activation": activation, "spectrum": spectrum}[args.what](args)


if __name__ == "__main__":
    main()
