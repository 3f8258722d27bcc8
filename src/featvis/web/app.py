"""The featvis JSON API (FastAPI) and its page: classify, saliency, fooling, visualization and concepts jobs.

Front end only: each job builds a task (featvis.tasks) from the form, runs it on one item on the model's thread
(featvis.web.jobs), and serves the task's artifacts and record. Safe to leave running (featvis.web.guard): the
request body is capped by its Content-Length and while it streams, with the same 413 (a refused body up to
`DRAIN_BYTES` past the cap is read and discarded first, so that clients which send the whole body before reading,
such as urllib and requests, read the 413; a larger one is answered at once and the connection closed, which they
see as a reset); uploads are decoded off the event loop a few at a time and never trusted by name; Host and Origin
must be exactly this server's (no DNS rebinding, no cross-site POSTs); a token guards every request when set (header
or cookie, never an API URL's query string); jobs queue boundedly (full → 429), have a time limit and can be
cancelled; results expire; and no request path touches the filesystem. The page learns the upload limit from
`/api/info` and checks a photo's size before sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from featvis import samples
from featvis.errors import FeatvisError
from featvis.images import load_image
from featvis.tasks.classify import ClassifyParams  # the forms' defaults are the tasks'
from featvis.tasks.fool import FoolParams
from featvis.tasks.optvis import FeaturesParams
from featvis.tasks.saliency import SaliencyParams
from featvis.web.guard import DRAIN_BYTES, Guard, size_text, too_large
from featvis.web.jobs import JobQueue, QueueFull, WebJob
from featvis.web.runs import run_concepts, run_one

MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
RETRY_AFTER_S = 5
DECODERS = 2  # uploads decoded at once (each may take ~1 s and a few hundred MB for a large photo)
FORM_SLACK = 64 * 1024  # multipart framing and the small fields, on top of the file part, in the body cap
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass
class Server:
    """What the endpoints share: the model, its jobs, the upload limits and the decode limiter."""

    clf: Any
    jobs: JobQueue
    token: str | None
    max_bytes: int
    max_pixels: int
    limiter: Any

    async def read_image(self, file: UploadFile | None, sample: str | None) -> torch.Tensor:
        """The upload (or a bundled sample) decoded off the event loop, a few at a time; its name is never used."""
        import anyio

        if sample:
            return await anyio.to_thread.run_sync(lambda: load_image(samples.path(sample), self.clf),
                                                  limiter=self.limiter)
        if file is None:
            raise HTTPException(422, "send an image file (field 'file') or a bundled sample name (field 'sample')")
        data = await file.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise HTTPException(413, too_large(self.max_bytes))
        return await anyio.to_thread.run_sync(lambda: load_image(data, self.clf, max_pixels=self.max_pixels),
                                              limiter=self.limiter)

    def room(self) -> None:
        if self.jobs.full():
            raise HTTPException(429, "the job queue is full; retry shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)})

    def submit(self, kind: str, work) -> JSONResponse:
        try:
            job = self.jobs.submit(kind, work)
        except QueueFull:
            return JSONResponse({"detail": "the job queue is full; retry shortly"}, status_code=429,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202)

    def submit_task(self, kind: str, task, x: torch.Tensor | None, extra: dict | None = None) -> JSONResponse:
        """A job that runs `task` through the runner, as every front end does (on the model's thread, into a
        temporary run folder): on the uploaded image `x`, or on the task's own single unit when `x` is None. The
        job's images are what the task declares as its previews; its result, the record's plain fields."""

        def work(job: WebJob) -> None:
            record, files = run_one(self.clf, task, x)
            job.images.update(files)
            job.result = {k: v for k, v in record.items() if not isinstance(v, dict) or k == "predictions"} | \
                (extra or {})

        return self.submit(kind, work)

    async def on_model(self, fn):
        return await asyncio.to_thread(self.jobs.call, fn)

    def job(self, job_id: str) -> WebJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs expire)")
        return job


def server(request: Request) -> Server:
    return request.app.state.server


router = APIRouter()
Form_ = Annotated[str | None, Form()]
# A visualization on the shared server: smaller than the CLI's defaults (a page waits for it) and capped (one job
# must not hold the model thread for long); the tasks check everything else, as for every front end.
WEB_STEPS, WEB_SIDE = 128, 128
WEB_MAX_STEPS, WEB_MIN_SIDE, WEB_MAX_SIDE = 2000, 32, 512


@router.get("/", include_in_schema=False)
def page(request: Request) -> Response:
    from importlib import resources

    html = resources.files("featvis.web").joinpath("static/index.html").read_text("utf-8")
    return Response(html, media_type="text/html")  # the Guard set the token's cookie from the printed URL


@router.get("/api/methods")
def methods() -> list[str]:
    from featvis.attribution import ATTRIBUTIONS

    return ATTRIBUTIONS.names()


@router.get("/api/method-prefixes")
def method_prefixes() -> list[dict]:
    """The parametric method families (`smooth:METHOD`, ...): a prefix over any method of /api/methods."""
    from featvis.attribution import ATTRIBUTIONS

    return [{"prefix": p, "summary": summary, "aliases": ATTRIBUTIONS.family_aliases(p)}
            for p, summary in ATTRIBUTIONS.prefixes().items()]


@router.get("/api/attacks")
def attacks() -> list[str]:
    from featvis.adversarial import ATTACKS

    return ATTACKS.names()


@router.get("/api/presets")
def presets() -> list[str]:
    from featvis.optvis import PRESETS

    return PRESETS.names()


@router.get("/api/metrics")
def metrics() -> list[dict]:
    """The evaluation metrics as their registrations declare them (name, direction, group, paper, protocol)."""
    from featvis.attribution.metric import METRICS, default_metrics

    defaults = default_metrics()
    return [{"name": m.name, "direction": m.direction, "group": m.group, "paper": m.paper, "protocol": m.protocol,
             "default": m.name in defaults} for m in map(METRICS.get, METRICS.names())]


@router.get("/api/health")
def health(request: Request) -> dict:
    clf = server(request).clf
    return {"model": clf.id, "classes": len(clf.labels), "input_size": clf.input_size}


@router.get("/api/info")
def info(request: Request) -> dict:
    """What the page needs to know up front: the model and the upload limits (checked before sending)."""
    srv = server(request)
    return {**health(request), "max_upload_bytes": srv.max_bytes, "max_upload": size_text(srv.max_bytes),
            "max_pixels": srv.max_pixels}


@router.get("/api/classes")
def classes(request: Request, q: str = "", limit: int = 20) -> list[dict]:
    labels = server(request).clf.labels
    q = q.strip().lower()
    hits = [{"index": i, "name": n} for i, n in enumerate(labels)
            if not q or any(q in s.lower() for s in labels.synonyms[i])]
    return hits[: max(1, min(limit, 1000))]


@router.get("/api/samples")
def sample_names() -> list[str]:
    return samples.names()


@router.post("/api/classify")
async def classify(request: Request, file: UploadFile | None = None, sample: Form_ = None,
                   k: Annotated[int, Form()] = ClassifyParams.top_k) -> dict:
    srv = server(request)
    x = await srv.read_image(file, sample)
    preds = await srv.on_model(lambda: srv.clf.predict(x, k))
    return {"model": srv.clf.id, "predictions": [p.__dict__ for p in preds[0]]}


@router.post("/api/saliency", status_code=202)
async def saliency(request: Request, file: UploadFile | None = None, sample: Form_ = None,
                   method: Annotated[str, Form()] = SaliencyParams.methods[0], target: Form_ = None):
    from featvis.tasks import SaliencyTask

    srv = server(request)
    task = SaliencyTask(methods=(method,), target=target or None, overlays=True)
    task.prepare(srv.clf)  # class names only: no model call
    srv.room()
    x = await srv.read_image(file, sample)
    name = task.params.methods[0]

    return srv.submit_task("saliency", task, x, {"method": name})


@router.post("/api/fool", status_code=202)
async def fool(request: Request, file: UploadFile | None = None, sample: Form_ = None,
               target: Annotated[str, Form()] = FoolParams.target, method: Annotated[str, Form()] = FoolParams.method):
    from featvis.adversarial import ATTACKS
    from featvis.tasks import FoolTask

    srv = server(request)
    untargeted_only = not ATTACKS.get(method).info.get("targeted", True)
    task = FoolTask(method=method, target=None if untargeted_only and target == "random" else target)
    task.prepare(srv.clf)
    srv.room()
    x = await srv.read_image(file, sample)

    return srv.submit_task("fool", task, x)


@router.post("/api/visualize", status_code=202)
async def visualize(request: Request, kind: Annotated[str, Form()] = "class", target: Form_ = None,
                    layer: Form_ = None, channel: Annotated[int, Form()] = 0,
                    preset: Annotated[str, Form()] = FeaturesParams.preset,
                    steps: Annotated[int, Form()] = WEB_STEPS, size: Annotated[int, Form()] = WEB_SIDE):
    from featvis.tasks import ClassvisTask, FeaturesTask

    srv = server(request)
    if not 1 <= steps <= WEB_MAX_STEPS or not WEB_MIN_SIDE <= size <= WEB_MAX_SIDE:  # the server's own caps
        raise HTTPException(422, f"steps must be 1..{WEB_MAX_STEPS} and size {WEB_MIN_SIDE}..{WEB_MAX_SIDE} on this "
                                 "server (the CLI takes more)")
    if kind == "class":
        task = ClassvisTask(classes=(target if target is not None else "",), preset=preset, steps=steps, size=size)
    elif kind == "channel":
        task = FeaturesTask(layer=layer or "", channels=(channel,), preset=preset, steps=steps, size=size)
    else:
        raise HTTPException(422, f"kind must be 'class' or 'channel', got {kind!r}")
    await srv.on_model(lambda: task.prepare(srv.clf))  # a layer's channel count needs a probe pass
    srv.room()
    return srv.submit_task("visualize", task, None)


WEB_CONCEPT_IMAGES = (4, 32)  # photos of one class per concepts job (the body cap holds them all: one upload limit)
WEB_CONCEPT_STEPS = 64


@router.post("/api/concepts", status_code=202)
async def concepts(request: Request, files: list[UploadFile], target: Annotated[str, Form()],
                   k: Annotated[int, Form()] = 6, steps: Annotated[int, Form()] = WEB_CONCEPT_STEPS):
    """CRAFT concepts of one class from 4-32 uploaded photos of it: the concepts ranked by importance, each with its
    top crops, its visualization and its map on two photos, and the concept-deletion AUC against random orders."""
    from featvis.tasks.concepts import ConceptsTask

    srv = server(request)
    low, high = WEB_CONCEPT_IMAGES
    if not low <= len(files) <= high:
        raise HTTPException(422, f"send {low} to {high} photos of the class (field 'files'); got {len(files)}")
    if not 0 <= steps <= WEB_MAX_STEPS:
        raise HTTPException(422, f"steps must be 0..{WEB_MAX_STEPS} on this server (the CLI takes more)")
    task = ConceptsTask(classes=(target,), k=k, images=len(files), steps=steps, size=96, examples=2, top=6,
                        sobol_images=len(files))
    index = srv.clf.labels.lookup(target)  # an unknown class is one line with the nearest names
    await srv.on_model(lambda: task.prepare(srv.clf))
    srv.room()
    images = [await srv.read_image(f, None) for f in files]

    def work(job: WebJob) -> None:
        record, files_ = run_concepts(srv.clf, task, images, index)
        job.images.update(files_)
        job.result = record

    return srv.submit("concepts", work)


@router.get("/api/jobs/{job_id}")
def job_status(request: Request, job_id: str) -> dict:
    return server(request).job(job_id).public()


@router.delete("/api/jobs/{job_id}")
def cancel(request: Request, job_id: str) -> dict:
    job = server(request).job(job_id)
    job.cancel.set()
    return job.public()


@router.get("/api/jobs/{job_id}/images/{name}")
def job_image(request: Request, job_id: str, name: str) -> Response:
    data = server(request).job(job_id).images.get(name)  # a key lookup: the name never reaches the filesystem
    if data is None:
        raise HTTPException(404, f"job has no image {name!r}")
    return Response(data, media_type="image/png",
                    headers={"Content-Disposition": f'attachment; filename="featvis-{job_id[:8]}-{name}"'})


@router.get("/api/jobs/{job_id}/events")
async def events(request: Request, job_id: str) -> StreamingResponse:
    job = server(request).job(job_id)

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


async def bad_input(_request: Request, exc: FeatvisError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer to an HTTPException, with Starlette's bare "Not Found" / "Method Not Allowed" made useful."""
    detail, routes = exc.detail, "the API's routes are listed at /openapi.json"
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such page or API route {request.url.path!r}; {routes}"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path!r}; {routes}"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def bad_form(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of error objects as one line: the first bad field, what it should be, what to do."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
    what = str(first.get("msg", "is not valid")).splitlines()[0]
    where = f"field {field!r}" if field else "the request"
    return JSONResponse({"detail": f"{where}: {what[:1].lower()}{what[1:]}; correct it and retry"}, status_code=422)


def create_app(clf, *, token: str | None = None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               queue: JobQueue | None = None, host: str = "127.0.0.1", port: int | None = None,
               drain_bytes: int = DRAIN_BYTES) -> Guard:
    """The API for one classifier, behind the Guard (Host/Origin, token, body cap).

    Args:
        token: required on every request (the Bearer header, or the cookie that opening `/?token=T` sets once);
            never read from an API URL; "" is refused.
        max_bytes: the largest upload; the page checks it before sending (`/api/info`).
        host, port: where the server is reached; requests naming another Host (DNS rebinding) or coming from
            another Origin are refused. Binding every interface (0.0.0.0) accepts any Host, and needs a token.
        drain_bytes: how far past the cap a refused body is still read (and discarded) so that clients which
            send it all before reading see the 413 (featvis.web.guard).
    """
    import anyio

    if token is not None and not token.strip():
        raise FeatvisError("the access token is empty; give a real token or none")
    wildcard = host in ("0.0.0.0", "::", "")
    if wildcard and token is None:
        raise FeatvisError("serving on every interface needs an access token")
    hosts = None if wildcard else tuple(dict.fromkeys((*LOOPBACK_NAMES, host.strip("[]").lower())))
    jobs = queue or JobQueue()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        jobs.shutdown()

    api = FastAPI(title="featvis", docs_url=None, redoc_url=None, lifespan=lifespan)  # no CDN-loaded Swagger UI
    api.state.server = Server(clf, jobs, token, max_bytes, max_pixels, anyio.CapacityLimiter(DECODERS))
    api.state.jobs = jobs
    api.add_exception_handler(FeatvisError, bad_input)
    api.add_exception_handler(RequestValidationError, bad_form)
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.include_router(router)
    guard = Guard(api, token=token, max_body=max_bytes + FORM_SLACK, hosts=hosts, port=port, upload_limit=max_bytes,
                  drain=drain_bytes)
    guard.state = api.state  # type: ignore[attr-defined]
    guard.api = api  # type: ignore[attr-defined]
    return guard
