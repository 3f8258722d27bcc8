"""The floor: the model's own forward+backward to the input, per image, for every way featvis could run it, side by
side in one run (issue 17), as ms per image and as a multiple of the FLOP bound (the model's FLOPs at this machine's
measured matmul rate). Also: each candidate's accuracy against eager float32 (maps, probabilities, predictions on the
bundled photos), ReLU6 corners flipped by rounding, compile time and break-even, a profile of the default by operator
family, and the allocator's effect.

    python benchmarks/floor.py                  # everything; JSON in benchmarks/results/floor.json
    python benchmarks/floor.py --quick          # fewer repeats; compile only at batch 8, 224 px
    python benchmarks/floor.py --device cuda    # the GPU candidates (benchmarks/gpu.sh)

Measure on an idle machine: the configurations alternate step by step and medians are reported, but a loaded CPU
still distorts them (the load average is recorded at start and end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
from _floor_parts import accuracy, load_avg, profile_families, relu6_flips

import featvis as fv
from featvis.models import fast, frozen

from _common import RESULTS, floor_step, machine, median_time, save

FastOptions = fast.FastOptions


@dataclass(frozen=True)
class Candidate:
    name: str
    what: str
    fast: bool | FastOptions = True  # the Classifier's `fast` setting
    compile: bool = False  # torch.compile (inductor) around the network that runs
    threads: int | None = None
    settings: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    exact: bool = True  # within float tolerance of eager (a default candidate); False: costs accuracy
    sizes: tuple = field(default=())  # only these (size, batch); () = all


def _onednn_bf16():
    return torch.backends.mkldnn.flags(enabled=True, fp32_precision="bf16")


def _no_onednn():
    return torch.backends.mkldnn.flags(enabled=False)


def candidates(device: str, quick: bool) -> list[Candidate]:
    one = ((224, 8),) if quick else ()
    if device == "cuda":
        return [
            Candidate("eager", "the user's network as it is (before issue 17)", fast=False),
            Candidate("fast", "default: BN folded + channels-last"),
            Candidate("fast+bf16", "default + bf16 autocast", fast=FastOptions(autocast="bf16"), exact=False),
            Candidate("fast+bf16+compile", "default + bf16 autocast + torch.compile",
                      fast=FastOptions(autocast="bf16"), compile=True, exact=False),
            Candidate("fast+compile", "default + torch.compile", compile=True),
        ]
    cands = [
        Candidate("eager", "the user's network as it is (before issue 17)", fast=False),
        Candidate("channels_last", "channels-last only", fast=FastOptions(fold_bn=False)),
        Candidate("bn_folded", "BN folded only (NCHW)", fast=FastOptions(channels_last=False)),
        Candidate("fast", "default: BN folded + channels-last + ReLU6 fused into the conv"),
        Candidate("fast/no-fusion", "BN folded + channels-last, ReLU6 as its own op",
                  fast=FastOptions(fuse_relu6=False)),
        Candidate("fast/1thread", "default on 1 thread (per-image time; the other core idle)", threads=1),
        Candidate("eager/no-onednn", "eager with oneDNN off (ATen's own kernels)", fast=False, settings=_no_onednn),
        Candidate("fast+onednn-bf16", "default + oneDNN fp32 math in bf16 (AMX)", settings=_onednn_bf16,
                  exact=False),
        Candidate("compile", "torch.compile(net), inductor, NCHW", fast=False, compile=True, sizes=one),
        Candidate("fast+compile", "default + torch.compile", compile=True, sizes=one),
    ]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        cands.insert(6, Candidate("fast+bf16", "default + bf16 autocast", fast=FastOptions(autocast="bf16"),
                                  exact=False))
    return cands


def matmul_gflops(n: int = 1024, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = median_time(lambda: _sync(a @ b), repeats=10, warmup=3)
    return 2 * n**3 / t / 1e9


def _sync(out=None):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def model_flops(clf, size: int) -> dict[str, float]:
    x = torch.rand(1, 3, size, size, device=clf.device)
    clf.fast = False
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        clf(x)
    clf.fast = True
    # The backward to the input with frozen weights costs about one forward (no weight gradients): 2x forward.
    f = fwd.get_total_flops() / 1e9
    return {"forward_gflops": f, "forward_backward_gflops": 2 * f}


def make_step(clf, x: torch.Tensor, cand: Candidate) -> Callable[[], object]:
    """One forward+backward to the input under `cand`, its settings applied around the step only (the caller
    freezes the model)."""
    clf.fast = cand.fast
    with torch.no_grad():
        clf(x[:1])  # build the fast copy for these options
    run = _compiled(clf) if cand.compile else clf

    def base():
        xx = x.detach().requires_grad_(True)
        return torch.autograd.grad(run(xx)[:, 0].sum(), xx)[0]

    def step():
        clf.fast = cand.fast
        old = torch.get_num_threads()
        if cand.threads:
            torch.set_num_threads(cand.threads)
        try:
            with cand.settings():
                return _sync(base())
        finally:
            torch.set_num_threads(old)
            clf.fast = True

    return step


def _compiled(clf) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile (inductor, static shapes) around the network `clf.fast` selects: the fast copy (with its
    channels-last input and autocast) or the user's network."""
    opts = fast.options(clf)
    entry = fast._CACHE[clf.net].get(opts) if opts is not None else None
    if entry is None or entry.net is None:
        net = torch.compile(clf.net, dynamic=False)
        return lambda images: net(clf.normalize(images))
    net = torch.compile(entry.net, dynamic=False)

    def run(images: torch.Tensor) -> torch.Tensor:
        z = clf.normalize(images)
        if entry.options.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        if entry.options.autocast:
            with torch.autocast(z.device.type, dtype=torch.bfloat16):
                return net(z).float()
        return net(z)

    return run


def floor_table(clf, cands: list[Candidate], sizes=(128, 224), batches=(1, 8, 32), repeats=5) -> list[dict]:
    """ms per image for every candidate and shape; the candidates alternate step by step (median of `repeats`)."""
    rows = []
    for size in sizes:
        for b in batches:
            x = torch.rand(b, 3, size, size, device=clf.device)
            active = [c for c in cands if not c.sizes or (size, b) in c.sizes]
            steps, compile_s = {}, {}
            with frozen(clf):
                for c in active:
                    steps[c.name] = make_step(clf, x, c)
                    t0 = time.perf_counter()
                    steps[c.name]()  # warm-up; for compiled candidates this compiles forward and backward
                    compile_s[c.name] = time.perf_counter() - t0
                    steps[c.name]()
                times: dict[str, list[float]] = {c.name: [] for c in active}
                for _ in range(repeats):
                    for c in active:
                        t0 = time.perf_counter()
                        steps[c.name]()
                        times[c.name].append(time.perf_counter() - t0)
            for c in active:
                t = sorted(times[c.name])[len(times[c.name]) // 2]
                row = {"candidate": c.name, "size": size, "batch": b, "ms_per_batch": t * 1e3,
                       "ms_per_image": t * 1e3 / b, "first_call_s": compile_s[c.name]}
                rows.append(row)
                print(f"  {size:>3}px b={b:<3} {c.name:18s} {row['ms_per_image']:8.2f} ms/img", flush=True)
    return rows


def break_even(rows: list[dict]) -> dict:
    """Steps after which a compiled candidate has paid for its compilation, per shape it was compiled at."""
    out = {}
    by = {(r["candidate"], r["size"], r["batch"]): r for r in rows}
    for (name, size, b), r in by.items():
        if "compile" not in name:
            continue
        base = by.get((name.replace("+compile", "") if name != "compile" else "eager", size, b))
        eager = by[("eager", size, b)]
        fastest = min(base["ms_per_batch"], eager["ms_per_batch"]) if base else eager["ms_per_batch"]
        saved_ms = fastest - r["ms_per_batch"]
        compile_s = r["first_call_s"] - r["ms_per_batch"] / 1e3
        out[f"{name}@{size}px/b{b}"] = {"compile_s": compile_s, "saved_ms_per_step": saved_ms,
                                         "break_even_steps": compile_s * 1e3 / saved_ms if saved_ms > 0 else None}
    return out


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
    ap.add_argument("--quick", action="store_true", help="fewer repeats, compile only at batch 8 / 224 px")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    ap.add_argument("--no-allocator", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 224], help="image sides of the table")
    ap.add_argument("--table-batches", type=int, nargs="*", default=[1, 8, 32], help="batch sizes of the table")
    ap.add_argument("--profile-batch", type=int, default=8)
    ap.add_argument("--name", default="floor", help="results file name (a partial rerun keeps floor.json)")
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child == "1", args.batches, args.size)
        return
    fv.tune_allocator()
    for key in ("cache_size_limit", "recompile_limit"):  # one entry per (candidate, shape) of the same forward
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    clf = fv.load_model(device=args.device)
    cands = [c for c in candidates(args.device, args.quick) if not args.only or c.name in args.only]
    load_start = load_avg()
    gflops = matmul_gflops(device=args.device)
    data = {"machine": machine(), "device": args.device, "model": clf.id, "load_start": load_start,
            "matmul_gflops": gflops, "flops": {s: model_flops(clf, s) for s in args.sizes},
            "candidates": {c.name: {"what": c.what, "exact": c.exact} for c in cands}}
    print(f"model {data['model']}   matmul {gflops:.1f} GFLOP/s   threads {torch.get_num_threads()}   "
          f"load {load_start}", flush=True)
    data["floor"] = floor_table(clf, cands, args.sizes, args.table_batches, repeats=3 if args.quick else 5)
    data["break_even"] = break_even(data["floor"])
    data["accuracy"] = accuracy(clf, cands, make_step)
    data["relu6_flips"] = relu6_flips(clf)
    data["profile"] = profile_families(clf, args.profile_batch, max(args.sizes))
    if not args.no_allocator and args.device == "cpu":
        data["allocator"] = allocator_effect()
    data["load_end"] = load_avg()
    _print(data)
    name = args.name
    if args.device != "cpu":  # beside the other benchmarks' results on that device (benchmarks/on_device.py)
        (RESULTS / torch.device(args.device).type).mkdir(parents=True, exist_ok=True)
        name = f"{torch.device(args.device).type}/{name}"
    print(f"\nsaved {save(name, data)}")


def _print(data: dict) -> None:
    flops = data["flops"]
    print(f"\nforward+backward to the input, ms per image (x the FLOP bound at {data['matmul_gflops']:.0f} GFLOP/s); "
          f"load {data['load_start']} -> {data['load_end']}")
    shapes = sorted({(r["size"], r["batch"]) for r in data["floor"]})
    print(f"{'candidate':20s}" + "".join(f"{f'{s}px/b{b}':>17s}" for s, b in shapes))
    for name in data["candidates"]:
        cells = []
        for s, b in shapes:
            r = next((r for r in data["floor"] if r["candidate"] == name and r["size"] == s and r["batch"] == b), None)
            if r is None:
                cells.append(f"{'-':>17s}")
                continue
            bound_ms = flops[s]["forward_backward_gflops"] / data["matmul_gflops"] * 1e3
            cells.append(f"{r['ms_per_image']:9.2f} ({r['ms_per_image'] / bound_ms:4.1f}x)")
        print(f"{name:20s}" + "".join(cells))
    for key, v in data["break_even"].items():
        be = "never (slower)" if v["break_even_steps"] is None else f"{v['break_even_steps']:.0f} steps"
        print(f"compile {key}: {v['compile_s']:.1f} s to compile, saves {v['saved_ms_per_step']:.1f} ms/step, "
              f"break-even {be}")
    print("\naccuracy vs eager float32 (gradient maps of the predicted class on the bundled photos, 224 px)")
    for name, a in data["accuracy"].items():
        print(f"  {name:20s} maps: max rel {a['max_rel']:.2e}  mean rel {a['mean_rel']:.2e}   "
              f"max |dprob| {a['max_dprob']:.2e}   top-1 identical {a['top1_identical']}   "
              f"top-5 identical {a['top5_identical']}")
    f = data["relu6_flips"]
    print(f"\nReLU6 corners flipped by the default's rounding: {f['flipped']} of {f['pre_activations']} "
          f"pre-activations; maps' error vs float64: eager {f['eager_vs_fp64']:.2e}, default {f['fast_vs_fp64']:.2e} "
          f"(mean relative)")
    prof = data["profile"]
    print(f"\nwhere the default's time goes (batch {prof['batch']}, {prof['size']} px, self CPU time by operator "
          f"family, {prof['ms_per_step']:.0f} ms per step)")
    for fam, share in data["profile"]["families"].items():
        print(f"  {fam:28s} {share['ms']:8.1f} ms  {100 * share['share']:5.1f}%")
    if "allocator" in data:
        print("\nallocator (224 px, ms per image, fresh processes, default path)")
        for b in data["allocator"]["default"]:
            d, t = data["allocator"]["default"][b], data["allocator"]["tuned"][b]
            print(f"  batch {b:>3}: glibc default {d:7.1f}   featvis tuned {t:7.1f}   speed-up {d / t:4.2f}x")


if __name__ == "__main__":
    main()
