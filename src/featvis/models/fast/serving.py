"""Layer hooks the fast copy can serve (issue 23): `capture`, `tap` and `forward_until` run on it.

`featvis.layers` registers its hooks on the user's modules as always (any forward that runs a layer is seen) and
offers them here for the duration of its `with` block. When a classifier's forward then runs on the fast copy, and
the copy computes each offered layer's output as the user's network does (`entry.unlike` says where it does not),
the gate attaches the same hooks to the copy's modules for that forward (`Request.attach`) and the hooks on the
user's modules rest, so each layer call is recorded once. Where the copy cannot serve a layer, the user's network
runs with its hooks, as without a fast path.

The hooks are made in featvis.layers (the one place hooks are made); this module only carries them across, so
models/ never imports layers/ (which sits above it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

import torch
from torch import nn

# attach(the copy's modules by name, dtype to present outputs in or None, whether to present them NCHW) → a context
# in which this request's hooks sit on those modules
Attach = Callable[[Mapping[str, nn.Module], object, bool], AbstractContextManager[None]]


class Request:
    """One `with` block's hooks on layers of `net`, offered to the fast copy."""

    __slots__ = ("attach", "layers", "net", "owned", "thread")

    def __init__(self, net: nn.Module, layers: tuple[str, ...], owned: frozenset[int], attach: Attach) -> None:
        self.net = net
        self.layers = layers  # PyTorch names (find_layer's canonical ones)
        self.owned = owned  # ids of the forward-hook handles it set on the user's modules
        self.attach = attach
        self.thread: int | None = None  # the thread whose forward the copy serves now: its user-side hooks rest

    def resting(self) -> bool:
        """This thread's forward is being served by the copy: the hooks on the user's modules do nothing."""
        return self.thread == threading.get_ident()


_LOCAL = threading.local()  # offers are per thread: a forward in another thread never serves this block's hooks


def _offers() -> list[Request]:
    stack = getattr(_LOCAL, "offers", None)
    if stack is None:
        stack = _LOCAL.offers = []
    return stack


@contextlib.contextmanager
def offered(request: Request) -> Iterator[Request]:
    """`request` is on offer to this thread's forwards of `request.net` for the duration."""
    stack = _offers()
    stack.append(request)
    try:
        yield request
    finally:
        stack.remove(request)


def offers(net: nn.Module) -> tuple[Request, ...]:
    """This thread's requests on `net`, oldest first (the order their hooks fire on the user's modules)."""
    stack = getattr(_LOCAL, "offers", None)
    return tuple(r for r in stack if r.net is net) if stack else ()


@contextlib.contextmanager
def serving(requests: tuple[Request, ...], *, attached: bool = True) -> Iterator[None]:
    """The copy runs this thread's forward for `requests`: their user-side hooks rest, and (`attached`: their hooks
    sit on the copy) `active()` is True. Without `attached`: only rest them (while the copy is planned and probed)."""
    ident = threading.get_ident()
    depth = getattr(_LOCAL, "depth", 0)
    for r in requests:
        r.thread = ident
    _LOCAL.depth = depth + attached
    try:
        yield
    finally:
        _LOCAL.depth = depth
        for r in requests:
            r.thread = None


def active() -> bool:
    """This thread's forward is on the copy with hooks attached (so gradients may be held by others than the copy)."""
    return getattr(_LOCAL, "depth", 0) > 0


def first_tensor(output: object) -> torch.Tensor | None:
    """A module's output tensor: the output itself, or the first element of a tuple/list output (else None)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None
