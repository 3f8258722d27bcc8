"""What the fast copy changes (`FastOptions`) and the switch that picks them for a classifier (`options`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

AUTOCASTS = {"bf16": torch.bfloat16}
COMPILE_AFTER_CALLS = 16  # same-shape calls before compiling: a loop, not a one-off (break-even: floor.py)
_OFF = {"0", "off", "false", "no", "eager"}


@dataclass(frozen=True)
class FastOptions:
    """What the fast copy changes. The defaults are the exact transforms; `autocast="bf16"` is opt-in."""

    fold_bn: bool = True
    channels_last: bool = True
    # A folded conv whose BatchNorm output only feeds a ReLU6 applies the ReLU6 as a oneDNN post-op (CPU float32,
    # with channels_last): one pass over those activations less forward. Exact (the same conv, then the same clamp).
    fuse_relu6: bool = True
    autocast: str | None = None  # "bf16": bfloat16 autocast (AMX/AVX-512-BF16 CPUs, Ampere+ GPUs)
    # torch.compile (inductor) for an input shape once it has run COMPILE_AFTER_CALLS times (a loop: render steps,
    # attack steps, IG/SmoothGrad chunks); shorter calls never pay the compile time. Opt-in: see benchmarks/floor.py
    compile: bool = False


_DEFAULT = FastOptions()


def options(clf: nn.Module) -> FastOptions | None:
    """The fast-path options in force for `clf`: its `fast` attribute, else `FEATVIS_FAST`; None when off.

    `FEATVIS_FAST` is read at each call: "0"/"off" disables, "bf16" adds bfloat16 autocast, "compile" compiles
    loops, "nofold", "nofuse" and "nchw" drop one transform (comma-separated, e.g. "bf16,compile").
    """
    setting = clf.__dict__.get("fast", True)
    if setting is False or setting is None:
        return None
    if isinstance(setting, FastOptions):
        return setting
    env = os.environ.get("FEATVIS_FAST", "").strip().lower()
    if not env:
        return _DEFAULT
    words = {w.strip() for w in env.split(",") if w.strip()}
    if words & _OFF:
        return None
    return FastOptions(fold_bn="nofold" not in words, channels_last="nchw" not in words,
                       fuse_relu6="nofuse" not in words,
                       autocast="bf16" if "bf16" in words else None, compile="compile" in words)
