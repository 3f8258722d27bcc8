"""`featvis concepts` on a labelled photo set, local and on Ray: the concepts found per class, their importances,
the concept-deletion and insertion AUCs against random orders with 95 % bootstrap intervals, time per class and
per image, peak memory, and how far Ray's records are from the local ones.

    python benchmarks/conceptset.py                        # the labelled real photos (out/conceptset)
    python benchmarks/concepts.py [--data out/conceptset] [--only local,ray] [-k 10] [--images 64]

Each configuration runs the CLI in its own process (`featvis concepts DATA --imagefolder ... --json`), so its peak
resident memory (GNU time's %M) is its own; under Ray the workers
are Ray's processes, not waited for here, so the figure is the driver's. Ray runs 2 workers × 1 CPU against the local
run's 2 threads. The page of the local run is left in out/concepts-bench/local/index.html. Results:
benchmarks/results/concepts.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, save

RUNS = {"local": [], "ray": ["--executor", "ray", "--workers", "2", "--cpus-per-worker", "1"]}


def run(name: str, data: Path, out: Path, opts: list[str]) -> dict:
    mem = out / f"{name}.maxrss"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "featvis.cli", "concepts", str(data), "--imagefolder", "-o", str(out / name),
           "--overwrite", "--json", *opts, *RUNS[name]]
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(mem), *cmd], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    res = json.loads(proc.stdout)
    items = res["items"]
    images = sum(r["images"] for r in items)
    return {"wall_s": wall, "per_class_s": wall / len(items), "per_image_s": wall / images, "images": images,
            "driver_peak_rss_mb": int(mem.read_text().split()[-1]) / 1024, "summary": res["summary"],
            "classes": [{"class": r["class_name"], "images": r["images"], "crops": r["crops"],
                         "reconstruction_error": r["reconstruction_error"], "seconds": r["seconds"],
                         "concepts": [{"id": c["id"], "importance": c["importance"], "share": c["share"]}
                                      for c in r["concepts"]],
                         **{kind: {k: r[kind][k] for k in ("auc", "auc_ci", "random_auc", "random_ci", "beats_random",
                                                           "orders", "images")} for kind in ("deletion", "insertion")}}
                        for r in items]}


def compare(a: dict, b: dict) -> dict:
    """Largest differences of importances and AUCs between two runs' classes (same classes, same seeds)."""
    imp, auc, same_rank = 0.0, 0.0, 0
    for x, y in zip(a["classes"], b["classes"], strict=True):
        ix = {c["id"]: c["importance"] for c in x["concepts"]}
        iy = {c["id"]: c["importance"] for c in y["concepts"]}
        imp = max(imp, max(abs(ix[j] - iy[j]) for j in ix))
        auc = max(auc, abs(x["deletion"]["auc"] - y["deletion"]["auc"]))
        same_rank += [c["id"] for c in x["concepts"]] == [c["id"] for c in y["concepts"]]
    return {"max_importance_diff": imp, "max_auc_diff": auc, "classes_with_the_same_ranking": same_rank,
            "classes": len(a["classes"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("out/conceptset"))
    ap.add_argument("--out", type=Path, default=Path("out/concepts-bench"))
    ap.add_argument("--only", default="local,ray")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=96)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not a folder; build it first: python benchmarks/conceptset.py")
    opts = ["-k", str(args.k), "--images", str(args.images), "--steps", str(args.steps)]
    results = {"machine": machine(), "data": str(args.data), "options": opts, "runs": {}}
    for name in args.only.split(","):
        results["runs"][name] = run(name, args.data, args.out, opts)
        r = results["runs"][name]
        print(f"{name}: {r['wall_s']:.1f} s, {r['per_class_s']:.1f} s/class, {r['per_image_s']:.2f} s/image, "
              f"driver peak {r['driver_peak_rss_mb']:.0f} MB", flush=True)
    if {"local", "ray"} <= set(results["runs"]):
        results["local_vs_ray"] = compare(results["runs"]["local"], results["runs"]["ray"])
    path = save("concepts", results)
    for c in results["runs"].get("local", {}).get("classes", []):
        d = c["deletion"]
        shares = ", ".join(f"{x['share']:.2f}" for x in c["concepts"][:3])
        print(f"{c['class']:>20}: {c['images']} images, top shares {shares}; deletion AUC {d['auc']:.3f} "
              f"[{d['auc_ci'][0]:.3f}, {d['auc_ci'][1]:.3f}] vs random {d['random_auc']:.3f} "
              f"[{d['random_ci'][0]:.3f}, {d['random_ci'][1]:.3f}] beats random: {d['beats_random']}")
        i = c["insertion"]
        print(f"{'':>20}  insertion AUC {i['auc']:.3f} [{i['auc_ci'][0]:.3f}, {i['auc_ci'][1]:.3f}] vs random "
              f"{i['random_auc']:.3f} [{i['random_ci'][0]:.3f}, {i['random_ci'][1]:.3f}] beats random: "
              f"{i['beats_random']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
