"""How small a change fools EfficientNet-Lite0: the share of images fooled at each L∞ budget (1–8 /255) by FGSM,
PGD and MI-FGSM, untargeted and with seeded random targets, on the bundled photos and their mirror images (12),
judged on the saved 8-bit images; and the same curve for EfficientNet-Lite2 when the [models] extra is there.

    python benchmarks/robustness.py
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv

from _common import machine, save

EPS = [e / 255 for e in (1, 2, 3, 4, 6, 8)]


def main() -> None:
    fv.tune_allocator()
    out = {"machine": machine(), "eps_255": [round(e * 255) for e in EPS], "curves": {}}
    models = ["efficientnet-lite0"]
    try:
        fv.load_model("efficientnet-lite2")
        models.append("efficientnet-lite2")
    except fv.FeatvisError as e:
        print(f"lite2 skipped: {e}")
    print(f"{'model':20s} {'attack':8s} {'target':8s} " + " ".join(f"{round(e * 255):>5d}" for e in EPS)
          + "   median min eps   s/img")
    for model in models:
        clf = fv.load_model(model)
        photos = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
        x = torch.cat([photos, photos.flip(-1)])
        for method in ("fgsm", "pgd", "mifgsm"):
            for target in (None, "random"):
                t0 = time.perf_counter()
                r = fv.robustness(clf, x, target, eps=EPS, method=method, seed=1)
                dt = (time.perf_counter() - t0) / x.shape[0]
                med = (r.median_min_eps or math.inf) * 255
                key = f"{model} {method} {'untargeted' if target is None else 'random'}"
                out["curves"][key] = {"fooled_rate": r.fooled_rate, "median_min_eps_255": med, "s_per_image": dt}
                print(f"{model:20s} {method:8s} {'none' if target is None else 'random':8s} "
                      + " ".join(f"{v:5.0%}" for v in r.fooled_rate) + f"   {med:14.1f}   {dt:5.2f}", flush=True)
    print(f"saved {save('robustness', out)}")


if __name__ == "__main__":
    main()
