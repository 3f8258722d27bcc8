"""Shared fixtures: the real embedded model and the bundled photos, loaded once per session."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

import featvis as fv


def _seed(name: str) -> None:
    seed = zlib.crc32(name.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _seeded_module(request):
    """A module's shared fixtures draw the same numbers whichever tests ran before (autouse runs first in its scope)."""
    _seed(request.node.nodeid)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test draws the same random numbers on every run and machine (its seed is its node id's CRC), whatever
    ran before it: a test's unseeded torch.rand or freshly initialised net is one fixed draw, not a new one per run."""
    _seed(request.node.nodeid)


@pytest.fixture(scope="session")
def clf() -> fv.Classifier:
    torch.set_num_threads(2)
    return fv.load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def photos(clf) -> dict[str, torch.Tensor]:
    return {name: fv.samples.load(name, clf) for name in fv.samples.names()}
