"""Shared fixtures: the real embedded model and the bundled photos, loaded once per session."""

from __future__ import annotations

import pytest
import torch

import featvis as fv


@pytest.fixture(scope="session")
def clf() -> fv.Classifier:
    torch.set_num_threads(2)
    return fv.load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def photos(clf) -> dict[str, torch.Tensor]:
    return {name: fv.samples.load(name, clf) for name in fv.samples.names()}
