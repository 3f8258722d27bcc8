"""`frozen`: a model in eval mode with no parameter gradients for the duration of a `with` block.

Its own module below both `models.classifier` and `featvis.layers`, so that neither imports the other for it
(issue 23: the circle layers → models/classifier → models/fast → layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; both restored on exit, even after errors.

    Parameters that don't require grad make autograd skip weight gradients and save less for backward. Only what
    differs is set and restored (`model.eval()` runs when some module is training): every featvis call enters this,
    and on an eval-mode model with frozen weights it then costs a walk over the modules, not a write to each.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if any(mode for _, mode in modes):
            model.eval()
        for p, flag in flags:
            if flag:
                p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
