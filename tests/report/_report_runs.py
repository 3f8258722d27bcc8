"""Helpers for the report tests: damaging copies of run folders, and hand-made features and examples runs (tiny
PNGs, no model) for building atlas pages."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from PIL import Image

from featvis.tasks.results import Run

DATA_RE = re.compile(r'<script type="application/json" id="atlas-data">(.*?)</script>', re.S)


def png(path: Path, colour=(200, 40, 40), size: int = 16) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path.name


def fake_runs(root: Path, labels: list[str], *, k: int = 3, images: int = 40, inputs: list[str] | None = None,
              class_name: str = "tabby cat", layer: str = "blocks.1", model_id: str = "tiny@0") -> tuple[Run, Run]:
    """A features run with one unit per label and an examples run over `images` images with k top and k bottom."""
    vis_dir, ex_dir = root / "features", root / "examples"
    items, channels = [], []
    for c, label in enumerate(labels):
        png(vis_dir / "images" / f"{c:04d}.png")
        items.append({"key": f"{c:04d}", "value": c, "title": label, "score": 3.5 + c, "image": f"images/{c:04d}.png"})
        ex = {"channel": c, "mean": -0.905, "std": 0.5, "max": 14.0, "active": 1.0, "classes_of_top": [
            {"class": 281, "name": class_name, "count": 2}]}
        for kind, base in (("top", 14.0), ("bottom", 11.1)):
            ex[kind] = []
            for i in range(k):
                rel = f"patches/{c:04d}/{kind}-{i:02d}.png"
                png(ex_dir / rel, (40, 40, 200))
                name = (inputs or [f"/data/{kind}{i}.jpg"] * k)[i]
                ex[kind].append({"key": f"{kind}{i}", "input": name, "value": base - 0.5 * i, "pos": 0, "patch": rel})
        channels.append(ex)
    vis = Run(vis_dir, {"schema": 1, "task": "features", "params": {"layer": layer, "preset": "lucid", "steps": 2},
                        "model": {"id": model_id}}, {}, items)
    ex = Run(ex_dir, {"schema": 1, "task": "examples", "params": {"layer": layer, "k": k}},
             {"images": images, "layer": layer, "neuron": False, "k": k, "grid": [8, 8], "channels": channels})
    return vis, ex


def atlas_data(page: Path) -> dict:
    blob = DATA_RE.search(page.read_text()).group(1)
    return json.loads(blob)


def copy_run(runs: Path, name: str, dst_root: Path) -> Path:
    dst = dst_root / name
    shutil.copytree(runs / name, dst)
    return dst


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def put_raw(path: Path, keys: list, raw: str) -> None:
    """Replace the value at `keys` in the JSON file by the raw JSON text `raw` (numbers json.dumps cannot write)."""
    data = json.loads(path.read_text())
    obj = data
    for k in keys[:-1]:
        obj = obj[k]
    obj[keys[-1]] = "@@RAW@@"
    path.write_text(json.dumps(data).replace('"@@RAW@@"', raw))
