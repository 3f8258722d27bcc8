"""JSON embedded in a page cannot end or swallow the page's scripts (issue 22, item 10).

Inside <script>, "<!--" followed by "<script" puts the HTML parser in the "script data double escaped" state, where
"</script>" no longer ends the element: the data block swallowed the page's own script and the grid never rendered.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import pytest

from featvis.report._html import script_json
from featvis.report.atlas import build_atlas

from _report_runs import atlas_data, fake_runs

html5lib = pytest.importorskip("html5lib")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

HOSTILE_LABELS = ["<!--<script>", "<!-- <script> -->", "</script><script>document.body.dataset.pwned=1</script>",
                  "<script", "</", "<!--", "-->", "a\u2028b\u2029c", "& &amp; <b>", "\ud800 lone surrogate"]


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts = []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))


def _html5_scripts(text: str) -> list:
    doc = html5lib.parse(text, namespaceHTMLElements=False)
    return doc.findall(".//script")


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_atlas_page_keeps_its_two_scripts_and_the_label(tmp_path, label):
    vis, ex = fake_runs(tmp_path, [label, "plain"], inputs=[label] * 3, class_name=label)
    page = build_atlas(tmp_path, vis, ex)
    text = page.read_text()
    scripts = _html5_scripts(text)
    assert len(scripts) == 2, [s.attrib for s in scripts]
    assert scripts[0].get("id") == "atlas-data" and "JSON.parse" in scripts[1].text
    parser = _Scripts()
    parser.feed(text)
    assert [s.get("id") for s in parser.scripts] == ["atlas-data", None]
    data = json.loads(scripts[0].text)  # what the browser's JSON.parse gets
    assert data["units"][0]["label"] == label and data["units"][0]["top"][0]["input"] == label
    assert data["units"][0]["classes"][0]["name"] == label
    assert atlas_data(page) == data


@pytest.mark.parametrize("value", ["</script>", "<!--<script>", "\u2028", float("nan"), float("inf")])
def test_script_json_has_no_markup_and_parses_back(value):
    blob = script_json({"v": value, "list": [value]})
    assert not set(blob) & set("<>&\u2028\u2029")
    back = json.loads(blob)
    want = None if isinstance(value, float) else value  # JSON.parse rejects NaN: non-finite numbers become null
    assert back == {"v": want, "list": [want]}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_atlas_grid_renders_a_hostile_label_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    xss = '<img src=x onerror="document.body.dataset.pwned=1">'
    labels = ["<!--<script>", "</script><script>document.body.dataset.pwned=1</script>", xss, "plain"]
    vis, ex = fake_runs(tmp_path, labels, inputs=[xss] * 3, class_name=xss, layer=xss, model_id=xss)
    page = build_atlas(tmp_path, vis, ex)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            tab = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready='1']", timeout=5000)
            assert tab.locator(".tile").count() == 4 and not errors
            assert tab.locator(".tile span").all_inner_texts() == labels
            tab.locator(".tile").nth(2).click()
            tab.wait_for_selector("#panel.open")
            assert tab.inner_text("#card h2") == xss
            assert tab.locator("#card .strip img").count() == 6
            assert tab.evaluate("document.body.dataset.pwned") is None
            assert tab.locator("img[src='x']").count() == 0
        finally:
            browser.close()
