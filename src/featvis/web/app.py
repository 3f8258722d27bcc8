"""The featvis JSON API (FastAPI) and its page: classify, saliency, fooling and visualization jobs with progress.

Front end only: each job builds a task (featvis.tasks) from the form, runs it on one item on the model's thread
(featvis.web.jobs), and serves the task's artifacts and record. Safe to leave running: the request body is capped
while it streams (and refused at once by Content-Length), uploads are decoded off the event loop a few at a time
and never trusted by name, Host and Origin must be this server's (no DNS rebinding, no cross-site POSTs), a token
guards every request when set, jobs queue boundedly (full → 429), have a time limit and can be cancelled, results
expire, and no request path touches the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import torch
from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from featvis import samples
from featvis.data import Item, item_seed
from featvis.errors import FeatvisError
from featvis.images import load_image
from featvis.tasks.base import Batch
from featvis.web.jobs import JobQueue, QueueFull, WebJob

MAX_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
RETRY_AFTER_S = 5
DECODERS = 2  # uploads decoded at once (each may take ~1 s and a few hundred MB for a large photo)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: Host/Origin checks, the access token, and a body cap applied while the body streams."""

    def __init__(self, app, *, token: str | None, max_body: int, hosts: tuple[str, ...] | None,
                 port: int | None) -> None:
        self.app, self.token, self.max_body, self.hosts, self.port = app, token, max_body, hosts, port

    def _host_ok(self, value: str) -> bool:
        if self.hosts is None:  # bound to every interface: the token guards it
            return True
        name, port = _split_host(value)
        return name in self.hosts and (self.port is None or port in (None, self.port))

    def _origin_ok(self, origin: str) -> bool:
        if origin == "null":
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and self._host_ok(parts.netloc)

    def _token_ok(self, scope, headers: dict[bytes, bytes]) -> bool:
        if self.token is None:
            return True
        from http.cookies import SimpleCookie
        from urllib.parse import parse_qs

        given = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
        if not given:
            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        if not given:
            jar = SimpleCookie()
            jar.load(headers.get(b"cookie", b"").decode("latin-1"))
            given = jar["featvis_token"].value if "featvis_token" in jar else ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._host_ok(host):
            await _reply(send, 421, f"host {host!r} is not this server; open it at its own address")
            return
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_ok(origin.decode("latin-1")):
            await _reply(send, 403, "cross-origin requests are refused")
            return
        if not self._token_ok(scope, headers):
            await _reply(send, 401, "missing or wrong access token; open the URL printed at start")
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, f"request is larger than {self.max_body // 2**20} MiB; send a smaller image")
            return
        seen = 0
        started = False

        async def capped_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _reply(send, 413, f"request is larger than {self.max_body // 2**20} MiB; send a smaller image")


def _split_host(value: str) -> tuple[str, int | None]:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name, int(port) if port.isdigit() else None


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
            raise HTTPException(413, f"upload is larger than {self.max_bytes // 2**20} MiB; send a smaller image")
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

    def submit_task(self, kind: str, task, x: torch.Tensor | None, present) -> JSONResponse:
        """A job that runs `task` on one item on the model's thread; `present` turns its files into job images."""
        item = Item("web", seed=item_seed(0, "web"))

        def work(job: WebJob) -> None:
            out = task.run(self.clf, Batch([item], x))[0]
            present(job, out.record, out.artifacts)
            job.result = {k: v for k, v in out.record.items() if not isinstance(v, dict) or k == "predictions"}

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


@router.get("/", include_in_schema=False)
def page(request: Request) -> Response:
    from importlib import resources

    html = resources.files("featvis.web").joinpath("static/index.html").read_text("utf-8")
    resp = Response(html, media_type="text/html")
    token = server(request).token
    if token is not None:  # the printed URL carries ?token=; remember it for the page's own requests
        resp.set_cookie("featvis_token", token, httponly=True, samesite="strict")
    return resp


@router.get("/api/methods")
def methods() -> list[str]:
    from featvis.attribution import ATTRIBUTIONS

    return ATTRIBUTIONS.names()


@router.get("/api/attacks")
def attacks() -> list[str]:
    from featvis.adversarial import ATTACKS

    return ATTACKS.names()


@router.get("/api/presets")
def presets() -> list[str]:
    from featvis.optvis import PRESETS

    return PRESETS.names()


@router.get("/api/health")
def health(request: Request) -> dict:
    clf = server(request).clf
    return {"model": clf.id, "classes": len(clf.labels), "input_size": clf.input_size}


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
                   k: Annotated[int, Form()] = 5) -> dict:
    srv = server(request)
    x = await srv.read_image(file, sample)
    preds = await srv.on_model(lambda: srv.clf.predict(x, k))
    return {"model": srv.clf.id, "predictions": [p.__dict__ for p in preds[0]]}


@router.post("/api/saliency", status_code=202)
async def saliency(request: Request, file: UploadFile | None = None, sample: Form_ = None,
                   method: Annotated[str, Form()] = "gradient", target: Form_ = None):
    from featvis.tasks import SaliencyTask

    srv = server(request)
    task = SaliencyTask(methods=(method,), target=target or None, overlays=True)
    task.prepare(srv.clf)  # class names only: no model call
    srv.room()
    x = await srv.read_image(file, sample)
    name = task.params.methods[0]

    def present(job: WebJob, record: dict, files: dict[str, bytes]) -> None:
        job.images["panels.png"] = files[record["figure"]]
        job.images["overlay.png"] = files[record["overlays"][name]]
        job.images["heatmap.png"] = files[record["heatmaps"][name]]
        record["method"] = name

    return srv.submit_task("saliency", task, x, present)


@router.post("/api/fool", status_code=202)
async def fool(request: Request, file: UploadFile | None = None, sample: Form_ = None,
               target: Annotated[str, Form()] = "random", method: Annotated[str, Form()] = "ascent"):
    from featvis.adversarial import ATTACKS
    from featvis.tasks import FoolTask

    srv = server(request)
    untargeted_only = not ATTACKS.get(method).info.get("targeted", True)
    task = FoolTask(method=method, target=None if untargeted_only and target == "random" else target)
    task.prepare(srv.clf)
    srv.room()
    x = await srv.read_image(file, sample)

    def present(job: WebJob, record: dict, files: dict[str, bytes]) -> None:
        job.images["fooled.png"] = files[record["fooled_png"]]
        job.images["panels.png"] = files[record["figure"]]

    return srv.submit_task("fool", task, x, present)


@router.post("/api/visualize", status_code=202)
async def visualize(request: Request, kind: Annotated[str, Form()] = "class", target: Form_ = None,
                    layer: Form_ = None, channel: Annotated[int, Form()] = 0, preset: Annotated[str, Form()] = "lucid",
                    steps: Annotated[int, Form()] = 128, size: Annotated[int, Form()] = 128):
    from featvis.tasks import ClassvisTask, FeaturesTask

    srv = server(request)
    if not 1 <= steps <= 2000 or not 32 <= size <= 512:
        raise HTTPException(422, "steps must be 1..2000 and size 32..512")
    if kind == "class":
        task = ClassvisTask(classes=(target if target is not None else "",), preset=preset, steps=steps, size=size)
    elif kind == "channel":
        task = FeaturesTask(layer=layer or "", channels=(channel,), preset=preset, steps=steps, size=size)
    else:
        raise HTTPException(422, f"kind must be 'class' or 'channel', got {kind!r}")
    await srv.on_model(lambda: task.prepare(srv.clf))  # a layer's channel count needs a probe pass
    srv.room()
    unit = (await srv.on_model(lambda: task.units(srv.clf))).seeded(0).items[0]

    def work(job: WebJob) -> None:
        out = task.run(srv.clf, Batch([unit]))[0]
        job.images["image.png"] = out.artifacts[out.record["image"]]
        job.result = {"objective": out.record["title"], **{k: v for k, v in out.record.items() if k != "image"}}

    return srv.submit("visualize", work)


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


def create_app(clf, *, token: str | None = None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               queue: JobQueue | None = None, host: str = "127.0.0.1", port: int | None = None) -> Guard:
    """The API for one classifier, behind the Guard (Host/Origin, token, body cap).

    Args:
        token: required on every request (Bearer header, ?token= or the cookie the page sets); "" is refused.
        host, port: where the server is reached; requests naming another Host (DNS rebinding) or coming from
            another Origin are refused. Binding every interface (0.0.0.0) accepts any Host, and needs a token.
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
    api.include_router(router)
    guard = Guard(api, token=token, max_body=max_bytes + 64 * 1024, hosts=hosts, port=port)
    guard.state = api.state  # type: ignore[attr-defined]
    guard.api = api  # type: ignore[attr-defined]
    return guard
