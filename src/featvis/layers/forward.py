"""`forward_until`: run a model only up to the layers an objective reads, so it never pays for the layers after."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.layers.hooks import Hook, _Stop, hooked
from featvis.layers.lookup import find_layer
from featvis.layers.tokens import to_spatial, token_layout
from featvis.models.fast.serving import first_tensor
from featvis.models.freeze import frozen


def forward_until(model: nn.Module, images: torch.Tensor, layers: str | Sequence[str], *,
                  call: int = 0) -> torch.Tensor | dict[str, torch.Tensor]:
    """Run `model` on `images` only until the named layer(s) have produced output, then stop.

    Later layers never run, so an objective on an early layer costs a fraction of a full forward. A Classifier
    runs on its fast copy where that leaves the layers' outputs unchanged (`featvis.models.fast`). A module called
    several times gives its output of call number `call` (0, the default: its first) and the pass stops there. The
    model runs in eval mode with its parameters frozen (both restored after): a train-mode pass would move its
    BatchNorm statistics.

    Returns:
        The activation ([B, C, H, W] for spatial or token outputs), or a dict of them for a list of names.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    acts: dict[str, torch.Tensor] = {}
    calls = dict.fromkeys((n for n, _ in found), 0)
    token = object()

    def make_hook(name: str) -> Hook:
        def hook(_module, _inputs, output):
            out = first_tensor(output)
            if out is not None and name not in acts:
                calls[name] += 1
                if calls[name] > call:
                    acts[name] = out
            if len(acts) == len(found):
                raise _Stop(token)

        return hook

    try:
        with hooked(model, found, make_hook), frozen(model):
            model(images)
    except _Stop as e:
        if e.owner is not token:
            raise
    missing = [n for n, _ in found if n not in acts]
    if missing:
        runs = f" {call + 1} times" if call else ""
        raise FeatvisError(f"layer(s) {missing} did not run{runs} in the forward pass; pick layers the model uses")
    layout = token_layout(model)
    if isinstance(layers, str):
        return to_spatial(acts[found[0][0]], layout)
    return {n: to_spatial(acts[n], layout) for n, _ in found}
