"""Finding layers: a network's submodules by dotted name, and the one name a person reads for each."""

from __future__ import annotations

from torch import nn

from featvis.errors import FeatvisError, closest
from featvis.models.classifier import Classifier


def root(model: nn.Module) -> nn.Module:
    """The network whose submodules carry the layer names (a Classifier's inner `net`)."""
    return model.net if isinstance(model, Classifier) else model


def _strip(name: str) -> str:
    return ".".join(part.lstrip("_") for part in name.split("."))


def layer_label(model: nn.Module, name: str) -> str:
    """The name a person reads and types for the layer `name`: without PyTorch's leading underscores
    (`_blocks.8._bn1` → `blocks.8.bn1`) when that names no other layer. Tables, reports, atlas tiles, figure titles
    and error hints show this one name; `find_layer` accepts it and the PyTorch name alike."""
    return _labels(model).get(name, name)


def _labels(model: nn.Module) -> dict[str, str]:
    """PyTorch name → label for every layer (a stripped name two layers share keeps the PyTorch names)."""
    names = [n for n, _ in root(model).named_modules() if n]
    count: dict[str, int] = {}
    for n in names:
        count[_strip(n)] = count.get(_strip(n), 0) + 1
    return {n: _strip(n) if count[_strip(n)] == 1 else n for n in names}


def find_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The submodule called `name` (dotted PyTorch name; leading underscores optional: `blocks.3` = `_blocks.3`).

    Returns:
        (canonical name, module). Unknown names raise an error listing the closest names.
    """
    modules = dict(root(model).named_modules())
    key = name.strip().removeprefix("net.") if isinstance(name, str) else name
    if not isinstance(key, str) or not key:
        raise FeatvisError(f"layer name must be a non-empty string, got {name!r}")
    if key in modules and key:
        return key, modules[key]
    stripped = [n for n in modules if n and _strip(n) == _strip(key)]
    if len(stripped) == 1:
        return stripped[0], modules[stripped[0]]
    near = ", ".join(closest(key, list(_labels(model).values())))
    raise FeatvisError(f"unknown layer {name!r}; near names: {near} (run `featvis layers` to list all)")
