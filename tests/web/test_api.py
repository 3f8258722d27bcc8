import io
import time

import pytest
from PIL import Image

import featvis as fv

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from featvis.attribution import ATTRIBUTIONS
from featvis.web.app import create_app
from featvis.web.jobs import JobQueue


@pytest.fixture(scope="module")
def client(clf):
    with TestClient(create_app(clf, queue=JobQueue(capacity=2, timeout=60)), base_url="http://127.0.0.1") as c:
        yield c


def wait(client, job_id, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def png_bytes(size=(64, 64), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_classify_sample_and_upload(client):
    r = client.post("/api/classify", data={"sample": "coffee"})
    assert r.status_code == 200 and r.json()["predictions"][0]["index"] == 967
    data = fv.samples.path("grace_hopper").read_bytes()
    r = client.post("/api/classify", files={"file": ("anything.txt", data, "text/plain")})
    assert r.status_code == 200 and r.json()["predictions"][0]["index"] == 652  # decoded, not trusted by name
    assert client.get("/api/classes", params={"q": "tabby"}).json()[0]["index"] == 281


def test_upload_limits_and_bad_inputs(clf):
    with TestClient(create_app(clf, max_bytes=50_000, max_pixels=1_000_000), base_url="http://127.0.0.1") as c:
        big = fv.samples.path("coffee").read_bytes()
        assert c.post("/api/classify", files={"file": ("a.jpg", big)}).status_code == 413
        r = c.post("/api/classify", files={"file": ("a.png", b"not an image at all")})
        assert r.status_code == 422 and "not an image" in r.json()["detail"]
        buf = io.BytesIO()
        Image.new("1", (4000, 4000)).save(buf, format="PNG", optimize=True)
        r = c.post("/api/classify", files={"file": ("bomb.png", buf.getvalue())})
        assert r.status_code == 422 and "pixels" in r.json()["detail"]
        r = c.post("/api/saliency", data={"sample": "coffee", "target": "espreso"})
        assert r.status_code == 422 and "'espresso'" in r.json()["detail"]
        r = c.post("/api/visualize", data={"kind": "channel", "layer": "blocks.99"})
        assert r.status_code == 422 and "unknown layer" in r.json()["detail"]


def test_saliency_and_fool_jobs(client):
    r = client.post("/api/saliency", data={"sample": "coffee", "method": "gradcam"})
    assert r.status_code == 202
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["result"]["target"] == 967
    img = client.get(f"/api/jobs/{job['id']}/images/overlay.png")
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (224, 224)
    assert client.get(f"/api/jobs/{job['id']}/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
    r = client.post("/api/fool", data={"sample": "chelsea", "target": "stingray"})
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["result"]["success"] and job["result"]["predicted"] == 6
    assert job["result"]["linf_255"] <= 3  # the default ascent's cap
    r = client.post("/api/fool", data={"sample": "coffee", "target": "none", "method": "pgd"})
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["result"]["success"] and job["result"]["predicted"] != 967


def test_visualize_streams_progress_and_can_be_cancelled(client):
    r = client.post("/api/visualize", data={"kind": "class", "target": "pizza", "steps": 12, "size": 64})
    job_id = r.json()["id"]
    with client.stream("GET", f"/api/jobs/{job_id}/events") as s:
        body = "".join(s.iter_text())
    assert body.count("data: {\"progress\"") >= 12 and "event: end" in body
    assert wait(client, job_id)["status"] == "done"
    r = client.post("/api/visualize", data={"kind": "class", "target": "pizza", "steps": 2000, "size": 64})
    job_id = r.json()["id"]
    time.sleep(0.5)
    client.delete(f"/api/jobs/{job_id}")
    assert wait(client, job_id)["status"] == "cancelled"


def test_full_queue_answers_429(clf):
    with TestClient(create_app(clf, queue=JobQueue(capacity=1)), base_url="http://127.0.0.1") as c:
        first = c.post("/api/visualize", data={"kind": "class", "target": 1, "steps": 2000, "size": 64})
        assert first.status_code == 202
        second = c.post("/api/visualize", data={"kind": "class", "target": 2, "steps": 5, "size": 64})
        assert second.status_code == 429 and second.headers["Retry-After"]
        c.delete(f"/api/jobs/{first.json()['id']}")
        wait(c, first.json()["id"])


def test_token_required_when_set(clf):
    with TestClient(create_app(clf, token="s3cret"), base_url="http://127.0.0.1") as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/health", params={"token": "s3cret"}).status_code == 401  # header or cookie only


def test_page_is_served_without_external_resources(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>featvis</title>" in r.text
    assert "http://" not in r.text and "https://" not in r.text and "<link" not in r.text
    assert client.get("/api/methods").json()[0] in fv.attribution.methods()
    assert {"ascent", "lab", "pgd"} <= set(client.get("/api/attacks").json())


def test_finished_jobs_expire(clf):
    with TestClient(create_app(clf, queue=JobQueue(ttl=0.2)), base_url="http://127.0.0.1") as c:
        job_id = c.post("/api/saliency", data={"sample": "coffee"}).json()["id"]
        assert wait(c, job_id)["status"] == "done"
        time.sleep(0.3)
        assert c.get(f"/api/jobs/{job_id}").status_code == 404


def test_jobs_run_through_the_runner_and_show_what_tasks_declare(client, monkeypatch):
    """Issue 23: the web app called task.run directly and knew each task's record keys; now every job is a run of
    its task through the runner, and its images are the task's declared previews."""
    from featvis.tasks import runner
    from featvis.tasks.fool import FoolTask
    from featvis.tasks.saliency import SaliencyTask

    runs = []
    real = runner.run_task

    def counting(task, *args, **kwargs):
        runs.append(task.name)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(runner, "run_task", counting)
    monkeypatch.setattr("featvis.tasks.run_task", counting)
    for path, data, task in (("/api/saliency", {"sample": "coffee", "method": "gradcam"}, SaliencyTask),
                             ("/api/fool", {"sample": "chelsea", "target": "stingray"}, FoolTask)):
        job = wait(client, client.post(path, data=data).json()["id"])
        assert job["status"] == "done", job
        declared = task.previews({"figure": "f", "overlays": {"m": "o"}, "heatmaps": {"m": "h"}, "fooled_png": "p"})
        assert set(job["images"]) == set(declared)
    assert runs == ["saliency", "fool"]


# The parametric methods (smooth:METHOD, smooth-sq:METHOD, vargrad:METHOD): listed from the registry, run as a
# saliency job, refused with a did-you-mean when the prefix is wrong.

def test_method_prefixes_come_from_the_registry_and_feed_the_page(client):
    families = client.get("/api/method-prefixes").json()
    assert [f["prefix"] for f in families] == list(ATTRIBUTIONS.prefixes())
    assert {"smooth", "smooth-sq", "vargrad"} <= {f["prefix"] for f in families}
    smooth = next(f for f in families if f["prefix"] == "smooth")
    assert smooth["summary"] == ATTRIBUTIONS.prefixes()["smooth"]
    page = client.get("/").text
    assert '<select id="smoothing"' in page and '"/api/method-prefixes"' in page
    assert "/api/saliency\", { method: chosenMethod()" in page  # both saliency buttons send PREFIX:METHOD


def test_saliency_job_runs_smoothing_over_a_chosen_method(client):
    images = {}
    for method in ("gradcam", "smooth:gradcam"):
        r = client.post("/api/saliency", data={"sample": "coffee", "method": method})
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["id"], timeout=120)
        assert job["status"] == "done", job
        assert job["result"]["method"] == method and job["result"]["target"] == 967
        png = client.get(f"/api/jobs/{job['id']}/images/overlay.png")
        assert png.status_code == 200
        images[method] = Image.open(io.BytesIO(png.content)).convert("RGB").tobytes()
    assert images["gradcam"] != images["smooth:gradcam"]  # the noise average, not the plain map under a new name
    r = client.post("/api/saliency", data={"sample": "coffee", "method": "smoth:gradcam"})
    assert r.status_code == 422 and "smooth:" in r.json()["detail"]
