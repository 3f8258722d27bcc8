"""Run a task's batches on a Ray cluster (the `[ray]` extra): `--executor ray`.

Each worker is a Ray actor that rebuilds the classifier once from the run's model source (a zoo name or a file,
checked against the driver's weights hash; the model is never pickled) and processes whole batches, writing each
item's files into the run folder with the same atomic writes as the local executor. The driver (the runner)
records which batches finished, the manifest and the progress. Fault tolerance is Ray's: an actor that dies is
restarted (`max_restarts`) and the batch it held is retried (`max_task_retries`); since a batch counts as done only
when the driver records it, and its files are written atomically, every item ends up done exactly once and no
partial file survives (the runner removes temporaries of killed writers when a run starts).

On a cluster the run folder must be a path every node can write (a shared file system).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from featvis.data import Item
from featvis.errors import FeatvisError
from featvis.tasks.base import Task
from featvis.tasks.executors import EXECUTORS, BatchResult, StageListener, execute

IN_FLIGHT_PER_WORKER = 2  # batches queued per actor: one running, one waiting, so no actor idles between batches
MAX_RESTARTS = 4


def _require_ray():
    try:
        import ray
    except ImportError:
        raise FeatvisError("the ray executor needs Ray; run: pip install 'featvis[ray]'") from None
    return ray


class _Worker:
    """The actor: one classifier, built once, then batch after batch."""

    def __init__(self, source: dict, weights_sha256: str, device: str, threads: int,
                 numerics: dict | None = None) -> None:
        import torch

        from featvis._alloc import tune_allocator
        from featvis.models import rebuild
        from featvis.models.fast import FastOptions

        tune_allocator()
        torch.set_num_threads(max(1, threads))
        self.clf = rebuild(source, device, expected_hash=weights_sha256)
        # The driver's numerics, not this node's environment: the run's parameters hash holds them
        numerics = numerics or {}
        fast = numerics.get("fast_path")
        if fast is not None:
            self.clf.fast = False if fast == "off" else FastOptions(**fast)
        if numerics.get("max_chunk") is not None:
            os.environ["FEATVIS_MAX_CHUNK"] = str(numerics["max_chunk"])

    def run(self, task: Task, items: list[Item], out: str) -> BatchResult:
        import ray

        result = execute(task, self.clf, items, Path(out))
        ctx = ray.get_runtime_context()
        result.worker |= {"node": ctx.get_node_id()[:12], "host": socket.gethostname(), "pid": os.getpid(),
                          "actor": ctx.get_actor_id()[:12] if ctx.get_actor_id() else None}
        return result

    def pid(self) -> int:
        return os.getpid()


@EXECUTORS.register("ray")
class RayExecutor:
    """Batches on Ray actors (stage events stay on the workers: the driver's progress moves batch by batch).

    Args:
        address: None starts a local Ray instance (with this machine's CPUs); "auto" joins the cluster this machine
            belongs to; "HOST:PORT" joins that cluster.
        workers: number of actors (default: available CPUs // cpus_per_worker, at least 1).
        cpus_per_worker: CPUs each actor reserves (also its torch threads).
        gpus_per_worker: GPUs each actor reserves (its model then runs on CUDA).
    """

    name = "ray"
    forwards_stages = False

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, max_restarts: int = MAX_RESTARTS) -> None:
        self.ray = _require_ray()
        if cpus_per_worker <= 0 and gpus_per_worker <= 0:
            raise FeatvisError("each Ray worker needs some CPU or GPU (--cpus-per-worker / --gpus-per-worker)")
        self.address, self.workers = address, workers
        self.cpus, self.gpus, self.max_restarts = cpus_per_worker, gpus_per_worker, max_restarts
        self.actors: list[Any] = []
        self._started = False

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "address": self.address, "workers": self.workers, "cpus_per_worker": self.cpus,
               "gpus_per_worker": self.gpus, "threads_per_worker": max(1, round(self.cpus))}
        if self.actors:
            out["nodes"] = self.nodes()
        return out

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise FeatvisError(f"cannot reach a Ray cluster at {self.address!r} ({str(e).splitlines()[0]}); start one "
                               "with `ray start --head` or leave --address out for a local instance") from None
        self._started = True

    def nodes(self) -> list[dict[str, Any]]:
        return [{"node": n["NodeID"][:12], "host": n.get("NodeManagerHostname"), "cpus": n["Resources"].get("CPU")}
                for n in self.ray.nodes() if n.get("Alive")]

    def start(self, clf) -> list[Any]:
        """Connect and create the actors (each rebuilds the classifier from its source)."""
        source = getattr(clf, "source", None)
        if source is None:
            raise FeatvisError("the ray executor rebuilds the model on each worker, but this classifier was made with "
                               "Classifier.wrap; save it (TorchScript or safetensors) and load it by path or name")
        self._connect()
        ray = self.ray
        total = ray.cluster_resources()
        n = self.workers
        if n is None:
            n = int(total.get("CPU", 1) // self.cpus) if self.cpus > 0 else int(total.get("GPU", 1) // self.gpus)
            n = max(1, n)
        if self.gpus > 0 and total.get("GPU", 0) < self.gpus:
            raise FeatvisError(f"the Ray cluster has {total.get('GPU', 0):g} GPUs; --gpus-per-worker {self.gpus:g} "
                               "cannot be scheduled")
        device = "cuda" if self.gpus > 0 else "cpu"
        actor = ray.remote(_Worker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=self.max_restarts,
                                            max_task_retries=self.max_restarts)
        threads = max(1, round(self.cpus))
        from featvis.tasks.runner import run_numerics

        numerics = run_numerics(clf)
        self.actors = [actor.remote(source.to_dict(), clf.weights_hash, device, threads, numerics) for _ in range(n)]
        self.workers = n
        return self.actors

    def map(self, task: Task, clf, out: Path, batches: Iterable[list[Item]],
            on_stage: StageListener | None = None) -> Iterator[BatchResult]:
        ray = self.ray
        if not self.actors:
            self.start(clf)
        todo = list(batches)
        pending: dict[Any, int] = {}  # object ref -> actor index
        load = [0] * len(self.actors)
        folder = str(Path(out).resolve())
        nxt = 0
        try:
            while nxt < len(todo) or pending:
                while nxt < len(todo) and min(load) < IN_FLIGHT_PER_WORKER:
                    i = load.index(min(load))
                    pending[self.actors[i].run.remote(task, todo[nxt], folder)] = i
                    load[i] += 1
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                load[i] -= 1
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
                    if isinstance(cause, FeatvisError):
                        raise cause from None
                    raise
                except ray.exceptions.RayActorError as e:  # restarts used up, or the worker could not start at all
                    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                    raise FeatvisError(
                        f"a Ray worker died and was not restarted ({first[:200]}); finished batches are kept: "
                        f"rerun the command to resume (worker logs: `ray logs` on the cluster)") from None
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # an actor that is already gone
                self.ray.kill(a)
        self.actors = []
        if self._started:
            self.ray.shutdown()
            self._started = False
