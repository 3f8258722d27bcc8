"""A bounded job queue for the web server: one worker thread, a fixed number of waiting jobs, time limits,
cancellation, progress events and results that expire. No algorithm lives here."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Cancelled(Exception):
    """Raised inside a job's progress callback when the job was cancelled or ran out of time."""


class QueueFull(Exception):
    pass


@dataclass
class Job:
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

    def report(self, fraction: float, **info: Any) -> None:
        """Called by the work function: records progress; raises Cancelled when asked to stop."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled(f"time limit reached after {fraction:.0%}")
        self.progress = max(0.0, min(1.0, fraction))
        self.events.append({"progress": round(self.progress, 4), **info})

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "progress": self.progress,
                "result": self.result, "error": self.error, "images": sorted(self.images)}


class JobQueue:
    """At most `workers` jobs run and `capacity` wait; finished jobs are forgotten after `ttl` seconds."""

    def __init__(self, capacity: int = 4, timeout: float = 300.0, ttl: float = 900.0, workers: int = 1) -> None:
        self.capacity, self.timeout, self.ttl = capacity, timeout, ttl
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featvis-job")
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def submit(self, kind: str, work: Callable[[Job], None]) -> Job:
        self.expire()
        with self.lock:
            waiting = sum(j.status in ("queued", "running") for j in self.jobs.values())
            if waiting >= self.capacity:
                raise QueueFull
            job = Job(uuid.uuid4().hex, kind)
            self.jobs[job.id] = job
        self.pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        if job.cancel.is_set():
            job.status, job.finished = "cancelled", time.monotonic()
            return
        job.status = "running"
        job.deadline = time.monotonic() + self.timeout
        try:
            work(job)
            job.status, job.progress = "done", 1.0
        except Cancelled as e:
            job.status, job.error = "cancelled", str(e)
        except Exception as e:
            job.status, job.error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
        finally:
            job.finished = time.monotonic()

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self.jobs.get(job_id)

    def expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            for key in [k for k, j in self.jobs.items() if j.finished is not None and now - j.finished > self.ttl]:
                del self.jobs[key]

    def shutdown(self) -> None:
        for j in self.jobs.values():
            j.cancel.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
