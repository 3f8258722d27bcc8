"""Named registries: one per family (attribution methods, attacks, presets, models). A name is written once.

Entries of the algorithm families are *specs*: the function plus what it declares about itself — its options
(read from its keyword-only parameters, their defaults and the `Args:` section of its docstring), its one-line
summary, and family facts given at registration (an attack's target modes and budget norms). The CLI, the web
API, the report and the hygiene tests all read the spec, so a new method is one file.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Generic, TypeVar

from featvis.errors import FeatvisError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names (and aliases) to objects; `get` fails with a did-you-mean."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._families: dict[str, tuple[Callable[[str], T], str]] = {}  # prefix -> (build, summary)
        self._family_aliases: dict[str, str] = {}
        self._built: dict[str, T] = {}  # "prefix:name" entries made so far

    def parametric(self, prefix: str, build: Callable[[str], T], aliases: tuple[str, ...] = (),
                   summary: str = "") -> None:
        """Names `PREFIX:NAME` for every entry NAME (`smooth:integrated-gradients`), nested ones included.

        `build(NAME)` (NAME canonical) makes the entry the first time it is asked for; it is kept. `names()` lists
        none of them (there are as many as entries, and more), `prefixes()` lists the families; an unknown NAME
        fails with the usual did-you-mean.
        """
        if prefix in self._families or prefix in self._family_aliases:
            raise ValueError(f"{self.kind} prefix {prefix!r} is registered twice")
        self._families[prefix] = (build, summary)
        for alias in aliases:
            self._family_aliases[alias] = prefix

    def prefixes(self) -> dict[str, str]:
        """The parametric families, {prefix: summary} (see `parametric`)."""
        return {p: summary for p, (_, summary) in self._families.items()}

    def family_aliases(self, prefix: str) -> list[str]:
        return [a for a, p in self._family_aliases.items() if p == prefix]

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> None:
        if name in self._items or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Forget an entry and its aliases (for plugins and tests that register temporary entries)."""
        key = self.canonical(name)
        self._built.clear()  # entries built over it (PREFIX:NAME) go with it
        if key not in self._items:
            return
        del self._items[key]
        for alias in [a for a, n in self._aliases.items() if n == key]:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        key = str(name).strip().lower().replace("_", "-")
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        head, colon, tail = key.partition(":")
        if colon and self._families:
            family = head if head in self._families else self._family_aliases.get(head)
            if family is None:
                raise did_you_mean(f"{self.kind} prefix", head + ":",
                                   [f"{p}:" for p in [*self._families, *self._family_aliases]])
            return f"{family}:{self.canonical(tail)}"
        raise did_you_mean(self.kind, name, [*self._items, *self._aliases])

    def get(self, name: str) -> T:
        key = self.canonical(name)
        if key in self._items:
            return self._items[key]
        if key not in self._built:
            family, _, inner = key.partition(":")
            self._built[key] = self._families[family][0](inner)
        return self._built[key]

    def names(self) -> list[str]:
        return list(self._items)

    def aliases(self, name: str) -> list[str]:
        key = self.canonical(name)
        return [a for a, n in self._aliases.items() if n == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.canonical(name)
        except FeatvisError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


# --- options ---------------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def parse_budget(text: str | float) -> float:
    """A budget in [0, 1] pixel units from "0.0314", "8/255" or "inf"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        t = str(text).strip().lower()
        try:
            value = float(t[:-4]) / 255 if t.endswith("/255") else float(t)
        except ValueError:
            raise FeatvisError(f"cannot read budget {text!r}; write it in [0, 1] units (0.0314) or in 8-bit levels "
                               "(8/255)") from None
    if math.isnan(value) or not value > 0:
        raise FeatvisError(f"budget {text!r} must be a positive number")
    return value


@dataclass(frozen=True)
class Range:
    """The values a numeric option may take, declared in the signature next to the code:
    `samples: Annotated[int, Range(1)] = 25`. Without one, a number whose default is >= 0 may not be negative."""

    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        if self.high is None:
            return f">= {self.low:g}"
        return f"in [{self.low:g}, {self.high:g}]" if self.low is not None else f"<= {self.high:g}"


Count = Annotated[int, Range(1)]  # an option that counts (samples, steps, masks): at least 1
Fraction = Annotated[float, Range(0, 1)]  # a share or probability


@dataclass(frozen=True)
class Option:
    """One option a registered entry takes: its name, default, kind and help (from its docstring)."""

    name: str
    default: Any
    kind: str  # "int", "float", "str", "bool", "budget" (a pixel budget: 8/255), "seed" or "any"
    help: str = ""
    optional: bool = False  # None is allowed
    range: Range | None = None  # numbers only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value converted to this option's kind (from CLI/web text or a Python value) and checked against
        its range; one-line errors."""
        out = self._convert(value)
        r = self.range
        if r is not None and isinstance(out, (int, float)) and not isinstance(out, bool) and (
                (r.low is not None and out < r.low) or (r.high is not None and out > r.high)):
            raise FeatvisError(f"option {self.name}={value!r} must be {r.text()}"
                               + (f" (default {self.default!r})" if self.default is not None else ""))
        return out

    def _convert(self, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")
                             and (self.optional or self.default is None)):
            if self.optional or self.default is None:
                return None
            raise FeatvisError(f"option {self.name} needs a value (default {self.default!r})")
        if self.kind == "any":
            return value
        text = value.strip() if isinstance(value, str) else None
        try:
            if self.kind == "bool":
                if isinstance(value, bool):
                    return value
                if text is not None and text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError
            if self.kind in ("int", "seed"):
                if isinstance(value, bool):
                    raise ValueError
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(text if text is not None else value)
            if self.kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                out = float(text if text is not None else value)
                if math.isnan(out):
                    raise ValueError
                return out
            if self.kind == "budget":
                if text is not None and text.lower() in ("inf", "none") and self.optional:
                    return None if text.lower() == "none" else math.inf
                return parse_budget(value)
            return str(value)
        except (TypeError, ValueError):
            raise FeatvisError(f"option {self.name}={value!r} is not a valid {self.kind}"
                               + (f" (default {self.default!r})" if self.default is not None else "")) from None


def docstring_args(doc: str | None) -> dict[str, str]:
    """The `Args:` section of a Google-style docstring as {name: one-line help}."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    inside, current, indent = False, None, None
    for line in lines:
        if re.match(r"^(Args|Arguments|Parameters):\s*$", line.strip()) and not line.startswith(" "):
            inside, current, indent = True, None, None
            continue
        if not inside:
            continue
        if line.strip() and not line.startswith(" "):
            break  # the next section (Returns:, Example:, ...)
        if not line.strip():
            continue
        here = len(line) - len(line.lstrip())
        m = re.match(r"^\s*([A-Za-z_][\w, ]*?)(\s*\([^)]*\))?:\s*(.*)$", line)
        if m and (indent is None or here <= indent):
            indent = here
            names = [n.strip() for n in m.group(1).split(",")]
            current = names
            for n in names:
                out[n] = m.group(3).strip()
        elif current:
            for n in current:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


def _range(param: inspect.Parameter, kind: str) -> Range | None:
    """The option's declared Range (`Annotated[int, Range(1)]`), else >= 0 for a number whose default is >= 0."""
    declared = [m for m in getattr(param.annotation, "__metadata__", ()) if isinstance(m, Range)]
    if declared:
        return declared[0]
    default = param.default
    if kind in ("int", "float") and isinstance(default, (int, float)) and not isinstance(default, bool) \
            and default >= 0:
        return Range(0)
    return None


def _kind(param: inspect.Parameter) -> tuple[str, bool]:
    ann = param.annotation
    if getattr(ann, "__metadata__", None) is not None:  # Annotated[T, ...]: the kind is T's
        ann = ann.__origin__
    if not isinstance(ann, str):  # an evaluated annotation: int, float | None, Optional[int], ...
        ann = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
    ann = str(ann).replace(" ", "")
    optional = "None" in ann or param.default is None
    default = param.default
    if param.name in ("seed",):
        return "seed", optional
    if param.name in ("eps",):
        return "budget", optional
    if isinstance(default, bool) or ann.startswith("bool"):
        return "bool", optional
    if isinstance(default, int) or ann.split("|")[0] == "int":
        return "int", optional
    if isinstance(default, float) or ann.split("|")[0] == "float":
        return "float", optional
    if isinstance(default, str) or ann.split("|")[0] == "str":
        return "str", optional
    return "any", optional


def options_from(fn: Callable, skip: tuple[str, ...] = ()) -> dict[str, Option]:
    """Options of `fn`: its keyword-only parameters (minus `skip`), with defaults, kinds and docstring help."""
    helps = docstring_args(fn.__doc__)
    out: dict[str, Option] = {}
    try:
        params = inspect.signature(fn, eval_str=True).parameters.values()
    except (NameError, TypeError):  # an annotation that names something not importable here: read them as text
        params = inspect.signature(fn).parameters.values()
    for p in params:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in skip:
            continue
        kind, optional = _kind(p)
        default = None if p.default is inspect.Parameter.empty else p.default
        out[p.name] = Option(p.name, default, kind, helps.get(p.name, ""), optional, _range(p, kind))
    return out


def summary_of(fn: Callable) -> str:
    """The first sentence of a docstring (whole, even when it wraps over lines)."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    para = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return para


@dataclass(frozen=True)
class Spec:
    """A registered function and what it declares: options, summary and family facts (`info`)."""

    name: str
    fn: Callable
    options: Mapping[str, Option]
    summary: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.fn.__doc__

    def check(self, given: Mapping[str, Any], *, what: str = "") -> dict[str, Any]:
        """`given` options checked against this spec: unknown names fail with a did-you-mean, values are
        converted to each option's kind (CLI and web text included)."""
        out = {}
        for key, value in given.items():
            name = key.strip().replace("-", "_")
            if name not in self.options:
                label = what or self.name
                raise did_you_mean(f"option for {label}", key, list(self.options) or ["(none: it takes no options)"],
                                   hint=f"{label} takes {', '.join(self.options) or 'no options'}")
            out[name] = self.options[name].parse(value)
        return out


class SpecRegistry(Registry[Spec]):
    """A registry whose entries are `Spec`s built from the registered functions.

    `shared`: parameters every entry of the family takes and documents once (clf, images, target, ...); they
    are not the entry's own options.
    """

    def __init__(self, kind: str, shared: tuple[str, ...] = (), common_help: Mapping[str, str] | None = None,
                 wrap: Callable[[Callable], Callable] | None = None) -> None:
        super().__init__(kind)
        self.shared = shared
        self.common_help = dict(common_help or {})  # help for options many entries take (score, seed, ...)
        self.wrap = wrap  # what every entry's call goes through (attribution: unit targets); its options stay fn's

    def register(self, name: str, aliases: tuple[str, ...] = (), **info: Any) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            self.add(name, self.make(name, fn, **info), aliases)
            return fn

        return deco

    def make(self, name: str, fn: Callable, options: Mapping[str, Option] | None = None, summary: str | None = None,
             **info: Any) -> Spec:
        """The spec this registry makes of `fn` (options from its signature unless given, the family's `wrap`),
        for `register` and for the entries a `parametric` family builds."""
        if options is None:
            options = options_from(fn, self.shared)
        options = {k: o if o.help else replace(o, help=self.common_help.get(k, "")) for k, o in options.items()}
        call = fn if self.wrap is None else self.wrap(fn)
        return Spec(name, call, options, summary_of(fn) if summary is None else summary, dict(info))


def parse_assignments(pairs: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """`-O key=value` pairs as a dict (values stay text; a spec converts them)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise FeatvisError(f"option {pair!r} must be KEY=VALUE, e.g. -O steps=32")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise FeatvisError(f"option {pair!r} has no name before '='")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
