"""The featvis JSON API (FastAPI): classify, saliency, fooling and visualization jobs with progress events.

Safe to leave running: uploads are capped in bytes and pixels and decoded (never trusted by name), long work
runs in a bounded queue (full → 429 with Retry-After), jobs have a time limit and can be cancelled, results
expire, no request path touches the filesystem, and a token guards every request when one is set.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Annotated

import torch
from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from featvis import samples
from featvis.errors import FeatvisError
from featvis.images import encode_png, load_image
from featvis.web.jobs import Job, JobQueue, QueueFull

MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
RETRY_AFTER_S = 5


def create_app(clf, *, token: str | None = None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               queue: JobQueue | None = None) -> FastAPI:
    """The API for one classifier. `token`: required on every request (Bearer header, ?token= or cookie)."""
    app = FastAPI(title="featvis", docs_url=None, redoc_url=None)  # Swagger UI would load assets from a CDN
    jobs = queue or JobQueue()
    app.state.jobs = jobs

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or \
                request.query_params.get("token") or request.cookies.get("featvis_token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "missing or wrong access token; open the URL printed at start"},
                                    status_code=401)
        return await call_next(request)

    @app.exception_handler(FeatvisError)
    async def bad_input(_request: Request, exc: FeatvisError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def read_image(file: UploadFile | None, sample: str | None) -> torch.Tensor:
        if sample:
            return load_image(samples.path(sample), clf)
        if file is None:
            raise HTTPException(422, "send an image file (field 'file') or a bundled sample name (field 'sample')")
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"upload is larger than {max_bytes // 2**20} MiB; send a smaller image")
        return load_image(data, clf, max_pixels=max_pixels)  # decoded and checked; the name is never used

    def submit(kind: str, work) -> JSONResponse:
        try:
            job = jobs.submit(kind, work)
        except QueueFull:
            return JSONResponse({"detail": "the job queue is full; retry shortly"}, status_code=429,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202)

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        from importlib import resources

        html = resources.files("featvis.web").joinpath("static/index.html").read_text("utf-8")
        resp = Response(html, media_type="text/html")
        if token is not None:  # the printed URL carries ?token=; remember it for the page's own requests
            resp.set_cookie("featvis_token", token, httponly=True, samesite="strict")
        return resp

    @app.get("/api/methods")
    def methods() -> list[str]:
        from featvis.attribution import ATTRIBUTIONS

        return ATTRIBUTIONS.names()

    @app.get("/api/attacks")
    def attacks() -> list[str]:
        from featvis.adversarial import ATTACKS

        return ATTACKS.names()

    @app.get("/api/health")
    def health() -> dict:
        return {"model": clf.id, "classes": len(clf.labels), "input_size": clf.input_size}

    @app.get("/api/classes")
    def classes(q: str = "", limit: int = 20) -> list[dict]:
        q = q.strip().lower()
        hits = [{"index": i, "name": n} for i, n in enumerate(clf.labels)
                if not q or any(q in s.lower() for s in clf.labels.synonyms[i])]
        return hits[: max(1, min(limit, 1000))]

    @app.get("/api/samples")
    def sample_names() -> list[str]:
        return samples.names()

    @app.post("/api/classify")
    async def classify(file: UploadFile | None = None, sample: Annotated[str | None, Form()] = None,
                       k: Annotated[int, Form()] = 5) -> dict:
        x = await read_image(file, sample)
        preds = await asyncio.to_thread(clf.predict, x, k)
        return {"model": clf.id, "predictions": [p.__dict__ for p in preds[0]]}

    @app.post("/api/saliency", status_code=202)
    async def saliency(file: UploadFile | None = None, sample: Annotated[str | None, Form()] = None,
                       method: Annotated[str, Form()] = "gradient", target: Annotated[str | None, Form()] = None):
        from featvis.attribution import ATTRIBUTIONS, resolve_targets

        fn = ATTRIBUTIONS.get(method)
        x = await read_image(file, sample)
        tgt = None if not target else clf.labels.lookup(target)

        def work(job: Job) -> None:
            from featvis.figures import figure_png, overlay, saliency_panels, scale_maps

            job.report(0.0, stage="saliency")
            t = resolve_targets(clf, x, tgt)
            maps = fn(clf, x, t)
            with torch.no_grad():
                p = clf(x).softmax(-1)[0, int(t[0])].item()
            heat = scale_maps([maps[0]], shared=False)[0]
            job.images["overlay.png"] = encode_png(torch.from_numpy(overlay(x[0], heat)).permute(2, 0, 1) / 255)
            job.images["heatmap.png"] = encode_png(torch.from_numpy(heat)[None].expand(3, -1, -1))
            job.images["panels.png"] = figure_png(saliency_panels(
                x, maps, [f"{clf.labels[int(t[0])]} p={p:.3f}"], method=ATTRIBUTIONS.canonical(method)), dpi=90)
            job.result = {"method": ATTRIBUTIONS.canonical(method), "target": int(t[0]),
                          "target_name": clf.labels[int(t[0])], "prob": p}

        return submit("saliency", work)

    @app.post("/api/fool", status_code=202)
    async def fool(file: UploadFile | None = None, sample: Annotated[str | None, Form()] = None,
                   target: Annotated[str, Form()] = "random", method: Annotated[str, Form()] = "ascent"):
        from featvis.adversarial import ATTACKS
        from featvis.adversarial import fool as run

        name = ATTACKS.canonical(method)
        x = await read_image(file, sample)
        tgt = target.lower() if target.lower() in ("random", "none") else clf.labels.lookup(target)
        if name == "deepfool" and tgt == "random":
            tgt = "none"  # deepfool is untargeted
        steps = {"ascent": 100, "lab": 100, "mifgsm": 10, "deepfool": 50, "cw": 500}.get(name, 20)

        def work(job: Job) -> None:
            from featvis.figures import figure_png, fooling_panels

            opts = {} if name == "fgsm" else {"callback": lambda k, active: job.report(min(k / steps, 1.0), step=k)}
            res = run(clf, x, None if tgt == "none" else tgt, method=name, **opts)
            job.images["fooled.png"] = encode_png(res.images[0])
            job.images["panels.png"] = figure_png(fooling_panels(res), dpi=90)
            job.result = res.records()[0]

        return submit("fool", work)

    @app.post("/api/visualize", status_code=202)
    async def visualize(kind: Annotated[str, Form()] = "class", target: Annotated[str | None, Form()] = None,
                        layer: Annotated[str | None, Form()] = None, channel: Annotated[int, Form()] = 0,
                        preset: Annotated[str, Form()] = "lucid", steps: Annotated[int, Form()] = 128,
                        size: Annotated[int, Form()] = 128):
        from featvis.layers import find_layer
        from featvis.optvis import PRESETS, objectives, visualize

        name = PRESETS.canonical(preset)
        if not 1 <= steps <= 2000 or not 32 <= size <= 512:
            raise HTTPException(422, "steps must be 1..2000 and size 32..512")
        if kind == "class":
            objective = objectives.class_logit(clf.labels.lookup(target if target is not None else ""))
        elif kind == "channel":
            objective = objectives.channel(find_layer(clf, layer or "")[0], channel)
        else:
            raise HTTPException(422, f"kind must be 'class' or 'channel', got {kind!r}")

        def work(job: Job) -> None:
            def progress(state) -> None:
                job.report(state.step / steps, step=state.step, score=float(state.scores.mean()))
                if state.step % 16 == 0:
                    job.images["preview.png"] = encode_png(state.images[0])

            res = visualize(clf, objective, preset=name, size=size, steps=steps, callback=progress)
            job.images["image.png"] = encode_png(res.images[0])
            with torch.no_grad():
                probs = clf(res.images).softmax(-1)[0]
            job.result = {"objective": res.objective, "score": float(res.scores[0]), "top1": int(probs.argmax()),
                          "top1_name": clf.labels[int(probs.argmax())], "ms_per_step": res.ms_per_step}

        return submit("visualize", work)

    def find(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs expire)")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return find(job_id).public()

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str) -> dict:
        job = find(job_id)
        job.cancel.set()
        return job.public()

    @app.get("/api/jobs/{job_id}/images/{name}")
    def job_image(job_id: str, name: str) -> Response:
        data = find(job_id).images.get(name)  # a key lookup: the name never reaches the filesystem
        if data is None:
            raise HTTPException(404, f"job has no image {name!r}")
        return Response(data, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="featvis-{job_id[:8]}-{name}"'})

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        job = find(job_id)

        async def stream():
            sent = 0
            while True:
                while sent < len(job.events):
                    yield f"data: {json.dumps(job.events[sent])}\n\n"
                    sent += 1
                if job.finished is not None:
                    yield f"event: end\ndata: {json.dumps(job.public())}\n\n"
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app
