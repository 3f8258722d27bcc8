"""The one error type featvis raises for bad input, and helpers that make its messages one useful line."""

from __future__ import annotations

import difflib
import errno
import os
import stat
from collections.abc import Iterable

SHOWN_PATH_CHARS = 400  # a path in a message is cut to this many characters (a 5,000-character name stays one line)


class FeatvisError(ValueError):
    """Bad input or an unusable setting. The message is one line: what was wrong and what to do."""


class FeatvisWarning(UserWarning):
    """Something featvis did differently from what was asked, or skipped; the CLI prints it as one line."""


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


def display_path(path: str | os.PathLike | bytes, limit: int | None = None) -> str:
    r"""A path as printable text: bytes that are not UTF-8 and control characters become backslash escapes.

    File names are bytes on POSIX; Python keeps undecodable ones as lone surrogates ('bad\udcff.png'), which
    cannot be printed, logged or encoded as UTF-8. This renders them the way a `bytes` repr does, so messages and
    keys stay one printable line. Valid non-ASCII text stays as it is. `limit`: for messages, cut the middle of a
    longer path (records keep the whole path).

    Example:
        >>> display_path(b"bad\xff.png"), display_path("new\nline.png"), display_path("café.png")
        ('bad\\xff.png', 'new\\nline.png', 'café.png')
    """
    try:
        raw = os.fsencode(path)  # the bytes the OS holds (surrogateescape undone)
    except UnicodeEncodeError:  # a surrogate that did not come from the file system
        raw = os.fspath(path).encode("utf-8", "backslashreplace")  # type: ignore[union-attr]
    text = raw.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is not None and len(text) > limit:  # keep both ends: the folder and the file's own name
        keep = (limit - 1) // 2
        text = f"{text[:keep]}…{text[-keep:]} ({len(text):,} characters)"
    return text


_PATH_PROBLEMS = {
    errno.ELOOP: "is a symbolic link loop (or a chain of more than 40 links); fix or remove the link",
    errno.ENAMETOOLONG: "is too long a name for the file system; shorten it",
    errno.EACCES: "cannot be read: permission denied; fix its permissions",
    errno.EPERM: "cannot be read: operation not permitted; fix its permissions",
}


def path_kind(path: str | os.PathLike, what: str = "input") -> str:
    """"file", "dir", "missing" or "other" (a FIFO, socket or device) for `path`, following links; a path the OS
    cannot even look up (a symlink loop, a name too long, no permission) is a one-line FeatvisError naming it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:  # a file used as a folder on the way
        return "missing"
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        problem = _PATH_PROBLEMS.get(getattr(e, "errno", None)) or (
            "holds a NUL byte" if isinstance(e, ValueError) else f"cannot be read: {e.strerror or e}")
        raise FeatvisError(f"{what} '{display_path(path, SHOWN_PATH_CHARS)}' {problem}") from None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def os_error_message(e: OSError, path: str | os.PathLike | bytes) -> str:
    """One line for a failed write of `path`: what happened and what to do (disk full, permissions, read-only)."""
    where = f"'{display_path(path, SHOWN_PATH_CHARS)}'"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        quota = " (quota exceeded)" if e.errno == errno.EDQUOT else ""
        return f"disk full while writing {where}{quota}; free space and rerun to resume"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {where}: permission denied; choose another output folder or fix its permissions"
    if e.errno == errno.EROFS:
        return f"cannot write {where}: the file system is read-only; choose another output folder"
    text = (e.strerror or str(e)).strip()
    return f"cannot write {where}: {text.splitlines()[0] if text else type(e).__name__}"
