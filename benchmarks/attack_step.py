"""Time per attack step as a ratio of the bare forward+backward floor, at a constant batch of 8 (224 px): each
attack runs 10 steps that cannot succeed (tiny steps), so no image leaves the batch. A run is 10 forward+backward
passes plus 3 forward-only passes (original predictions, the last 8-bit check, the final measurement); the
ratio divides by exactly that much bare work (10 floor steps + 3 bare no-grad forwards).

    python benchmarks/attack_step.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.adversarial import fool

from _common import floor_step, machine, median_time, save

STEPS = 10


def main() -> None:
    fv.tune_allocator()
    clf = fv.load_model()
    photos = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    x, t = torch.cat([photos, photos[:2].flip(-1)]), torch.full((8,), 6)
    floor = median_time(floor_step(clf, x), repeats=5)

    def forward():
        with torch.no_grad():
            clf(x)

    fwd = median_time(forward, repeats=5)
    bare = STEPS * floor + 3 * fwd
    out = {"machine": machine(), "batch": 8, "floor_s_per_batch": floor, "forward_s_per_batch": fwd, "ratio": {}}
    runs = {"ascent": dict(lr=1e-5, max_steps=STEPS), "lab": dict(lr=1e-5, max_steps=STEPS),
            "pgd": dict(eps=8 / 255, alpha=1e-7, steps=STEPS), "mifgsm": dict(eps=8 / 255, alpha=1e-7, steps=STEPS)}
    for name, kw in runs.items():
        dt = median_time(lambda name=name, kw=kw: fool(clf, x, t, method=name, **kw), repeats=3, warmup=1)
        out["ratio"][name] = dt / bare
        print(f"{name:8s} {out['ratio'][name]:.3f}x the floor per step", flush=True)
    print(f"saved {save('attack_step', out)}")


if __name__ == "__main__":
    main()
