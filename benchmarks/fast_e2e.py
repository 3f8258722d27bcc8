"""End to end, before/after the fast path (issue 17): the same featvis calls with `FEATVIS_FAST=0` (the user's
network, as before) and with the default (BN folded + channels-last copy), each in a fresh process, alternating,
repeated; medians reported, with the load average around each run.

    python benchmarks/fast_e2e.py                       # all tasks, 3 repeats (demo: 1)
    python benchmarks/fast_e2e.py --tasks saliency ig32 --repeats 5

Tasks: gradient saliency over the bundled photos (224 px), integrated gradients 32 steps over them, PGD 10 steps
(no early stop, so both runs do the same work) over them, the lucid class visualization 200 steps, and the
`featvis demo -o DIR --quiet` wall time. The in-process tasks report the first call (which builds the fast copy)
and a second, warm call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _floor_parts import load_avg

from _common import RESULTS, machine, save

TASKS = ("saliency", "ig32", "pgd10", "lucid200", "demo")
CONFIGS = ("before", "after")  # FEATVIS_FAST=0 (the user's network) / the default


def _task(name: str):
    import torch

    import featvis as fv

    clf = fv.load_model(device=os.environ.get("FEATVIS_BENCH_DEVICE") or None)  # benchmarks/gpu.sh: cuda
    x = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()]).to(clf.device)
    if name == "saliency":
        return lambda: fv.saliency(clf, x, None)
    if name == "ig32":
        return lambda: fv.saliency(clf, x, None, method="integrated-gradients", steps=32)
    if name == "pgd10":
        return lambda: fv.fool(clf, x, "random", method="pgd", steps=10, early_stop=False)
    if name == "lucid200":
        return lambda: fv.class_visualization(clf, "tarantula", preset="lucid", steps=200)
    raise SystemExit(f"unknown task {name}")


def child(name: str) -> None:
    import featvis as fv

    fv.tune_allocator()  # as featvis's own processes do
    import torch

    fn = _task(name)
    sync = torch.cuda.synchronize if os.environ.get("FEATVIS_BENCH_DEVICE", "").startswith("cuda") else (
        lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sync()
    print(json.dumps({"first_s": first, "warm_s": time.perf_counter() - t0}))


def _env(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FEATVIS_FAST"}
    if config != "after":  # "before": FEATVIS_FAST=0; any other name is a FEATVIS_FAST value ("bf16,compile")
        env["FEATVIS_FAST"] = "0" if config == "before" else config
    return env


def run_once(task: str, config: str) -> dict:
    env = _env(config)
    before = load_avg()
    if task == "demo":
        out = tempfile.mkdtemp(prefix="featvis-demo-")
        try:
            t0 = time.perf_counter()
            cli = os.path.join(os.path.dirname(sys.executable), "featvis")  # the venv's, activated or not
            subprocess.run([cli, "demo", "-o", out, "--quiet"], env=env, check=True, capture_output=True)
            res = {"wall_s": time.perf_counter() - t0}
        finally:
            shutil.rmtree(out, ignore_errors=True)
    else:
        proc = subprocess.run([sys.executable, __file__, "--child", task], env=env, check=True, capture_output=True,
                              text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load"] = [before, load_avg()]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-repeats", type=int, default=1)
    ap.add_argument("--device", default=None, help="e.g. cuda (the children load the model there)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help="before/after, or FEATVIS_FAST values")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.device:
        os.environ["FEATVIS_BENCH_DEVICE"] = args.device
    data = {"machine": machine(), "device": args.device or "cpu", "runs": {}}
    configs = list(args.configs)
    for task in args.tasks:
        reps = args.demo_repeats if task == "demo" else args.repeats
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for r in range(reps):
            for config in configs[r % len(configs):] + configs[:r % len(configs)]:  # rotate the order
                runs[config].append(run_once(task, config))
                print(f"{task:9s} {config:12s} {runs[config][-1]}", flush=True)
        data["runs"][task] = runs
    print("\nmedian seconds (first call, which builds the fast copy | a second, warm call; demo: wall time)")
    summary = {}
    for task, runs in data["runs"].items():
        key = "wall_s" if task == "demo" else "first_s"
        med = {c: statistics.median(r[key] for r in rs) for c, rs in runs.items()}
        warm = {c: statistics.median(r.get("warm_s", r[key]) for r in rs) for c, rs in runs.items()}
        summary[task] = {c: {"s": med[c], "warm_s": warm[c]} for c in configs}
        base = configs[0]
        print(f"  {task:9s} " + "   ".join(
            f"{c} {med[c]:7.2f} | {warm[c]:7.2f}" + (f" ({med[base] / med[c]:.2f}x)" if c != base else "")
            for c in configs))
    data["summary"] = summary
    name = "fast_e2e" if not args.device else f"{args.device.split(':')[0]}/fast_e2e"  # CPU results stay
    previous = RESULTS / f"{name}.json"  # tasks not run this time (--tasks) keep their earlier results
    if previous.exists() and set(args.configs) == set(CONFIGS):
        old = json.loads(previous.read_text())
        for key in ("runs", "summary"):
            data[key] = {**{k: v for k, v in old.get(key, {}).items() if k not in data[key]}, **data[key]}
    print(f"saved {save(name, data)}")


if __name__ == "__main__":
    main()
