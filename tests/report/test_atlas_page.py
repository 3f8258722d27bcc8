"""The atlas page from hand-made runs (no model): what each statistic is over, and runs with missing or broken files."""

from __future__ import annotations

import shutil

import pytest

import featvis as fv
from featvis.report.atlas import build_atlas

from _report_runs import atlas_data, fake_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_each_statistic_says_what_it_is_over(tmp_path):
    vis, ex = fake_runs(tmp_path, ["blocks.1:0", "blocks.1:1"], k=3, images=40)
    data = atlas_data(build_atlas(tmp_path, vis, ex))
    stats = data["units"][0]["stats"]
    assert stats == {
        "objective reached (feature visualization)": 3.5,
        "mean of its spatial mean, over all 40 dataset images": -0.905,
        "std of its spatial mean, over the 40 images": 0.5,
        "highest spatial maximum, over the 40 images": 14.0,
        "share of the 40 images with spatial maximum > 0": 1.0,
        "reached ÷ top example": 3.5 / 14.0,
    }
    assert data["examples"] == {"images": 40, "ranking": "spatial maximum"}


def test_a_neuron_run_says_centre_neuron(tmp_path):
    vis, ex = fake_runs(tmp_path, ["blocks.1:0"], images=12)
    ex.summary["neuron"] = True
    data = atlas_data(build_atlas(tmp_path, vis, ex))
    assert data["examples"]["ranking"] == "centre neuron"
    assert "highest centre neuron, over the 12 images" in data["units"][0]["stats"]


def test_missing_and_broken_images_are_said_on_the_page(tmp_path):
    vis, ex = fake_runs(tmp_path, ["a", "b", "c"])
    (vis.folder / "images" / "0000.png").unlink()
    (vis.folder / "images" / "0001.png").write_text("not a png")
    (ex.folder / "patches" / "0002" / "top-00.png").unlink()
    page = build_atlas(tmp_path, vis, ex)
    data = atlas_data(page)
    assert [u["image"] for u in data["units"]][:2] == [None, None]
    assert data["units"][2]["image"] and len(data["units"][2]["top"]) == 2
    assert "3 of the page's files are missing or not PNG images" in page.read_text()


@pytest.mark.parametrize("damage", ["value-not-int", "title-list", "score-str", "channels-not-list", "top-missing"])
def test_malformed_runs_are_one_line_errors(tmp_path, damage):
    vis, ex = fake_runs(tmp_path, ["a", "b"])
    if damage == "value-not-int":
        vis.items[0]["value"] = "seven"
    elif damage == "title-list":
        vis.items[0]["title"] = ["x"] * 1000
    elif damage == "score-str":
        vis.items[0]["score"] = "high"
    elif damage == "channels-not-list":
        ex.summary["channels"] = 5
    else:
        del ex.summary["channels"][0]["top"]
    if damage in ("title-list", "score-str"):  # shown as text / as "–": the page is still built
        unit = atlas_data(build_atlas(tmp_path, vis, ex))["units"][0]
        if damage == "title-list":
            assert unit["label"].startswith("['x', 'x'") and unit["label"].endswith("…") and len(unit["label"]) == 200
        else:
            assert unit["score"] is None and unit["stats"]["objective reached (feature visualization)"] is None
        return
    with pytest.raises(fv.FeatvisError, match=r"malformed .{1,200}; rerun") as e:
        build_atlas(tmp_path, vis, ex)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_the_panel_says_what_the_examples_are(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    vis, ex = fake_runs(tmp_path, ["blocks.1:0"], k=3, images=40)
    (vis.folder / "images" / "0000.png").unlink()
    page = build_atlas(tmp_path, vis, ex)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            tab = browser.new_page()
            tab.goto(page.as_uri() + "#0")
            tab.wait_for_selector("#panel.open", timeout=5000)
            heads = tab.locator("#card h3").all_inner_texts()
            assert "the 3 of the 40 dataset images whose spatial maximum is highest" in heads
            assert "the 3 of the 40 dataset images whose spatial maximum is lowest" in heads
            assert tab.locator(".tile .missing").count() == 1
        finally:
            browser.close()
