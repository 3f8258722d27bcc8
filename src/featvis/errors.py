"""The one error type featvis raises for bad input, and helpers that make its messages one useful line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatvisError(ValueError):
    """Bad input or an unusable setting. The message is one line: what was wrong and what to do."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The `n` choices most similar to `name` (case-insensitive), best first; never empty if choices exist."""
    pool = list(dict.fromkeys(choices))
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.0)
    # Substring matches first: "blocks" should suggest "_blocks.0" before anything merely similar.
    subs = [c for c in pool if name.lower() in c.lower()][:n]
    ordered = list(dict.fromkeys(subs + [lowered[h] for h in hits]))
    return ordered[:n]


def did_you_mean(kind: str, name: str, choices: Iterable[str], hint: str = "") -> FeatvisError:
    """An error for an unknown `kind` called `name`, suggesting the closest choices."""
    near = closest(str(name), choices)
    listed = ", ".join(repr(c) for c in near)
    tail = f"; {hint}" if hint else ""
    return FeatvisError(f"unknown {kind} {name!r}; did you mean {listed}?{tail}")
