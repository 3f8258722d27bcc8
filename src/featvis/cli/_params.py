"""CLI options made from a task's parameters: every field of its Params dataclass declared with `param(...)` (help,
flag, bounds next to the field) becomes an option with the field's own default, so a command restates nothing.

Text from the command line is turned into the field's value here: comma lists or repeated options for tuples
(`--method a,b`, `--concept a=DIR --concept b=DIR`), the words a field allows beside a list (`--channel all`),
integers where an `int | str` field reads one (`--channel 5`).
The Params' own `__post_init__` then checks the value, as it does for the Python API and the web.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from featvis.tasks.base import FieldDoc, field_doc

Converter = Callable[[Any], Any]


def _parts(tp: Any) -> tuple[Any, ...]:
    """The members of a union (or the type itself)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


REPEATABLE = list[str] | None  # a tuple field: a comma list, the option repeated, or both


def _cli_type(tp: Any, doc: FieldDoc) -> tuple[Any, Converter]:
    """(the type typer parses, a converter from it to the field's value)."""
    parts = _parts(tp)
    tuples = [p for p in parts if _is_tuple(p)]
    if tuples:
        item = (typing.get_args(tuples[0]) or (str,))[0]

        def to_tuple(text: Any) -> Any:
            if isinstance(text, (list, tuple)):  # the option repeated (`--concept a=DIR --concept b=DIR`)
                text = ",".join(str(t) for t in text) if text else None
            if text is None or not isinstance(text, str):
                return text
            if text.strip() in doc.words:
                return text.strip()
            values = tuple(v.strip() for v in text.split(",") if v.strip())
            return tuple(_number(v) for v in values) if item is int else values

        return REPEATABLE, to_tuple
    plain = [p for p in parts if p is not type(None)]
    if plain == [bool]:
        return bool, lambda v: v
    if plain == [int]:
        return int | None, lambda v: v
    if plain == [float]:
        return float | None, lambda v: v
    if int in plain:  # int | str: a number where the text is one (a channel index, a class index)
        return str | None, lambda v: _number(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v
    return str | None, lambda v: v


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text  # the Params' own check says what is wrong with it


def _shown(default: Any) -> Any:
    """A field's default as the CLI shows and parses it (tuples as comma lists)."""
    if isinstance(default, tuple):
        return ",".join(_level(v) for v in default)
    return default


def _level(value: Any) -> str:
    """A budget that is a whole number of 8-bit levels as "k/255" (how people write it), else as it is."""
    if isinstance(value, float) and 0 < value <= 1 and abs(value * 255 - round(value * 255)) < 1e-9:
        return f"{round(value * 255)}/255"
    return str(value)


def field_parameters(params_cls: type, skip: set[str]) -> tuple[list[inspect.Parameter], dict[str, Converter]]:
    """typer parameters for the `param(...)` fields of `params_cls` not in `skip`, and each one's converter."""
    hints = typing.get_type_hints(params_cls)
    out, converters = [], {}
    for f in dataclasses.fields(params_cls):
        doc = field_doc(f)
        if doc is None or not doc.cli or f.name in skip:
            continue
        cli_type, convert = _cli_type(hints[f.name], doc)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = doc.flag or "--" + f.name.replace("_", "-")
        if cli_type is bool and default is True and not doc.flag:
            decls = [f"{flag}/--no-{flag.removeprefix('--')}"]
        else:
            decls = [flag]
        if doc.short:
            decls.append(doc.short)
        option = typer.Option(*decls, help=doc.help, metavar=doc.metavar if cli_type is not bool else None,
                              min=doc.low, max=doc.high, show_default=doc.show_default)
        shown = _shown(default)
        if cli_type == REPEATABLE:
            shown = [shown] if shown not in (None, "") else None  # a repeatable option: its default as one entry
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[cli_type, option],
                                     default=shown))
        converters[f.name] = convert
    return out, converters
