"""The `featvis` command. Front ends only parse, call the library and present; no algorithm lives here."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer
from typer.exceptions import TyperException

from featvis.cli import concepts, core, demo, fool, optvis, saliency, universal  # noqa: F401  (registers the commands)
from featvis.cli._common import app, say
from featvis.errors import FeatvisError, FeatvisWarning


def _version(value: bool) -> None:
    if value:
        from featvis import __version__

        typer.echo(f"featvis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """See what a pretrained image classifier sees, how easily it is fooled, and what it has learned."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a job scheduler's time limit), handled as Ctrl-C is: the runner marks the run
    interrupted, and the exit code is 143 as for a process killed by SIGTERM."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (Python's default adds the file, line number and source line)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    say(f"featvis: warning: {text}" if issubclass(category, FeatvisWarning) else
        f"featvis: warning ({category.__name__}): {text}", style="yellow")


_TERMINATED = threading.Event()


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the command runs; warnings print as one line."""
    def terminate(_signum, _frame) -> None:
        _TERMINATED.set()  # click turns the KeyboardInterrupt into Abort: the flag says which signal it was
        raise Terminated

    old = signal.signal(signal.SIGTERM, terminate) if threading.current_thread() is threading.main_thread() else None
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        warnings.showwarning = shown
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and non-zero exit codes instead of tracebacks."""
    from featvis._alloc import tune_allocator

    tune_allocator()  # our own process: keep freed activation memory (see featvis/_alloc.py)
    _TERMINATED.clear()
    try:
        with _signals():
            code = app(args=_aliased(list(sys.argv[1:] if argv is None else argv)), standalone_mode=False)
    except FeatvisError as e:
        say(f"featvis: error: {e}")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except TyperException as e:  # usage errors: typer's own one-line message
        show = getattr(e, "show", None)
        if show is not None:
            show()
        return int(getattr(e, "exit_code", 2))
    if code == 130:  # typer turns Ctrl-C into exit code 130
        return _interrupted()
    return code if isinstance(code, int) else 0


def _aliased(argv: list[str]) -> list[str]:
    """`featvis fool DATASET --universal ...` is `featvis universal DATASET ...` (the issue's spelling; the
    universal command has its own options, listed by `featvis universal --help`)."""
    if argv[:1] == ["fool"] and "--universal" in argv:
        return ["universal", *(a for a in argv[1:] if a != "--universal")]
    return argv


def _interrupted() -> int:
    """Ctrl-C and SIGTERM end alike: one line, the run marked interrupted, and a rerun resumes it."""
    if _TERMINATED.is_set():
        say("featvis: terminated (SIGTERM); rerun the same command to resume")
        return 143
    say("featvis: interrupted; rerun the same command to resume")
    return 130


if __name__ == "__main__":
    sys.exit(main())
