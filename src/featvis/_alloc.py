"""Allocator tuning for featvis's own processes (the CLI, the web server, benchmarks).

glibc serves every allocation above its mmap threshold with a fresh mmap and returns it on free, so each
forward/backward pass page-faults its activations in again; on 2 CPU cores that roughly halves the speed of
batch 16–32 forward+backward (benchmarks/floor.py measures it). Keeping freed memory in the heap fixes it.
The library never calls this on import: a user's process is the user's to tune.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc only; idempotent).

    Returns:
        True if the allocator was tuned, False where this is not glibc (macOS, Windows, musl).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # No mmap for big blocks (they come from the heap and are reused), and never trim the heap top.
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _tuned = bool(ok)
    return _tuned
