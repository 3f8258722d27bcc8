"""End to end in headless Chromium (Debian's package, driven by Playwright through executable_path)."""

import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

import featvis as fv

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")]


@pytest.fixture(scope="module")
def server():
    from test_serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "featvis.cli", "serve", "--port", str(port), "--device", "cpu"],
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "api/health", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_page_classifies_explains_fools_and_visualizes(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.goto(server)
        page.wait_for_selector("#sample option[value=coffee]", state="attached")
        page.set_input_files("#file", str(fv.samples.path("coffee")))  # upload, as a user would
        page.wait_for_function("document.querySelector('#top5').dataset.top1 == '967'", timeout=30000)
        page.click("#run-saliency")
        page.wait_for_selector("#sal-img:not([hidden])", timeout=60000)
        assert "espresso" in page.inner_text("#sal-status")
        links = page.eval_on_selector_all("#sal-dl a", "els => els.map(e => e.textContent)")
        assert {"overlay.png", "heatmap.png", "panels.png", "result.json"} <= set(links)
        with page.expect_download() as dl:
            page.click("#sal-dl a:text('overlay.png')")
        assert dl.value.suggested_filename.endswith("overlay.png")
        page.fill("#target", "stingray")
        assert page.input_value("#attack") == "ascent" and page.locator("#attack option").count() >= 5
        page.click("#run-fool")
        page.wait_for_selector("#fool-img:not([hidden])", timeout=120000)
        assert page.inner_text("#fool-status").startswith("fooled: now stingray")
        page.fill("#vis-target", "pizza")
        page.fill("#vis-steps", "32")
        page.click("#run-vis")
        page.wait_for_function("document.querySelector('#vis-status').textContent.startsWith('done')", timeout=120000)
        assert page.eval_on_selector("#vis-progress", "e => e.value") == 1
        assert page.eval_on_selector("#vis-img", "e => e.naturalWidth") == 128
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
