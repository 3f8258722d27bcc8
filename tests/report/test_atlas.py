"""The atlas: a real layer's channels with dataset examples, one static page, checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import featvis as fv
from featvis.recipes.atlas import classes_by_weights, run_atlas

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def atlas(tmp_path_factory, clf):
    out = tmp_path_factory.mktemp("atlas")
    photos = [str(fv.samples.path(n)) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    page = run_atlas(clf, out, layer="blocks.1", channels="all", dataset=photos, steps=2, size=32, k=3)
    return page


def test_the_page_is_self_contained_and_complete(atlas):
    text = atlas.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    data = json.loads(re.search(r'<script type="application/json" id="atlas-data">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    assert len(data["units"]) == 24  # every channel of blocks.1
    for u in data["units"]:
        # 4 images, k=3: the bottom list shows only the image that is not already among the top 3
        top = {(e["input"], e["value"]) for e in u["top"]}
        assert (atlas.parent / u["image"]).is_file() and len(u["top"]) == 3 and len(u["bottom"]) == 1
        assert not top & {(e["input"], e["value"]) for e in u["bottom"]}
        assert all((atlas.parent / e["patch"]).is_file() for e in u["top"])
        assert u["stats"]["highest spatial maximum, over the 4 images"] >= u["top"][0]["value"] - 1e-6 and u["classes"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
@pytest.mark.parametrize("width", [1200, 390])
def test_the_page_works_in_chromium(atlas, width):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(atlas.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator(".tile").count() == 24
        assert page.eval_on_selector(".tile img", "e => e.loading") == "lazy"
        page.locator(".tile").nth(5).click()
        page.wait_for_selector("#panel.open")
        assert page.inner_text("#card h2").endswith(":5") and page.locator("#card .strip img").count() == 4
        page.keyboard.press("Escape")
        assert not page.locator("#panel.open").count()
        page.fill("#filter", ":12")
        assert page.locator(".tile:not([hidden])").count() == 1
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
        browser.close()


def test_classes_by_weights_for_the_last_layer(clf):
    top = classes_by_weights(clf, fv.default_layer(clf), [0, 7])
    w = clf.net._fc.weight[:, 7]
    assert [c["class"] for c in top[7]] == w.topk(5).indices.tolist()
    assert classes_by_weights(clf, "blocks.1", [0]) is None
