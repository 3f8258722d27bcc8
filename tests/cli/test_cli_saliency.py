import json

import numpy as np
import pytest
import torch
from PIL import Image

import featvis as fv
from featvis.attribution import saliency
from featvis.cli import main


@pytest.mark.slow
def test_saliency_command_writes_maps_figures_metrics_and_manifest(capsys, tmp_path, clf):
    img = str(fv.samples.path("coffee"))
    code = main(["saliency", img, "--method", "gradient,gradcam", "-o", str(tmp_path), "--metrics",
                 "--metric-steps", "8", "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["summary"]["methods"] == ["gradient", "gradcam"]
    rec = out["items"][0]
    assert rec["target"] == 967 and rec["target_name"] == "espresso"
    saved = np.load(tmp_path / rec["maps"]["gradient"])
    expected = saliency(clf, fv.load_image(img, clf), 967)[0].numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-6)
    assert Image.open(tmp_path / rec["figure"]).size[0] > 500
    assert set(rec["deletion_auc"]) == {"gradient", "gradcam", "random"}
    assert 0 <= rec["insertion_auc"]["gradcam"] <= 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["methods"] == ["gradient", "gradcam"] and manifest["model"]["id"] == clf.id
    # rerun: everything is done already
    main(["saliency", img, "--method", "gradient,gradcam", "-o", str(tmp_path), "--metrics", "--metric-steps", "8",
          "--json", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 1


def test_no_figures_writes_maps_records_and_a_report_without_figures(capsys, tmp_path, clf):
    img = str(fv.samples.path("chelsea"))
    code = main(["saliency", img, "-o", str(tmp_path), "--no-figures", "--json"])
    rec = json.loads(capsys.readouterr().out)["items"][0]
    assert code == 0 and rec["target"] == 282 and "figure" not in rec  # tiger cat
    assert not (tmp_path / "figures").exists() and np.load(tmp_path / rec["maps"]["gradient"]).shape == (224, 224)
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 0
    assert "Saliency maps" in (tmp_path / "r.html").read_text()


def test_saliency_target_by_name_and_unknown_method(capsys, tmp_path):
    img = str(fv.samples.path("chelsea"))
    code = main(["saliency", img, "--target", "Egyptian cat", "-o", str(tmp_path / "a"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["items"][0]["target"] == 285
    code = main(["saliency", img, "--method", "gradcm", "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean" in err and "'gradcam'" in err
    code = main(["saliency", img, "--target", "tabbby", "-o", str(tmp_path / "c")])
    assert code == 2 and "closest names" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
def test_sanity_command(capsys, tmp_path):
    img = str(fv.samples.path("chelsea"))
    code = main(["sanity", img, "--method", "gradient,guided-backprop", "-o", str(tmp_path), "--no-independent",
                 "--json"])
    out = json.loads(capsys.readouterr().out)["summary"]
    assert code == 0
    assert out["methods"]["guided-backprop"]["flagged"] and not out["methods"]["gradient"]["flagged"]
    assert (tmp_path / "sanity.png").exists() and out["units"][0] == "_fc"
    assert torch.tensor(out["methods"]["gradient"]["spearman_abs"]).shape[0] == len(out["units"])
