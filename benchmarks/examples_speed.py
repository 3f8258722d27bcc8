"""Dataset examples' throughput against a bare forward over the same images (issue 15: goal ≥ 0.9×).

Both sides decode the same JPEGs the model's way and run batches of 16; the bare side is a plain loop of
`load_image` + `clf(x)` under no_grad. The examples run goes through the task runner (records, partials, resume
bookkeeping) with `--classes` (one full forward per batch, the activations captured on the way) and with
`--no-classes` (the model only up to the layer).

    python benchmarks/examples_speed.py [--images 256] [--layer blocks.8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import featvis as fv
from featvis.tasks import ExamplesTask, run_task

from _common import machine, save
from scale import make_images


def bare(clf, files: list[Path], batch: int = 16) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), batch):
            x = torch.cat([fv.load_image(f, clf) for f in files[i:i + batch]])
            clf(x)
    return time.perf_counter() - t0


def main() -> None:
    fv.tune_allocator()
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--layer", default="blocks.8")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.gettempdir()) / "featvis-scale"
    data = make_images(root / f"data-{args.images}", args.images)
    files = sorted(data.glob("*.jpg"))
    clf = fv.load_model()
    rows = {"bare forward": [], "examples (classes)": [], "examples (layer only)": []}
    for _ in range(args.repeats):  # alternate, so drifts of a shared machine hit all alike
        rows["bare forward"].append(bare(clf, files))
        for name, classes in (("examples (classes)", True), ("examples (layer only)", False)):
            out = root / "out-examples"
            shutil.rmtree(out, ignore_errors=True)
            run = run_task(ExamplesTask(layer=args.layer, classes=classes, k=9), [data], out, clf=clf, batch_size=16)
            t = run.manifest["timings_s"]
            rows[name].append(t["total"] - t["summary"])  # the streamed pass; patches are made once per channel
            rows.setdefault(name + ": patches and page", []).append(t["summary"])
    best = {k: min(v) for k, v in rows.items()}
    extra = {k: best.pop(k) for k in [k for k in best if k.endswith("page")]}
    result = {"machine": machine(), "images": len(files), "layer": args.layer,
              "seconds": {k: round(v, 2) for k, v in best.items()},
              "images_per_s": {k: round(len(files) / v, 2) for k, v in best.items()},
              "ratio_to_bare": {k: round(best["bare forward"] / v, 3) for k, v in best.items()},
              "once_per_run_s": {k: round(v, 2) for k, v in extra.items()}}
    print(result)
    save("examples_speed", result)


if __name__ == "__main__":
    main()
