"""Named registries: one per family (attribution methods, attacks, presets, models). A name is written once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from featvis.errors import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names (and aliases) to objects; `get` fails with a did-you-mean."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

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

    def canonical(self, name: str) -> str:
        key = name.strip().lower().replace("_", "-")
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise did_you_mean(self.kind, name, [*self._items, *self._aliases])

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
