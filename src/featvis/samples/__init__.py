"""A few small public-domain/CC0 photos for demos and tests (sources and licences in NOTICE)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from featvis.errors import did_you_mean

_FILES = {
    "chelsea": "chelsea.jpg",  # a tabby cat
    "coffee": "coffee.jpg",  # an espresso cup
    "grace_hopper": "grace_hopper.jpg",  # Grace Hopper in uniform
    "astronaut": "astronaut.jpg",  # Eileen Collins
    "rocket": "rocket.jpg",  # a Falcon 9 launch
    "camera": "camera.jpg",  # grayscale: a photographer with a tripod
}


def names() -> list[str]:
    """The bundled photos' names."""
    return list(_FILES)


def path(name: str) -> Path:
    """The file of a bundled photo."""
    if name not in _FILES:
        raise did_you_mean("sample", name, _FILES)
    return Path(str(resources.files("featvis.samples").joinpath(_FILES[name])))


def load(name: str, clf=None, *, size: int | None = None) -> torch.Tensor:
    """A bundled photo as [1, 3, S, S] in [0, 1], prepared for `clf` (see `featvis.images.load_image`)."""
    from featvis.images import load_image

    return load_image(path(name), clf, size=size)
