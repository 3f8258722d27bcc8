"""Run folders made once with the tiny model (fool, robustness, saliency), shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import featvis as fv
from featvis.tasks import FoolTask, RobustnessTask, SaliencyTask, run_task

from _models import TinyConvNet


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> Path:
    tiny = fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)
    root = tmp_path_factory.mktemp("tiny-runs")
    photos = [fv.samples.path("coffee"), fv.samples.path("chelsea")]
    run_task(FoolTask(method="pgd", target=None, options={"steps": 2}), photos[:1], root / "fool", clf=tiny)
    run_task(RobustnessTask(eps=("1/255",)), photos[:1], root / "rob", clf=tiny)
    run_task(SaliencyTask(methods=("gradient", "smoothgrad"), metrics=True, metric_steps=4), photos, root / "sal",
             clf=tiny)
    return root
