"""How the fast copy shows a layer's output to a featvis hook: as the user's network gives it (issue 23).

The copy runs channels-last and, with bf16 autocast, in bfloat16; a hook served on it sees the output in NCHW and
the caller's dtype, gradients captured on that tensor come back NCHW too, and what the hook returns goes on in the
copy's own layout and dtype. Hooks are still made in featvis.layers; this only wraps them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from featvis.models.fast.kernels import _ChannelsLast
from featvis.models.fast.serving import first_tensor

Hook = Callable[[nn.Module, tuple, object], object]


def with_first(output: object, t: torch.Tensor) -> object:
    """`output` with its tensor (itself, or a tuple's first element) replaced by `t`."""
    return t if isinstance(output, torch.Tensor) else (t, *output[1:])  # type: ignore[index]


def as_users(hook: Hook, dtype: torch.dtype | None, nchw: bool) -> Hook:
    """`hook` for a module of the fast copy, during one forward of this thread (a module the copy shares with the
    user's network may run in another thread meanwhile: it is not seen). `dtype`: the caller's, where the copy
    autocasts; `nchw`: the caller's layout is NCHW where the copy's is channels-last."""
    thread = threading.get_ident()

    def run(module, inputs, output):
        if threading.get_ident() != thread:
            return None
        out = first_tensor(output)
        if out is None:
            return hook(module, inputs, output)
        channels_last = out.dim() == 4 and not out.is_contiguous() \
            and out.is_contiguous(memory_format=torch.channels_last)
        shown = out.contiguous() if nchw and channels_last else out
        if dtype is not None and shown.is_floating_point() and shown.dtype != dtype:
            shown = shown.to(dtype)
        if shown is out:
            return hook(module, inputs, output)
        got = hook(module, inputs, with_first(output, shown))
        onward = first_tensor(got)
        if onward is None:  # None: the copy goes on with its own tensor
            return got
        onward = onward.to(out.dtype)
        if channels_last and onward.dim() == 4:
            onward = _ChannelsLast.apply(onward)  # its backward hands the gradient back NCHW, as the hook saw it
        return with_first(got, onward)

    return run
