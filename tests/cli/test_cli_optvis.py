import json

import pytest
from PIL import Image

from featvis.cli import main

pytestmark = pytest.mark.slow  # every test here optimizes images on the real model


@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
def test_classvis_writes_images_grid_scores_and_resumes(capsys, tmp_path):
    args = ["classvis", "tarantula", "963", "--preset", "lab", "--steps", "80", "--size", "96", "-o", str(tmp_path),
            "--json", "--batch-size", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    recs = {r["value"]: r for r in out["items"]}
    assert set(recs) == {76, 963} and recs[76]["title"].startswith("tarantula")
    assert recs[963]["top1"] == 963 and recs[963]["target_prob"] > 0.5
    assert Image.open(tmp_path / recs[76]["image"]).size == (96, 96)
    assert (tmp_path / "grid.png").exists() and (tmp_path / "manifest.json").exists()
    # the batch over classes resumes: rerunning the same command skips every finished class
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 2


def test_features_channels_and_errors(capsys, tmp_path):
    code = main(["features", "--layer", "blocks.4", "--channel", "1,7", "--steps", "5", "--size", "48", "-o",
                 str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["value"] for r in out["items"]] == [1, 7]
    assert out["items"][0]["key"].startswith("_blocks.4-0001")
    code = main(["features", "--layer", "blocks.40", "-o", str(tmp_path / "x")])
    assert code == 2 and "unknown layer" in capsys.readouterr().err
    code = main(["classvis", "tarantulla", "-o", str(tmp_path / "y")])
    assert code == 2 and "'tarantula'" in capsys.readouterr().err
