"""Progress from inside long algorithm loops, without a flag or a print in any algorithm.

A front end (the task runner, the web API, a notebook) opens `listening(callback)`; algorithms call
`update(stage, done, total)` at their natural checkpoints (a chunk of samples, an attack step, a render step).
With no listener `update` costs one context-variable lookup. The callback may raise to stop the work (the web
API cancels jobs this way). Listeners nest: one opened inside another's block (the runner's, inside a web job's)
hears first, then the outer one hears too. Context variables are per thread, so concurrent jobs never see each
other's listener.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

Listener = Callable[[str, float, float, dict], None]  # (stage, done, total, extra: e.g. {"preview": images})

_listener: ContextVar[Listener | None] = ContextVar("featvis_progress", default=None)


def update(stage: str, done: float, total: float, **extra: Any) -> None:
    """Tell the current listener (if any) that `done` of `total` units of `stage` are finished; `extra` may carry
    e.g. `preview=` images for live displays."""
    listener = _listener.get()
    if listener is not None:
        listener(stage, done, total, extra)


@contextlib.contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Route `update` calls made in this thread (and the contexts it starts) to `listener` while the block runs."""
    outer = _listener.get()
    if listener is not None and outer is not None:
        inner = listener

        def listener(stage: str, done: float, total: float, extra: dict) -> None:
            inner(stage, done, total, extra)
            outer(stage, done, total, extra)

    token = _listener.set(listener if listener is not None else outer)
    try:
        yield
    finally:
        _listener.reset(token)
