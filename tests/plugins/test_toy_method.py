"""A new attribution method is one file: registered here, it reaches the CLI, the web API and the report."""

import numpy as np
import pytest
import torch

import featvis as fv
from featvis.attribution import ATTRIBUTIONS

from _drive import cli_json, report_html, web_job

pytest.importorskip("fastapi")


def centre_square(clf, images: torch.Tensor, target=None, *, radius: int = 4, batch_size=None) -> torch.Tensor:
    """A toy map: 1 on a centre square, 0 elsewhere (whatever the model says).

    Args:
        radius: half the side of the square, in pixels.
    """
    b, _, h, w = images.shape
    maps = torch.zeros(b, h, w, device=images.device)
    maps[:, h // 2 - radius:h // 2 + radius, w // 2 - radius:w // 2 + radius] = 1
    return maps


@pytest.fixture
def toy():
    ATTRIBUTIONS.register("toy-square", aliases=("toy",))(centre_square)
    yield "toy-square"
    ATTRIBUTIONS.remove("toy-square")


def test_toy_method_through_cli_web_and_report(toy, clf, capsys, tmp_path):
    listed = {m["name"]: m for m in cli_json(capsys, "methods")}
    assert listed[toy]["options"]["radius"]["help"].startswith("half the side") and listed[toy]["aliases"] == ["toy"]
    img = fv.samples.path("coffee")
    out = cli_json(capsys, "saliency", img, "--method", "toy", "-O", "radius=10", "--metrics", "--metric-steps", "4",
                   "-o", tmp_path / "run")
    saved = np.load(tmp_path / "run" / out["items"][0]["maps"][toy])
    assert saved.sum() == 400 and saved[112, 112] == 1 and saved[0, 0] == 0  # a 20×20 square: radius reached it
    assert set(out["summary"]["mean_auc"]) == {toy, "random"}
    assert "radius" in _error(capsys, "saliency", img, "--method", "toy", "-O", "raduis=3", "-o", tmp_path / "x")
    names, job = web_job(clf, "/api/saliency", {"sample": "coffee", "method": "toy"}, "/api/methods")
    assert toy in names and job["status"] == "done" and job["result"]["method"] == toy
    page = report_html(capsys, tmp_path / "run", tmp_path)
    assert f"Saliency maps: {toy}" in page and "toy-square" in page


def _error(capsys, *argv) -> str:
    from featvis.cli import main

    assert main([*map(str, argv)]) == 2
    return capsys.readouterr().err
