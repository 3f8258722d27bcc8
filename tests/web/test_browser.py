"""End to end in headless Chromium (Debian's package, driven by Playwright through executable_path).

The server runs in this process (uvicorn in a thread, the session's model) with an access token, and every page is
opened the way the printed URL opens it: `/?token=T` once, which sets the cookie and redirects to `/`.
"""

import json
import re
import shutil

import pytest
import torch

import featvis as fv
from featvis.attribution.units import unit_classifier

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")]
TOKEN = "browser-test-token"
FAKE_JOB = "f" * 32


@pytest.fixture(scope="module")
def server(clf):
    from test_serve import serving

    from featvis.web.app import create_app

    with serving(lambda port: create_app(clf, token=TOKEN, port=port)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def context(browser, server):
    """A fresh browser profile that has opened the printed URL once (so it holds the token's cookie)."""
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    context.set_default_timeout(10000)  # the long jobs give their own
    page = context.new_page()
    page.goto(f"{server}/?token={TOKEN}")
    assert page.url == f"{server}/"  # redirected: the token is in no URL the page keeps
    page.close()
    yield context
    context.close()


def open_page(context, server, routes=()):
    """A page of the app with `routes` (glob, handler) faked, once its menus are loaded."""
    page = context.new_page()
    for glob, handler in routes:
        page.route(glob, handler)
    page.goto(f"{server}/")
    return page


def loaded(page):
    page.wait_for_selector("#attack option[value=ascent]", state="attached")
    return page


def test_page_classifies_explains_fools_and_visualizes(context, server, tmp_path):
    page = loaded(open_page(context, server))
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
    assert "the model sees" in page.inner_text("#vis-status")
    assert page.eval_on_selector("#vis-progress", "e => e.value") == 1
    assert page.eval_on_selector("#vis-img", "e => e.naturalWidth") == 128
    assert page.inner_text("#page-status") == page.inner_text("#photo-status") == ""
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


def test_a_visualized_channel_links_to_the_pixels_that_drive_it(context, server, clf):
    page = loaded(open_page(context, server))
    page.select_option("#vis-kind", "channel")
    page.fill("#vis-layer", "blocks.8")
    page.fill("#vis-channel", "17")
    page.fill("#vis-steps", "4")
    page.click("#run-vis")
    page.wait_for_function("document.querySelector('#vis-status').textContent.startsWith('done')", timeout=120000)
    assert page.is_visible("#vis-drive") and page.is_disabled("#vis-drive")  # no photo yet
    page.select_option("#sample", "coffee")
    page.wait_for_function("document.querySelector('#top5').dataset.top1 == '967'", timeout=30000)
    page.click("#vis-drive")
    page.wait_for_selector("#sal-img:not([hidden])", timeout=60000)
    status = page.inner_text("#sal-status")
    assert "pixels driving unit blocks.8:17" in status
    value = float(re.search(r"this photo: (-?[0-9.]+)", status).group(1))
    with torch.no_grad():  # the value the page shows is the channel's mean activation on the photo
        expected = float(unit_classifier(clf, "layer:blocks.8:17")(fv.samples.load("coffee", clf).reshape(1, 3, 224, 224)))
    assert value == pytest.approx(expected, abs=2e-3)


def test_the_smoothing_menu_sends_prefix_and_method(context, server):
    page = loaded(open_page(context, server))
    page.wait_for_selector("#smoothing option[value=smooth]", state="attached")
    page.select_option("#sample", "coffee")
    page.wait_for_function("document.querySelector('#top5').dataset.top1 == '967'", timeout=30000)
    page.select_option("#method", "gradcam")
    page.select_option("#smoothing", "smooth")
    with page.expect_request("**/api/saliency") as sent:
        page.click("#run-saliency")
    assert "smooth:gradcam" in sent.value.post_data
    page.wait_for_selector("#sal-img:not([hidden])", timeout=60000)
    assert page.inner_text("#sal-status").startswith("smooth:gradcam: espresso")


def test_a_photo_over_the_limit_is_refused_before_it_is_sent(context, server, tmp_path):
    """Before: the page sent it, and the server's 413 (or a reset) came back."""
    big = tmp_path / "big.jpg"
    big.write_bytes(bytes(11 * 2**20))  # never decoded: refused by its size
    page = loaded(open_page(context, server))
    assert page.inner_text("#drop").startswith("Drop a photo here or click to choose one (up to 10 MiB)")
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/api/classify" in r.url else None)
    page.set_input_files("#file", str(big))
    status = page.locator("#photo-status")
    assert status.inner_text() == "big.jpg is 11.0 MiB, over the server's 10 MiB limit; choose a smaller photo"
    assert status.get_attribute("class") == "err" and page.is_disabled("#run-fool") and sent == []


def test_each_section_keeps_its_own_errors_and_drops_stale_results(context, server):
    """Before: a misspelt fooling target's error showed under the photo, and section 3 kept the previous result
    beside the new target with an empty status."""
    page = loaded(open_page(context, server))
    page.select_option("#sample", "coffee")
    page.wait_for_function("document.querySelector('#top5').dataset.top1 == '967'", timeout=30000)
    page.click("#run-saliency")
    page.wait_for_selector("#sal-img:not([hidden])", timeout=60000)
    page.select_option("#method", "gradcam")  # its input changed: the old map goes
    assert page.is_hidden("#sal-img") and page.inner_text("#sal-status") == "" and page.inner_text("#sal-dl") == ""
    page.fill("#target", "none")
    page.select_option("#attack", "fgsm")
    page.click("#run-fool")
    page.wait_for_selector("#fool-img:not([hidden])", timeout=60000)
    page.fill("#target", "stingrey")
    assert page.is_hidden("#fool-img") and page.inner_text("#fool-status") == ""
    page.click("#run-fool")
    page.wait_for_selector("#fool-status.err")
    assert page.inner_text("#fool-status") == ("unknown class 'stingrey'; the closest names are 'stingray', 'syringe', "
                                               "'strainer' (or pass a class index)")
    assert page.is_hidden("#fool-img") and page.inner_text("#fool-dl") == ""
    assert page.inner_text("#photo-status") == page.inner_text("#page-status") == page.inner_text("#sal-status") == ""
    assert page.get_attribute("#top5", "data-top1") == "967"  # section 1 untouched


def test_a_running_visualization_never_shows_a_score_without_a_value(context, server):
    """Before: `step 29, score ` (the progress events carry no score)."""
    page = loaded(open_page(context, server))
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelector('#vis-status').textContent))
          .observe(document.querySelector('#vis-status'), {childList: true, characterData: true, subtree: true}); }""")
    page.fill("#vis-target", "pizza")
    page.fill("#vis-steps", "20")
    page.click("#run-vis")
    page.wait_for_function("document.querySelector('#vis-status').textContent.startsWith('done')", timeout=120000)
    seen = page.evaluate("window.seen")
    steps = [s for s in seen if s.startswith("step ")]
    assert steps and all(re.fullmatch(r"step \d+ of 20(, score -?\d+\.\d\d)?", s) for s in steps), steps
    assert re.fullmatch(r"done: .+, score -?\d+\.\d\d; the model sees .+", seen[-1]), seen[-1]


# -- every fetch the page makes, answered badly ------------------------------------------------------------------

FAILURES = {  # name: (how the request is answered, None = the network fails; what the status line must say)
    "401": ({"status": 401, "json": {"detail": "missing or wrong access token; open the URL printed at start"}},
            "missing or wrong access token; open the URL printed at start"),
    "404": ({"status": 404, "json": {"detail": "no such job (finished jobs expire)"}},
            "no such job (finished jobs expire)"),
    "413": ({"status": 413, "json": {"detail": "the upload is larger than the server's 10 MiB limit; send a smaller "
                                               "image"}}, "the upload is larger than the server's 10 MiB limit"),
    "422-list": ({"status": 422, "json": {"detail": [{"type": "int_parsing", "loc": ["body", "steps"],
                                                      "msg": "Input should be a valid integer"}]}},
                 "steps: Input should be a valid integer"),
    "429": ({"status": 429, "json": {"detail": "the job queue is full; retry shortly"}, "headers": {"Retry-After": "5"}},
            "the job queue is full; retry shortly"),
    "500-text": ({"status": 500, "body": "Internal Server Error", "content_type": "text/plain"},
                 "the server failed (500 Internal Server Error); see its log, then retry"),
    "502-html": ({"status": 502, "body": "<html><body><h1>Bad Gateway</h1></body></html>", "content_type": "text/html"},
                 "the server failed (502 Bad Gateway); see its log, then retry"),
    "401-html": ({"status": 401, "body": "<html>login</html>", "content_type": "text/html"},
                 "the server asks for the access token (401 Unauthorized); open the URL printed at start"),
    "network": (None, "the server cannot be reached; check that featvis serve is still running, then retry"),
    "200-not-json": ({"status": 200, "body": "<html>a portal page</html>", "content_type": "text/html"}, "is not "),
}


def answer(how):
    return lambda route: route.abort("connectionrefused") if how is None else route.fulfill(**how)


def fake(code=200, **body):
    return lambda route: route.fulfill(status=code, json=body)


def done_job(**result):
    return {"id": FAKE_JOB, "kind": "x", "status": "done", "progress": 1.0, "result": result, "error": None,
            "images": ["panels.png", "image.png"]}


def sse(*events):
    return lambda route: route.fulfill(status=200, content_type="text/event-stream", body="".join(events))


def end_event(job):
    return f"event: end\ndata: {json.dumps(job)}\n\n"


def running(route):
    route.fulfill(status=200, json={**done_job(), "status": "running", "progress": 0.5, "result": None})


def pick_coffee(page):
    page.select_option("#sample", "coffee")
    page.wait_for_function("document.querySelector('#top5').dataset.top1 == '967'")


JOB = f"**/api/jobs/{FAKE_JOB}"
SITES = {  # name: (the section whose status must say it, routes given the failure, what the user does)
    **{f"load {route}": ("page", lambda bad, r=route: [(f"**/api/{r}*", bad)], lambda page: None)
       for route in ("info", "samples", "methods", "attacks", "classes")},
    "classify": ("photo", lambda bad: [("**/api/classify", bad)], lambda page: page.select_option("#sample", "coffee")),
    "saliency": ("sal", lambda bad: [("**/api/saliency", bad)], lambda page: (pick_coffee(page),
                                                                              page.click("#run-saliency"))),
    "saliency poll": ("sal", lambda bad: [("**/api/saliency", fake(202, id=FAKE_JOB)), (JOB, bad)],
                      lambda page: (pick_coffee(page), page.click("#run-saliency"))),
    "saliency image": ("sal", lambda bad: [("**/api/saliency", fake(202, id=FAKE_JOB)), (JOB, fake(**done_job())),
                                           (f"{JOB}/images/*", bad)],
                       lambda page: (pick_coffee(page), page.click("#run-saliency"))),
    "fool": ("fool", lambda bad: [("**/api/fool", bad)], lambda page: (pick_coffee(page), page.click("#run-fool"))),
    "visualize": ("vis", lambda bad: [("**/api/visualize", bad)], lambda page: page.click("#run-vis")),
    "vis events": ("vis", lambda bad: [("**/api/visualize", fake(202, id=FAKE_JOB)), (JOB, bad),
                                       (f"{JOB}/events", bad)], lambda page: page.click("#run-vis")),
    "vis image": ("vis", lambda bad: [("**/api/visualize", fake(202, id=FAKE_JOB)),
                                      (f"{JOB}/events", sse(end_event(done_job(objective="x", top1_name="y")))),
                                      (f"{JOB}/images/*", bad)], lambda page: page.click("#run-vis")),
    "vis preview": ("vis", lambda bad: [("**/api/visualize", fake(202, id=FAKE_JOB)), (JOB, running),
                                        (f"{JOB}/events", sse('data: {"progress": 0.5, "step": 16, "total": 32, '
                                                              '"preview": true}\n\n')),
                                        (f"{JOB}/images/*", bad)], lambda page: page.click("#run-vis")),
    "vis cancel": ("vis", lambda bad: [("**/api/visualize", fake(202, id=FAKE_JOB)),
                                       (JOB, lambda route: running(route) if route.request.method == "GET"
                                        else bad(route)), (f"{JOB}/events", sse())],
                   lambda page: (page.click("#run-vis"), page.click("#cancel-vis"))),
}


@pytest.mark.parametrize("site", SITES)
def test_every_failing_fetch_shows_one_readable_line_in_its_section(context, server, site):
    """The probe of issue 22: each request the page makes, answered with each kind of failure. Before: `[object
    Object]` (422 lists), a blank status (image and event-stream failures, a failed cancel), errors of sections 2-4
    shown under the photo, and "Failed to fetch"."""
    section, routes, act = SITES[site]
    for name, (how, expected) in FAILURES.items():
        page = open_page(context, server, routes(answer(how)))
        if not site.startswith("load"):
            loaded(page)
        act(page)
        status = page.locator(f"#{section}-status")
        status.wait_for(state="attached")
        page.wait_for_function(f"document.querySelector('#{section}-status').textContent.includes({expected!r})",
                               timeout=5000)
        text = status.inner_text()
        assert "\n" not in text and not any(w in text for w in ("[object", "undefined", "null", "NaN")), (name, text)
        assert status.get_attribute("class") == "err", (name, text)
        others = [s for s in ("page", "photo", "sal", "fool", "vis") if s != section]
        assert all(page.inner_text(f"#{s}-status") == "" for s in others), (name, text)
        page.close()


def test_the_concepts_section_ranks_a_class_s_concepts_from_uploaded_photos(context, server):
    page = loaded(open_page(context, server))
    photos = [str(fv.samples.path(n)) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    page.set_input_files("#con-files", photos)
    page.fill("#con-target", "tabby")
    page.fill("#con-k", "3")
    page.click("#run-con")
    page.wait_for_function("document.querySelector('#con-status').textContent.startsWith('tabby')", timeout=120000)
    status = page.inner_text("#con-status")
    assert "3 concepts at swish (call=1) from 32 crops of 4 photos" in status and "deletion AUC" in status
    heads = page.locator("#con-out .concept > div").all_inner_texts()
    assert [h.split(" · ")[0] for h in heads] == ["#1", "#2", "#3"]
    shares = [float(re.search(r"([\d.]+) % of the importance", h).group(1)) for h in heads]
    assert shares == sorted(shares, reverse=True)
    assert page.eval_on_selector_all("#con-out img", "els => els.every(e => e.naturalWidth > 0)")
    page.set_input_files("#con-files", photos[:3])  # too few: the server's one line, in the section
    page.click("#run-con")
    page.wait_for_function("document.querySelector('#con-status').className == 'err'", timeout=20000)
    assert "send 4 to 32 photos of the class" in page.inner_text("#con-status")
