"""Class names: display names by index, lookup by index or any synonym, closest-name suggestions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import resources

from featvis.errors import FeatvisError, closest


class Labels(Sequence[str]):
    """The classes of a classifier. `labels[i]` is a display name; `lookup` maps names back to indices.

    Example:
        >>> labels = imagenet_labels()
        >>> labels[281], labels.lookup("Egyptian cat"), labels.lookup("TABBY")
        ('tabby', 285, 281)
    """

    def __init__(self, synonyms: Sequence[Sequence[str]], ids: Sequence[str] | None = None) -> None:
        if not synonyms:
            raise FeatvisError("a classifier needs at least one class label")
        self.synonyms: list[tuple[str, ...]] = [tuple(s) for s in synonyms]
        self.ids: list[str] = list(ids) if ids is not None else [str(i) for i in range(len(synonyms))]
        self._index: dict[str, list[int]] = {}
        for i, names in enumerate(self.synonyms):
            for name in (*names, self.ids[i]):
                hits = self._index.setdefault(name.lower(), [])
                if i not in hits:
                    hits.append(i)

    @classmethod
    def generic(cls, n: int) -> Labels:
        """Labels "class 0" … "class n-1" for a model that came without names."""
        return cls([(f"class {i}",) for i in range(n)])

    def __len__(self) -> int:
        return len(self.synonyms)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [names[0] for names in self.synonyms[i]]
        return self.synonyms[int(i)][0]

    def __iter__(self) -> Iterator[str]:
        return (names[0] for names in self.synonyms)

    def all_names(self) -> list[str]:
        return [name for names in self.synonyms for name in names]

    def lookup(self, x: int | str) -> int:
        """The index of class `x`: an index (int or digits), a wnid, or any synonym, case-insensitively."""
        if isinstance(x, bool):
            raise FeatvisError(f"class {x!r} is not a class index or name")
        if isinstance(x, int) or (hasattr(x, "__index__") and not isinstance(x, str)):
            i = int(x)  # numpy ints, 0-d tensors
            if not 0 <= i < len(self):
                raise FeatvisError(f"class index {i} is out of range; this model has classes 0..{len(self) - 1}")
            return i
        if not isinstance(x, str):
            raise FeatvisError(f"class {x!r} is not a class index or name")
        key = x.strip()
        if key.lstrip("-").isdigit():
            return self.lookup(int(key))
        hits = self._index.get(key.lower())
        if not hits:
            near = ", ".join(repr(n) for n in closest(key, self.all_names()))
            raise FeatvisError(f"unknown class {x!r}; the closest names are {near} (or pass a class index)")
        if len(hits) > 1:
            options = "; ".join(f"{i} ({self.ids[i]}, {', '.join(self.synonyms[i][:2])})" for i in hits)
            raise FeatvisError(f"class name {x!r} is ambiguous: {options}; pass the index")
        return hits[0]

    def per_image(self, target, batch: int, hint: str = "or None") -> list[int]:
        """Class indices for a batch from one class (index/name) or one per image (list/tensor)."""
        if hasattr(target, "flatten") and not isinstance(target, str):
            target = target.flatten().tolist()
        if isinstance(target, (str, int)) or hasattr(target, "__index__"):
            target = [target] * batch
        if not isinstance(target, Sequence) or len(target) != batch:
            n = len(target) if isinstance(target, Sequence) else "no"
            raise FeatvisError(f"target has {n} entries for {batch} images; give one class, one per image, {hint}")
        return [self.lookup(t) for t in target]


@lru_cache(maxsize=1)
def imagenet_labels() -> Labels:
    """The 1000 ImageNet (ILSVRC-2012) classes with their WordNet synonyms, in the standard order."""
    text = resources.files("featvis.models").joinpath("imagenet_classes.tsv").read_text("utf-8")
    ids, synonyms = [], []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        wnid, lemmas = line.split("\t")
        ids.append(wnid)
        synonyms.append(tuple(s.strip() for s in lemmas.split(",") if s.strip()))
    return Labels(synonyms, ids)
