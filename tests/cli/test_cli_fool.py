import csv
import json

import pytest

import featvis as fv
from featvis.cli import main

pytestmark = pytest.mark.slow  # every test here runs an attack on the real model


def test_fool_command_writes_pngs_that_still_fool(capsys, tmp_path, clf):
    imgs = [str(fv.samples.path(n)) for n in ("chelsea", "coffee")]
    code = main(["fool", *imgs, "--target", "stingray", "-o", str(tmp_path), "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["summary"]["success_rate"] == 1.0 and out["summary"]["reloaded_agrees"]
    for rec in out["items"]:
        png = fv.load_image(tmp_path / rec["fooled_png"], clf)
        assert clf.predict(png, k=1)[0][0].index == 6 == rec["predicted"]
        assert (tmp_path / rec["figure"]).exists()
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == 2 and rows[0]["target_name"] == "stingray" and rows[0]["success"] == "True"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["method"] == "ascent" and manifest["seed"] == 0


def test_fool_pgd_untargeted_with_check_model(capsys, tmp_path):
    img = str(fv.samples.path("coffee"))
    code = main(["fool", img, "--target", "none", "--method", "pgd", "--eps", str(4 / 255), "--check-model",
                 "efficientnet-lite0", "-o", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    rec = out["items"][0]
    assert code == 0 and rec["success"] and rec["predicted"] != 967 and rec["linf_255"] <= 5
    assert rec["transfer_success"] is True  # the same model: transfer is certain
    code = main(["fool", img, "--target", "stingrey", "-o", str(tmp_path / "x")])
    assert code == 2 and "closest names" in capsys.readouterr().err


def test_fool_lab_recipe_and_ascent_options(capsys, tmp_path):
    img = str(fv.samples.path("chelsea"))
    code = main(["fool", img, "--target", "gorilla", "--method", "ascent", "--eps", str(2 / 255), "--score",
                 "logit", "-o", str(tmp_path / "a"), "--json"])
    rec = json.loads(capsys.readouterr().out)["items"][0]
    assert code == 0 and rec["success"] and rec["linf_255"] <= 2 and rec["predicted"] == 366
    code = main(["fool", img, "--target", "gorilla", "--method", "lab", "-o", str(tmp_path / "b"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["items"][0]["method"] == "lab" and out["items"][0]["success"]
    code = main(["fool", img, "--method", "pgd", "--score", "logit", "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "option for attack pgd" in err and "'score'" in err and len(err.strip().splitlines()) == 1


def test_robustness_command_curve_and_resume(capsys, tmp_path, clf):
    imgs = [str(fv.samples.path(n)) for n in ("chelsea", "coffee", "rocket")]
    args = ["robustness", *imgs, "--eps", "1/255,0.0157", "--steps", "5", "-o", str(tmp_path), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    curve = out["summary"]["curve"]
    assert curve["eps"] == pytest.approx([1 / 255, 0.0157])
    rates = curve["fooled_rate"]
    assert rates == sorted(rates) and rates[0] > 0  # one 8-bit level flips most photos; monotone: a change within 1/255 is within 4/255 too
    at_one_level = sum(r["fooled"] and r["min_eps_255"] == pytest.approx(1) for r in out["items"])
    assert rates[0] == pytest.approx(at_one_level / 3) and rates[-1] == pytest.approx(
        sum(r["fooled"] for r in out["items"]) / 3)
    for rec in out["items"]:
        if rec["fooled"]:  # the saved PNG is within its budget and does what the record says
            png = fv.load_image(tmp_path / rec["fooled_png"], clf)
            orig = fv.load_image(rec["input"], clf)
            assert (png - orig).abs().max() <= rec["min_eps"] + 1e-6
            now = clf.predict(png, k=1)[0][0].index
            assert now == rec["predicted"] != rec["original_class"] and rec["target"] is None
    assert (tmp_path / "curve.png").exists() and (tmp_path / "manifest.json").exists()
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["counts"]["skipped"] == 3  # resumed
    assert main(["robustness", imgs[0], "--method", "cw", "-o", str(tmp_path / "x")]) == 2
    assert "needs an attack with a budget" in capsys.readouterr().err
