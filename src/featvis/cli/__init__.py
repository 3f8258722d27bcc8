"""The `featvis` command. Front ends only parse, call the library and present; no algorithm lives here."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from featvis.cli import core, demo, fool, optvis, saliency  # noqa: F401  (registers the commands)
from featvis.cli._common import app, say
from featvis.errors import FeatvisError


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and non-zero exit codes instead of tracebacks."""
    from featvis._alloc import tune_allocator

    tune_allocator()  # our own process: keep freed activation memory (see featvis/_alloc.py)
    try:
        code = app(args=argv, standalone_mode=False)
    except FeatvisError as e:
        say(f"featvis: error: {e}")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        say("featvis: interrupted; rerun the same command to resume")
        return 130
    except TyperException as e:  # usage errors: typer's own one-line message
        show = getattr(e, "show", None)
        if show is not None:
            show()
        return int(getattr(e, "exit_code", 2))
    if code == 130:  # typer turns Ctrl-C into exit code 130
        say("featvis: interrupted; rerun the same command to resume")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
