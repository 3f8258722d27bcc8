"""The floor: the bare model's forward+backward time per image, its FLOPs, this machine's matmul speed, and the
effect of featvis's allocator tuning. Every gradient method's time is reported as a ratio of this floor.

    python benchmarks/floor.py            # table on stdout, JSON in benchmarks/results/floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv

from _common import floor_step, machine, median_time, save


def matmul_gflops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: a @ b, repeats=10, warmup=3)
    return 2 * n**3 / t / 1e9


def model_flops(clf, size: int) -> dict[str, float]:
    x = torch.rand(1, 3, size, size)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        clf(x)
    # torch's counter miscounts the backward of grouped (depthwise) convolutions as dense ones, and its hooks do
    # not support autograd.grad; the backward to the input costs about one forward (weight grads are skipped).
    f = fwd.get_total_flops() / 1e9
    return {"forward_gflops": f, "forward_backward_gflops": 2 * f}


def floor_table(clf, sizes=(128, 224), batches=(1, 8, 32), repeats=5) -> list[dict]:
    rows = []
    for size in sizes:
        for b in batches:
            x = torch.rand(b, 3, size, size)
            t = median_time(floor_step(clf, x), repeats=repeats)
            rows.append({"size": size, "batch": b, "ms_per_batch": t * 1e3, "ms_per_image": t * 1e3 / b})
    return rows


def _child(tuned: bool, batches: list[int], size: int) -> None:
    """Run in a fresh process so the allocator starts clean; prints JSON."""
    if tuned:
        fv.tune_allocator()
    torch.set_num_threads(int(os.environ.get("FLOOR_THREADS", torch.get_num_threads())))
    clf = fv.load_model()
    out = {}
    for b in batches:
        t = median_time(floor_step(clf, torch.rand(b, 3, size, size)), repeats=5)
        out[b] = t * 1e3 / b
    print(json.dumps(out))


def allocator_effect(batches=(16, 32), size=224) -> dict:
    res = {}
    for tuned in (False, True):
        cmd = [sys.executable, __file__, "--child", "1" if tuned else "0", "--batches", *map(str, batches),
               "--size", str(size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res["tuned" if tuned else "default"] = {int(k): v for k, v in json.loads(out).items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["0", "1"])
    ap.add_argument("--batches", type=int, nargs="*", default=[16, 32])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child == "1", args.batches, args.size)
        return
    fv.tune_allocator()
    clf = fv.load_model()
    data = {"machine": machine(), "model": clf.id, "matmul_gflops": matmul_gflops(),
            "flops": {s: model_flops(clf, s) for s in (128, 224)},
            "floor": floor_table(clf, repeats=3 if args.quick else 5),
            "allocator": allocator_effect()}
    print(f"model {data['model']}   matmul {data['matmul_gflops']:.1f} GFLOP/s   threads {torch.get_num_threads()}")
    for s, f in data["flops"].items():
        print(f"  {s}px: forward {f['forward_gflops']:.3f} GFLOP, forward+backward(input) "
              f"~{f['forward_backward_gflops']:.3f} GFLOP per image (2x forward)")
    print("\nforward+backward to the input, ms per image (allocator tuned)")
    print(f"{'size':>5} {'batch':>6} {'ms/batch':>10} {'ms/image':>10} {'GFLOP/s':>9}")
    for r in data["floor"]:
        gf = data["flops"][r["size"]]["forward_backward_gflops"] / (r["ms_per_image"] / 1e3)
        print(f"{r['size']:>5} {r['batch']:>6} {r['ms_per_batch']:>10.1f} {r['ms_per_image']:>10.2f} {gf:>9.1f}")
    print("\nallocator (224 px, ms per image, fresh processes)")
    for b in data["allocator"]["default"]:
        d, t = data["allocator"]["default"][b], data["allocator"]["tuned"][b]
        print(f"  batch {b:>3}: glibc default {d:7.1f}   featvis tuned {t:7.1f}   speed-up {d / t:4.2f}x")
    print(f"\nsaved {save('floor', data)}")


if __name__ == "__main__":
    main()
