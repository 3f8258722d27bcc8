"""POST /api/concepts: CRAFT concepts of one class from uploaded photos, through the runner, on the session's model."""

import io
import time

import pytest
from PIL import Image

import featvis as fv

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from featvis.web.app import create_app
from featvis.web.jobs import JobQueue

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def files(names):
    return [("files", (f"{n}.jpg", fv.samples.path(n).read_bytes(), "image/jpeg")) for n in names]


@pytest.mark.slow
def test_a_concepts_job_gives_ranked_concepts_and_their_pictures(clf):
    with TestClient(create_app(clf, queue=JobQueue(capacity=2, timeout=120)), base_url="http://127.0.0.1") as c:
        r = c.post("/api/concepts", files=files(PHOTOS), data={"target": "tabby", "k": "3", "steps": "8"})
        assert r.status_code == 202, r.text
        t0 = time.time()
        while (job := c.get(f"/api/jobs/{r.json()['id']}").json())["status"] not in ("done", "failed", "cancelled"):
            assert time.time() - t0 < 120
            time.sleep(0.1)
        assert job["status"] == "done", job
        res = job["result"]
        assert res["class"] == 281 and res["images"] == 4 and res["crops"] == 32 and res["layer"] == "swish (call=1)"
        shares = [x["share"] for x in res["concepts"]]
        assert len(shares) == 3 and shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6
        d = res["deletion"]
        assert d["auc_ci"][0] <= d["auc"] <= d["auc_ci"][1] and d["orders"] == 20
        names = {n for x in res["concepts"] for n in (x["visual"], *x["crops"], *x["maps"])}
        assert len(names) == 3 * (1 + 4 + 2) and set(job["images"]) - names <= {"preview.png"}  # + the live one
        for name in names:
            img = c.get(f"/api/jobs/{job['id']}/images/{name}")
            assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).format == "PNG"


def test_bad_concepts_requests_are_one_line(clf):
    with TestClient(create_app(clf, queue=JobQueue(capacity=2, timeout=60)), base_url="http://127.0.0.1") as c:
        r = c.post("/api/concepts", files=files(PHOTOS[:3]), data={"target": "tabby"})
        assert r.status_code == 422 and r.json()["detail"].startswith("send 4 to 32 photos of the class")
        r = c.post("/api/concepts", files=files(PHOTOS), data={"target": "tabbby"})
        assert r.status_code == 422 and "'tabby'" in r.json()["detail"]
        r = c.post("/api/concepts", files=files(PHOTOS), data={"target": "tabby", "k": "1"})
        assert r.status_code == 422 and "k must be" in r.json()["detail"]
        bad = [*files(PHOTOS[:3]), ("files", ("x.png", b"not an image", "image/png"))]
        r = c.post("/api/concepts", files=bad, data={"target": "tabby"})
        assert r.status_code == 422 and "not an image" in r.json()["detail"]
        assert all("\n" not in x for x in [r.json()["detail"]])
