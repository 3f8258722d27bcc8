"""Issue 12, item 1, run many times against a real server: a channel-visualization job while 3 clients loop
classify. Before the fix, 4 of 4 jobs failed and classify answered 500; now one thread owns the model.

    python benchmarks/web_concurrency.py --rounds 100
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _http

from _common import save


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, fields: dict[str, str]) -> tuple[int, dict]:
    return _http.post(url, fields, timeout=300)


def get(url: str) -> dict:
    return _http.get(url, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "featvis.cli", "serve", "--port", str(port), "--device", "cpu"],
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            get(base + "/api/health")
            break
        except OSError:
            time.sleep(0.1)
    failures, classify_calls, t0 = [], 0, time.time()
    try:
        for i in range(args.rounds):
            status, job = post(base + "/api/visualize", {"kind": "channel", "layer": "blocks.8", "channel": "3",
                                                         "steps": str(args.steps), "size": "64"})
            assert status == 202, status
            codes, tops, stop = [], [], threading.Event()

            def client(stop=stop, codes=codes, tops=tops):
                while not stop.is_set():
                    code, res = post(base + "/api/classify", {"sample": "coffee"})
                    codes.append(code)
                    if code == 200:
                        tops.append(res["predictions"][0]["index"])

            threads = [threading.Thread(target=client) for _ in range(3)]
            for t in threads:
                t.start()
            while (state := get(f"{base}/api/jobs/{job['id']}"))["status"] in ("queued", "running"):
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
            classify_calls += len(codes)
            ok = state["status"] == "done" and set(codes) == {200} and set(tops) == {967}
            if not ok:
                failures.append({"round": i, "job": state["status"], "error": state.get("error"),
                                 "codes": sorted(set(codes)), "tops": sorted(set(tops))})
            print(f"round {i}: job {state['status']}, {len(codes)} classify calls, codes {sorted(set(codes))}",
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    result = {"rounds": args.rounds, "failures": failures, "classify_calls": classify_calls,
              "seconds": round(time.time() - t0, 1)}
    print(result)
    save("web_concurrency", result)


if __name__ == "__main__":
    main()
