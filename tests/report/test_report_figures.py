"""The report shows each figure at its own pixel size (narrowed to the content column), links it full size, and
says which figure is missing or broken."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from featvis.report import CONTENT_PX, build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Figures(HTMLParser):
    """Each <figure>: its class, the <a href> around its image, the <img> attributes, and the grid it sits in."""

    def __init__(self):
        super().__init__()
        self.figures, self._open, self._grid = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            self._open.append("grid" in (a.get("class") or "").split())
            self._grid += self._open[-1]
        elif tag == "figure":
            self.figures.append({"class": a.get("class") or "", "in_grid": self._grid > 0, "href": None})
        elif tag == "a" and self.figures:
            self.figures[-1]["href"] = a.get("href")
        elif tag == "img" and self.figures:
            self.figures[-1]["img"] = a

    def handle_endtag(self, tag):
        if tag == "div" and self._open:
            self._grid -= self._open.pop()


def _figures(page) -> list[dict]:
    parser = _Figures()
    parser.feed(page.read_text())
    return parser.figures


@pytest.mark.parametrize("embed", [False, True])
def test_wide_figures_take_the_column_at_their_pixel_size(tiny_runs, tmp_path, embed):
    page = build_report([tiny_runs / "sal", tiny_runs / "fool", tiny_runs / "rob"], tmp_path / "r.html", embed=embed)
    figures = _figures(page)
    assert len(figures) == 2 + 1 + 1
    for f in figures:
        src = f["img"]["src"]
        natural = Image.open(page.parent / src).size if not embed else None
        width, height = int(f["img"]["width"]), int(f["img"]["height"])
        if natural:
            assert (width, height) == natural
            assert f["href"] == src  # a click opens the image at full size
        else:
            assert f["href"] is None  # browsers refuse to open data: URLs from a link
        # a figure wider than half the column never shares a row (it was ~290 px in a three-column grid)
        assert ("wide" in f["class"].split()) == (width > CONTENT_PX // 2)
    assert all("wide" in f["class"] for f in figures[:3])  # the saliency figures and the fooling figure


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
def test_figures_display_at_their_pixel_size_in_chromium(tiny_runs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    page = build_report([tiny_runs / "sal", tiny_runs / "fool", tiny_runs / "rob"], tmp_path / "r.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 6000})  # every lazy image in view
            tab.goto(page.as_uri())
            tab.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=5000)
            sizes = tab.eval_on_selector_all("figure img", "els => els.map(e => [e.naturalWidth, e.clientWidth])")
            assert len(sizes) == 4 and all(n > 0 for n, _ in sizes)
            for natural, shown in sizes:  # 1:1 up to the column, then narrowed to it
                assert abs(shown - min(natural, CONTENT_PX)) <= 2, sizes
            assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        finally:
            browser.close()


def test_column_width_is_the_one_in_the_style():
    from featvis.report import STYLE

    main_px, pad_px = re.search(r"main \{ max-width:(\d+)px; margin:0 auto; padding:\d+px (\d+)px", STYLE).groups()
    assert int(main_px) - 2 * int(pad_px) == CONTENT_PX
