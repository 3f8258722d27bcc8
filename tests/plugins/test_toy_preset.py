"""A new visualization preset is one file: registered here, it reaches the CLI, the web API and the report."""

import pytest
import torch

from featvis.optvis import PRESETS
from featvis.optvis.param import PixelImage
from featvis.optvis.presets import RenderSpec, preset

from _drive import cli_json, report_html, web_job

pytest.importorskip("fastapi")


def grey_start(clf, size: int, batch: int, seeds, *, grey: float = 0.5, lr: float = 0.05) -> RenderSpec:
    """Plain pixels that start from one grey level, no transforms, Adam.

    Args:
        grey: the starting grey level in [0, 1].
        lr: Adam's learning rate.
    """
    init = torch.full((batch, 3, size, size), float(grey))
    return RenderSpec(param=PixelImage(size, batch, to_valid="clamp", init=init), transforms=(), lr=lr)


@pytest.fixture
def toy():
    preset("toy-grey", 8, "pixels from one grey level (a test plugin)")(grey_start)
    yield "toy-grey"
    PRESETS.remove("toy-grey")


def test_toy_preset_through_cli_web_and_report(toy, clf, capsys, tmp_path):
    listed = {p["name"]: p for p in cli_json(capsys, "presets")}
    assert listed[toy]["steps"] == 8 and listed[toy]["options"]["grey"]["default"] == 0.5
    out = cli_json(capsys, "classvis", "pizza", "--preset", toy, "-O", "grey=0.25", "--size", "32",
                   "-o", tmp_path / "run")
    rec = out["items"][0]
    assert rec["value"] == 963 and rec["score"] > 0
    first = cli_json(capsys, "classvis", "pizza", "--preset", toy, "--steps", "0", "--size", "32",
                     "-O", "grey=0.25", "-o", tmp_path / "zero")
    assert first["items"][0]["score"] < rec["score"]  # 8 steps of the toy preset raised the logit
    names, job = web_job(clf, "/api/visualize", {"kind": "class", "target": "pizza", "preset": toy, "steps": 3,
                                                 "size": 32}, "/api/presets")
    assert toy in names and job["status"] == "done" and "image.png" in job["images"]
    page = report_html(capsys, tmp_path / "run", tmp_path)
    assert f"Class visualization ({toy})" in page
