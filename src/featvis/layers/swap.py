"""`swapped_forward`: submodules' forward replaced for the duration of a block (modified-backward methods)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from featvis.layers.lookup import root


@contextlib.contextmanager
def swapped_forward(model: nn.Module, types: tuple[type, ...], make_forward) -> Iterator[int]:
    """Temporarily replace the forward of every submodule of the given types with `make_forward(module)`.

    Used by modified-backward methods (guided backprop) so that the gradient rule applies to every call of a
    reused activation module and ignores `inplace=True`. The original forwards are restored on exit.

    Yields:
        how many modules were swapped.
    """
    swapped = [m for m in root(model).modules() if isinstance(m, types)]
    try:
        for m in swapped:
            m.forward = make_forward(m)
        yield len(swapped)
    finally:
        for m in swapped:
            m.__dict__.pop("forward", None)
