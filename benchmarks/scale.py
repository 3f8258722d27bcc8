"""Scale-out: the same 256-image saliency + deletion/insertion run on the local executor and on Ray, memory over a
2,000-image run, a two-node Ray cluster on this machine, and what ImageNet-val would cost.

    python benchmarks/scale.py                 # everything (about 40 min on 2 cores)
    python benchmarks/scale.py --figures       # with saliency's per-image figure (off by default: data set scale)
    python benchmarks/scale.py --only local,ray-1x2,ray-2x1
    python benchmarks/scale.py --only two-node

Images are deterministic variations (crops, flips, colour, size) of the bundled photos. Results go to
benchmarks/results/scale.json. Ray's overhead is measured at equal cores: Ray with one worker of 2 CPUs against
the local executor with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).parent))
import featvis as fv
from featvis.tasks import SaliencyTask, run_task

from _common import RESULTS, machine, save

RAY_PORT = 6391


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """`n` JPEGs made from the bundled photos: random crop (60–100 %), flip, brightness/contrast ±20 %, short side
    256–512 px. Deterministic for a seed; reused when the folder already holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    rng = np.random.default_rng(seed)
    photos = [Image.open(fv.samples.path(name)).convert("RGB") for name in fv.samples.names()]
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im2 = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im2 = im2.transpose(Image.FLIP_LEFT_RIGHT)
        im2 = ImageEnhance.Brightness(im2).enhance(rng.uniform(0.8, 1.2))
        im2 = ImageEnhance.Contrast(im2).enhance(rng.uniform(0.8, 1.2))
        short = int(rng.integers(256, 513))
        s = short / min(im2.size)
        im2 = im2.resize((max(1, round(im2.size[0] * s)), max(1, round(im2.size[1] * s))), Image.BICUBIC)
        im2.save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                fields[k] = int(v.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def task(metric_steps: int, figures: bool) -> SaliencyTask:
    """The measured run; `figures`: also the per-image matplotlib figure (~0.4 s an image, more than the map)."""
    return SaliencyTask(methods=("gradient",), metrics=True, metric_steps=metric_steps, figures=figures)


def timed_run(name: str, data: Path, clf, executor, out: Path, work: SaliencyTask, threads: int | None = None) -> dict:
    import torch

    shutil.rmtree(out, ignore_errors=True)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run = run_task(work, [data], out, clf=clf, executor=executor, batch_size=8)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(before)
    n = len(run.items)
    row = {"config": name, "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 3),
           "workers": run.manifest.get("workers"), "executor": run.manifest.get("executor")}
    print(f"{name:10s} {n} images in {seconds:7.1f} s = {n / seconds:.3f} img/s; nodes {row['workers']}", flush=True)
    return row


def memory_run(data: Path, clf, out: Path) -> dict:
    """RSS of this process while 2,000 images stream through classify (224 px, batch 16): flat means the runner and
    the data set hold nothing per item. (Classify, not saliency: saliency's per-image matplotlib figure costs
    ~0.5 s an image here and would make this a 20-minute run; the runner's bookkeeping is the same.)"""
    from featvis.tasks import ClassifyTask

    samples = []

    def watch(event):
        if event.kind == "batch" and event.done % 250 < 16:
            samples.append((event.done, round(rss_mb(os.getpid())[0], 1)))

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_task(ClassifyTask(), [data], out, clf=clf, batch_size=16, progress=watch)
    seconds = time.perf_counter() - t0
    first, last = samples[1][1], samples[-1][1]  # after the first batches have warmed the allocator
    print(f"memory    RSS over 2,000 images ({seconds:.0f} s): {samples}", flush=True)
    return {"task": "classify", "rss_mb_by_images": samples, "growth_mb_after_warmup": round(last - first, 1),
            "peak_mb": round(rss_mb(os.getpid())[1], 1), "seconds": round(seconds, 1)}


def two_node(data: Path, clf, out: Path, work: SaliencyTask) -> dict:
    """Two `ray start` processes on this machine (1 CPU each, loopback only) and a run over 256 images."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
    head = [ray_bin, "start", "--head", "--num-cpus=1", f"--port={RAY_PORT}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", "--disable-usage-stats"]
    node = [ray_bin, "start", f"--address=127.0.0.1:{RAY_PORT}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
            "--disable-usage-stats"]
    subprocess.run(head, env=env, check=True, capture_output=True)
    subprocess.run(node, env=env, check=True, capture_output=True)
    try:
        from featvis.tasks.ray_executor import RayExecutor

        os.environ.update({"RAY_AUTH_MODE": "disabled"})
        row = timed_run("two-node", data, clf, RayExecutor(address=f"127.0.0.1:{RAY_PORT}", workers=2,
                                                           cpus_per_worker=1), out, work)
        row["nodes_used"] = len(row["workers"] or {})
        return row
    finally:
        import ray

        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)


def main() -> None:
    import torch

    from featvis._alloc import tune_allocator

    tune_allocator()
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="local,ray-1x2,ray-2x1,memory,two-node")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--metric-steps", type=int, default=16)
    ap.add_argument("--figures", action="store_true", help="also draw a figure per image (off: --no-figures)")
    args = ap.parse_args()
    work = task(args.metric_steps, args.figures)
    only = set(args.only.split(","))
    torch.set_num_threads(2)
    root = Path(tempfile.gettempdir()) / "featvis-scale"
    data = make_images(root / f"data-{args.images}", args.images)
    clf = fv.load_model()
    rows = []
    if "local" in only:
        rows.append(timed_run("local", data, clf, "local", root / "out-local", work, threads=2))
    if only & {"ray-1x2", "ray-2x1"}:
        import ray

        from featvis.tasks.ray_executor import RayExecutor

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        for name, workers, cpus in (("ray-1x2", 1, 2), ("ray-2x1", 2, 1)):
            if name in only:
                rows.append(timed_run(name, data, clf, RayExecutor(workers=workers, cpus_per_worker=cpus),
                                      root / f"out-{name}", work))
        ray.shutdown()
    result = {"machine": machine(), "images": args.images, "task": work.param_dict(),
              "runs": rows}
    by = {r["config"]: r for r in rows}
    if "local" in by:
        for name in ("ray-1x2", "ray-2x1"):
            if name in by:
                result[f"{name}_overhead"] = round(by[name]["seconds"] / by["local"]["seconds"] - 1, 4)
        per_image = by["local"]["seconds"] / by["local"]["images"]
        # ImageNet-val × 8 methods with all metrics: this run is 1 method + its metrics; evaluate's per-method cost
        # (benchmarks/evaluate.py) scales it. Nodes are this machine (2 cores); efficiency from the measured overhead.
        eff = 1 / (1 + max(0.0, result.get("ray-2x1_overhead", 0.0)))
        result["imagenet_val_8_methods_hours"] = {
            str(nodes): round(50_000 * 8 * per_image / (nodes * (eff if nodes > 1 else 1.0)) / 3600, 1)
            for nodes in (1, 8, 64)}
    if "memory" in only:
        big = make_images(root / "data-2000", 2000, seed=1)
        result["memory"] = memory_run(big, clf, root / "out-memory")
    if "two-node" in only and only != {"two-node"}:  # a driver that has shut a local Ray down cannot join another
        cmd = [sys.executable, __file__, "--only", "two-node", "--images", str(args.images), "--metric-steps",
               str(args.metric_steps)] + (["--figures"] if args.figures else [])
        subprocess.run(cmd, check=True)
        result["two_node"] = json.loads((RESULTS / "scale.json").read_text())["two_node"]
    elif "two-node" in only:
        result["two_node"] = two_node(data, clf, root / "out-two-node", work)
    previous = RESULTS / "scale.json"  # runs of other parts (--only) are kept: each part replaces its own keys
    if previous.exists():
        kept = json.loads(previous.read_text())
        mine = {r["config"] for r in rows}
        result["runs"] = [r for r in kept.get("runs", []) if r["config"] not in mine] + rows
        result = {**kept, **result}
    print(save("scale", result))


if __name__ == "__main__":
    main()
