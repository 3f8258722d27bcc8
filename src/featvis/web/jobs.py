"""The web server's jobs and the one thread that owns the model.

Every use of the model — long jobs and quick requests such as classify — runs on one worker thread, so hooks,
early exits (`forward_until`), frozen parameters and train/eval flags of one request can never leak into another.
A quick request waits at most until the running job's next progress point: the job's progress listener runs the
pending quick calls there (between two steps, when the job holds no hooks). Jobs wait in a bounded queue (full →
`QueueFull`), have a time limit, can be cancelled at any progress point, and finished ones are forgotten after
`ttl` seconds or when more than `max_finished` are kept. No algorithm lives here.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from featvis import _progress

MAX_EVENTS = 2000  # progress events kept per job (a live view needs the latest, not every step of a long job)
PREVIEW_EVERY = 16  # steps between two preview images of a running visualization


class Cancelled(Exception):
    """Raised at a job's progress point when the job was cancelled or ran out of time."""


class QueueFull(Exception):
    pass


@dataclass
class WebJob:
    """One job of the web API: its status, progress events, result and images (PNG bytes by name)."""

    id: str
    kind: str
    status: str = "queued"  # queued, running, done, failed, cancelled
    progress: float = 0.0
    events: list[dict] = field(default_factory=list)
    result: dict | None = None
    images: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float = 0.0
    dropped: int = 0

    def report(self, fraction: float, **info: Any) -> None:
        """Record progress; raises Cancelled when the job was cancelled or is past its time limit."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled(f"time limit reached after {fraction:.0%}")
        self.progress = max(0.0, min(1.0, fraction))
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.events.append({"progress": round(self.progress, 4), **info})

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "progress": self.progress,
                "result": self.result, "error": self.error, "images": sorted(self.images)}


class JobQueue:
    """The model's owner: one worker thread runs the jobs (at most `capacity` queued or running) and the quick
    calls; finished jobs are forgotten after `ttl` seconds, and at most `max_finished` are kept."""

    def __init__(self, capacity: int = 4, timeout: float = 300.0, ttl: float = 900.0, max_finished: int = 64) -> None:
        self.capacity, self.timeout, self.ttl, self.max_finished = capacity, timeout, ttl, max_finished
        self.jobs: dict[str, WebJob] = {}
        self._pending: collections.deque[tuple[WebJob, Callable]] = collections.deque()
        self._quick: collections.deque[tuple[Callable, Future]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="featvis-model", daemon=True)
        self._thread.start()

    # -- submitting --------------------------------------------------------------------------------------------

    def full(self) -> bool:
        self.expire()
        with self._cond:
            return sum(j.status in ("queued", "running") for j in self.jobs.values()) >= self.capacity

    def submit(self, kind: str, work: Callable[[WebJob], None]) -> WebJob:
        self.expire()
        with self._cond:
            if sum(j.status in ("queued", "running") for j in self.jobs.values()) >= self.capacity:
                raise QueueFull
            job = WebJob(uuid.uuid4().hex, kind)
            self.jobs[job.id] = job
            self._pending.append((job, work))
            self._cond.notify_all()
        return job

    def call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run `fn` on the model's thread (between two steps of a running job) and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()
        with self._cond:
            self._quick.append((fn, fut))
            self._cond.notify_all()
        return fut.result(timeout=timeout)

    # -- the model's thread ------------------------------------------------------------------------------------

    def _serve_quick(self) -> None:
        """Run the quick calls waiting now (not the ones that arrive meanwhile: a steady stream of requests must
        not starve the running job)."""
        with self._cond:
            waiting = len(self._quick)
        for _ in range(waiting):
            with self._cond:
                if not self._quick:
                    return
                fn, fut = self._quick.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._quick and not self._pending:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._pending.popleft() if self._pending and not self._quick else None
            if item is None:
                self._serve_quick()
            else:
                self._run(*item)

    def _run(self, job: WebJob, work: Callable[[WebJob], None]) -> None:
        if job.cancel.is_set():
            job.status, job.finished = "cancelled", time.monotonic()
            return
        job.status = "running"
        job.deadline = time.monotonic() + self.timeout

        def listener(stage: str, done: float, total: float, extra: dict) -> None:
            self._serve_quick()  # quick requests go between two steps of the job
            preview = extra.get("preview")
            fresh = preview is not None and int(done) % PREVIEW_EVERY == 0
            if fresh:  # stored before the event that tells the page (`preview: true`) to fetch it
                from featvis.images import encode_png

                job.images["preview.png"] = encode_png(preview[0])
            job.report(done / total if total else 0.0, stage=stage, step=done, total=total,
                       **{k: v for k, v in extra.items() if isinstance(v, (int, float, str))},
                       **({"preview": True} if fresh else {}))

        try:
            with _progress.listening(listener):
                work(job)
            job.status, job.progress = "done", 1.0
        except Cancelled as e:
            job.status, job.error = "cancelled", str(e)
        except Exception as e:
            job.status, job.error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
        finally:
            job.finished = time.monotonic()

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> WebJob | None:
        self.expire()
        return self.jobs.get(job_id)

    def expire(self) -> None:
        now = time.monotonic()
        with self._cond:
            done = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished)
            old = [j for j in done if now - j.finished > self.ttl]
            kept = [j for j in done if j not in old]
            for j in old + kept[:max(0, len(kept) - self.max_finished)]:
                self.jobs.pop(j.id, None)

    def shutdown(self) -> None:
        for j in list(self.jobs.values()):
            j.cancel.set()
        with self._cond:
            self._stop = True
            for _, fut in self._quick:
                fut.cancel()
            self._cond.notify_all()
