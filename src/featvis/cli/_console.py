"""The CLI's two consoles, made on first use (importing the CLI probes no terminal): stderr for messages and
progress, stdout for tables and JSON."""

from __future__ import annotations

import functools

from rich.console import Console

WIDE = 200  # columns when stdout is not a terminal: file names are not cut to fit 80 columns


@functools.cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False)


@functools.cache
def out_console() -> Console:
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=WIDE)


def say(message: str, *, style: str | None = None) -> None:
    """One line on stderr, never wrapped, never read as markup (file names may hold '[' and ']')."""
    err_console().print(message, markup=False, highlight=False, soft_wrap=True, style=style)
