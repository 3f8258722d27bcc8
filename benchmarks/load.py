"""A bounded load test of `featvis serve` on loopback: N requests from C concurrent clients, mixed classify
(synchronous) and saliency (queued jobs, polled to the end); reports failures other than deliberate 429s,
p50/p95 latency and the server's resident memory before and after.

    python benchmarks/load.py [--requests 200] [--clients 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from _http import get, post

from _common import machine, save


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def one(base: str, i: int) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    sample = ["chelsea", "coffee", "grace_hopper", "astronaut", "rocket", "camera"][i % 6]
    if i % 4 == 3:  # a quarter are saliency jobs
        code, body = post(base + "/api/saliency", {"sample": sample, "method": "gradient"})
        if code == 202:
            while get(f"{base}/api/jobs/{body['id']}")["status"] not in ("done", "failed", "cancelled"):
                time.sleep(0.05)
        return "saliency", code, time.perf_counter() - t0
    code, _ = post(base + "/api/classify", {"sample": sample})
    return "classify", code, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "featvis.cli", "serve", "--port", str(args.port), "--device",
                               "cpu"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                get(base + "/api/health")
                break
            except OSError:
                time.sleep(0.1)
        post(base + "/api/classify", {"sample": "coffee"})  # warm-up
        before = rss_mb(server.pid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda i: one(base, i), range(args.requests)))
        wall = time.perf_counter() - t0
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)
    out = {"machine": machine(), "requests": args.requests, "clients": args.clients, "wall_s": wall,
           "rss_mb_before": before, "rss_mb_after": after, "kinds": {}}
    for kind in ("classify", "saliency"):
        lat = sorted(t for k, c, t in results if k == kind and c in (200, 202))
        codes = [c for k, c, _ in results if k == kind]
        out["kinds"][kind] = {"n": len(codes), "ok": len(lat), "429": codes.count(429),
                              "failed": sum(c not in (200, 202, 429) for c in codes),
                              "p50_ms": 1e3 * statistics.median(lat) if lat else None,
                              "p95_ms": 1e3 * lat[int(0.95 * (len(lat) - 1))] if lat else None}
    print(json.dumps(out["kinds"], indent=1))
    print(f"wall {wall:.1f} s; server RSS {before:.0f} MB -> {after:.0f} MB")
    print(f"saved {save('load', out)}")


if __name__ == "__main__":
    main()
