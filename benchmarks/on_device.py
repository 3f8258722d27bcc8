"""Run a benchmark script on another device without editing it (benchmarks/gpu.sh):

    python benchmarks/on_device.py cuda benchmarks/attribution.py --quick

Before the script runs: `featvis.load_model` defaults to the device, the floor step and `median_time` of
_common.py move their inputs there and wait for the device before reading the clock, a Classifier moves inputs
that arrive from another device (the peer libraries' calls), and results go to benchmarks/results/<device>/ so
the CPU results stay. `FEATVIS_BENCH_DEVICE` is set for child processes the script starts.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def install(device_name: str) -> None:
    """Point featvis's benchmarks at `device_name` (see the module docstring)."""
    import featvis
    import featvis.models
    import featvis.models.zoo
    from featvis.models.classifier import Classifier

    import _common

    device = torch.device(device_name)
    os.environ["FEATVIS_BENCH_DEVICE"] = device_name
    original_load = featvis.models.zoo.load_model

    @functools.wraps(original_load)
    def load_model(*args, **kwargs):
        kwargs.setdefault("device", device)
        if kwargs["device"] is None:
            kwargs["device"] = device
        return original_load(*args, **kwargs)

    for module in (featvis, featvis.models, featvis.models.zoo):
        module.load_model = load_model

    original_forward = Classifier.forward

    def forward(self, images):
        return original_forward(self, images.to(self.mean.device) if images.device != self.mean.device else images)

    Classifier.forward = forward

    original_floor, original_median = _common.floor_step, _common.median_time

    def floor_step(clf, images):
        return original_floor(clf, images.to(clf.device))

    def median_time(fn, repeats=5, warmup=2):
        def synced():
            out = fn()
            _sync(device)
            return out

        return original_median(synced, repeats=repeats, warmup=warmup)

    _common.floor_step, _common.median_time = floor_step, median_time
    _common.RESULTS = _common.RESULTS / device.type


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python benchmarks/on_device.py DEVICE SCRIPT [ARGS...]")
    device, script, *args = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    install(device)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
