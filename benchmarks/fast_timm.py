"""The fast path on timm's CNNs (issue 17): BatchNormAct2d folded, its ReLU6 fused. For each architecture (drawn
weights, BatchNorm statistics estimated on noise images): what the fast copy does (`fast.status`), the input
gradient's distance from float64 for the copy and for the user's network, and ms per image of the floor (forward +
backward to the input) at batch 8, 224 px, fast vs eager alternating. Needs timm: run it in the integration venv.

    PYTHONPATH=src .venv-integration/bin/python benchmarks/fast_timm.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import timm

import featvis as fv
from featvis.models import fast, frozen

from _cases import calibrate
from _common import machine, save

ARCHS = ("tf_efficientnet_lite0", "mobilenetv2_100", "efficientnet_b0")


def measure(arch: str, size: int = 224, batch: int = 8, repeats: int = 6) -> dict:
    torch.manual_seed(0)
    net = calibrate(timm.create_model(arch, pretrained=False), size)
    clf = fv.Classifier.wrap(net, labels=[str(i) for i in range(1000)], input_size=size, mean=(0.5,) * 3,
                             std=(0.5,) * 3)
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(3))

    def grads(setting) -> torch.Tensor:
        clf.fast = setting
        with frozen(clf):
            xx = x.clone().requires_grad_(True)
            return torch.autograd.grad(clf(xx)[:, 1].sum(), xx)[0]

    g_fast = grads(True)
    status = {k: v for k, v in fast.status(clf).items() if k != "options"}
    g_eager = grads(False)
    x64 = x.double().requires_grad_(True)
    exact = torch.autograd.grad(net.double()((x64 - 0.5) / 0.5)[:, 1].sum(), x64)[0].float()
    net.float()

    def error(g: torch.Tensor) -> float:
        return float((g - exact).abs().sum() / exact.abs().sum())

    xb = torch.rand(batch, 3, size, size)

    def step():
        xx = xb.clone().requires_grad_(True)
        return torch.autograd.grad(clf(xx)[:, 0].sum(), xx)[0]

    times: dict[bool, list[float]] = {True: [], False: []}
    with frozen(clf):
        for setting in times:
            clf.fast = setting
            step()
        for _ in range(repeats):
            for setting in times:
                clf.fast = setting
                t0 = time.perf_counter()
                step()
                times[setting].append((time.perf_counter() - t0) / batch * 1e3)
    clf.fast = True
    return {"status": status, "grad_error_vs_fp64": {"fast": error(g_fast), "eager": error(g_eager)},
            "ms_per_image": {"fast": statistics.median(times[True]), "eager": statistics.median(times[False])},
            "size": size, "batch": batch}


def main() -> None:
    fv.tune_allocator()
    data = {"machine": machine(), "timm": timm.__version__, "archs": {}}
    for arch in ARCHS:
        r = data["archs"][arch] = measure(arch)
        print(f"{arch:24s} folded {r['status']['folded']:3d} fused {r['status']['fused']:3d}   "
              f"ms/img fast {r['ms_per_image']['fast']:6.1f} eager {r['ms_per_image']['eager']:6.1f}   "
              f"grad error vs fp64 fast {r['grad_error_vs_fp64']['fast']:.1e} "
              f"eager {r['grad_error_vs_fp64']['eager']:.1e}", flush=True)
    print(f"saved {save('fast_timm', data)}")


if __name__ == "__main__":
    main()
