"""Where classifiers come from: the registry of model sources (one decorator, `@model_source(...)`, next to each
build function) and ModelSource, how a classifier was made, as plain data, so another process can make it again."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from featvis._registry import Registry
from featvis.errors import FeatvisError, did_you_mean

LabelNames = tuple[str | tuple[str, ...], ...]  # one name per class, or a tuple of synonyms (first: display name)


@dataclass(frozen=True)
class ModelSource:
    """The arguments of `load_model` that made a classifier: enough to rebuild it elsewhere.

    `weights` is an absolute path (or None); `mean`, `std`, `labels` and `input_size` are the overrides given
    (None: what the source comes with). JSON-serializable through `to_dict` / `from_dict`.

    Example:
        >>> src = fv.load_model("timm:resnet50", weights="ft.pt").source
        >>> featvis.models.rebuild(src.to_dict(), "cuda", expected_hash=clf.weights_hash)
    """

    name: str
    weights: str | None = None
    trust_checkpoint: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    labels: LabelNames | None = None
    input_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: lists for tuples, None kept."""
        out = asdict(self)
        for key in ("mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        if out["labels"] is not None:
            out["labels"] = [n if isinstance(n, str) else list(n) for n in out["labels"]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        """The inverse of `to_dict`; unknown keys or a missing name fail with one line."""
        if not isinstance(data, Mapping):
            raise FeatvisError(f"a model source must be a dict like ModelSource.to_dict() gives, got "
                               f"{type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise did_you_mean("model source field", key, known)
        if not isinstance(data.get("name"), str) or not data["name"]:
            raise FeatvisError(f"a model source needs a 'name' (a model name or path), got {data.get('name')!r}")
        labels = data.get("labels")
        return cls(
            name=data["name"],
            weights=None if data.get("weights") is None else str(data["weights"]),
            trust_checkpoint=bool(data.get("trust_checkpoint", False)),
            mean=_triple(data.get("mean"), "mean"),
            std=_triple(data.get("std"), "std"),
            labels=None if labels is None else label_names(labels),
            input_size=None if data.get("input_size") is None else int(data["input_size"]),
        )

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `load_model` (its `name` included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _triple(value: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise FeatvisError(f"{what} must be 3 numbers (R, G, B), got {list(value)}")
    return values  # type: ignore[return-value]


def label_names(labels: Sequence[str | Sequence[str]]) -> LabelNames:
    """Class names as stored in a source: a name per class, or a tuple of synonyms (from a `Labels`)."""
    from featvis.models.labels import Labels

    if isinstance(labels, Labels):
        return tuple(s if len(s) > 1 else s[0] for s in labels.synonyms)
    if isinstance(labels, str):
        raise FeatvisError(f"labels must be a list of class names, one per class, got the string {labels[:40]!r}")
    return tuple(str(n) if isinstance(n, str) else tuple(str(s) for s in n) for n in labels)


@dataclass(frozen=True)
class Request:
    """What a source is asked to build."""

    arch: str  # the registered name, the part after "torchvision:"/"timm:", or the file's path
    weights: dict[str, torch.Tensor] | None  # a `weights=` file's tensors, read safely; None: the source's own
    input_size: int | None  # the side images will have; fixed-size architectures (ViTs) are built for it
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class Source:
    """A kind of model featvis can load: how it is named, how it is built, and what must be installed."""

    pattern: str  # how a user names it: "efficientnet-lite0", "torchvision:NAME", "timm:NAME", "PATH"
    build: Callable[[Request], Any]  # -> Classifier
    module: str  # the import that must succeed ("" for none)
    extra: str  # the featvis extra that installs it ("core": featvis itself)
    description: str
    kind: str = "named"  # "named" (one model), "prefix" (KEY:NAME) or "path" (a local file)


SOURCES: Registry[Source] = Registry("model")
MODELS = SOURCES  # the name featvis 0.1 exported


def model_source(name: str, pattern: str, module: str, extra: str, description: str, *, kind: str = "named",
                 aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register `build(request) -> Classifier` as the model source `name` (see `Source` for the fields)."""

    def deco(build: Callable) -> Callable:
        SOURCES.add(name, Source(pattern, build, module, extra, description, kind), aliases=aliases)
        return build

    return deco
