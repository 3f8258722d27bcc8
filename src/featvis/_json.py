"""Reading JSON that came from a file someone else may have made: one-line errors, never a traceback.

Python's json module reads some files into a traceback (an integer of more than 4,300 digits: ValueError; lists
nested 100,000 deep: RecursionError) or into values that break later (a 400-digit integer: OverflowError in
float()). `load_checked` refuses, in one line naming the file and the place in it:

- an integer outside ±2**64: featvis writes counts, indices, steps and 64-bit seeds, so such a number is damage,
  not data. The file is refused rather than the number shown as "–", because a table or a curve built from a file
  that lost numbers would show results the run never had;
- nesting deeper than MAX_DEPTH levels (featvis writes six);
- a `schema` that is not a positive integer ("1", null, -1, 1.5, true);
- text that is not UTF-8 or not JSON, and a top level that is not an object.

Numbers that are not finite (`1e999` reads as inf, `NaN`) are numbers to Python; pages show them as "–".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from featvis.errors import FeatvisError

MESSAGE_VALUE_CHARS = 80  # a value quoted from a file in a message is cut to this


def _short(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """repr(value) cut to `limit` characters, for quoting a value from a file in a one-line message."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[:4 * limit])
    return text if len(text) <= limit else text[:limit - 1] + "…"


MAX_DEPTH = 32  # levels of nesting; featvis writes six (results → items → record → curves → method → points)
INT_LIMIT = 2**64  # the largest magnitude of an integer featvis writes (a 64-bit seed)
_INT_DIGITS = len(str(INT_LIMIT))
_PATH_PARTS = 6  # a place in a file is named by at most this many keys, then "…"
RERUN = "rerun the command to rewrite it"


class _BadInt:
    """An integer literal beyond ±INT_LIMIT, kept as its number of digits (never converted: Python refuses to)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {self.digits}-digit integer"


def _parse_int(text: str, bad: list) -> int | _BadInt:
    digits = len(text) - text.startswith("-")
    if digits <= _INT_DIGITS:
        value = int(text)
        if -INT_LIMIT <= value <= INT_LIMIT:
            return value
    bad.append(digits)
    return _BadInt(digits)


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _depth(raw: bytes) -> int:
    """How deep the lists and objects of a valid JSON text nest, in C-speed passes (a walk over every value of a
    100 MB results file took 2.4 s; this takes 0.5 s): drop escapes, then strings, then all but brackets."""
    brackets = re.sub(rb'"[^"]*"', b"", re.sub(rb"\\.", b"", raw)).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    opens = np.frombuffer(brackets, np.uint8)
    return int(np.cumsum(np.where((opens == ord("[")) | (opens == ord("{")), 1, -1)).max())


def _place(parts: tuple) -> str:
    """`summary.curve.eps[0]` from the keys leading to a value."""
    keys = []
    while parts:
        parts, key = parts
        keys.append(key)
    keys.reverse()
    text = ""
    for key in keys[:_PATH_PARTS]:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            name = key if key.isidentifier() and len(key) <= 40 else _short(key, 40)
            text += f".{name}" if text else name
    return text + ("…" if len(keys) > _PATH_PARTS else "")


def _find_bad_int(data: Any) -> tuple[str, _BadInt]:
    """(place, value) of the first integer _parse_int refused (iterative: the data nests at most MAX_DEPTH)."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        obj, where = stack.pop()
        for key, value in (obj.items() if type(obj) is dict else enumerate(obj)):
            if type(value) is _BadInt:
                return _place((where, key)), value
            if type(value) in (dict, list):
                stack.append((value, (where, key)))
    raise AssertionError("no refused integer found")  # unreachable: _parse_int saw one


def load_checked(path: Path) -> Any:
    """The JSON value in `path`, or a one-line FeatvisError naming the file and what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FeatvisError(f"cannot read {str(path)!r}: {e.strerror or e}; check its permissions or {RERUN}") \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FeatvisError(f"cannot read {str(path)!r}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start}); {RERUN}") from None
    bad: list[int] = []
    try:
        data = json.loads(text, parse_int=lambda s: _parse_int(s, bad))
    except RecursionError:
        raise FeatvisError(f"cannot read {str(path)!r}: it nests lists or objects deeper than Python can read "
                           f"(featvis writes at most {MAX_DEPTH} levels); {RERUN}") from None
    except json.JSONDecodeError as e:
        raise FeatvisError(f"cannot read {str(path)!r}: {e.msg} at line {e.lineno} column {e.colno}; {RERUN}") \
            from None
    if not isinstance(data, dict):
        raise FeatvisError(f"{str(path)!r} is not a featvis results file (expected a JSON object)")
    if "schema" in data:
        schema = data["schema"]
        if type(schema) is not int or schema < 1:
            raise FeatvisError(f"{str(path)!r}: schema must be a positive integer, got {_short(schema)}; {RERUN}")
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise FeatvisError(f"{str(path)!r} nests lists or objects {depth} levels deep (featvis writes 6, reads at "
                           f"most {MAX_DEPTH}); {RERUN}")
    if bad:
        where, value = _find_bad_int(data)
        raise FeatvisError(f"{str(path)!r}: {where} is {value!r}, not a number featvis writes (at most ±2**64); "
                           f"{RERUN}")
    return data
