"""Where a task's batches run. The runner hands an executor batches of items; the executor loads their images,
runs the task, writes each item's files atomically into the run folder and returns the records. It never writes
the records or the manifest: the runner (the driver) does, so a batch counts as done only when all its files are.

Executors are registered by name (`@EXECUTORS.register("local")` on the class; its constructor's keyword
parameters are its options) and follow the `Executor` protocol. `LocalExecutor` (the default) runs in this process
and decodes the next batch's images in a thread while the current one computes; `featvis.tasks.ray_executor`
registers "ray". A new executor is one file: a class with `describe`, `map` and `close`, registered.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

import torch

from featvis import _progress
from featvis._io import atomic_write_bytes, clean_temporaries_of
from featvis._registry import Registry
from featvis.data import Item, shown
from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, Task

StageListener = Callable[[str, float, float, dict], None]


@runtime_checkable
class Executor(Protocol):
    """What the runner needs of an executor.

    `forwards_stages`: whether `on_stage` hears the progress inside a batch (stage events); an executor whose
    workers run elsewhere says False (Ray), and the runner's progress then moves batch by batch.
    """

    name: str
    forwards_stages: bool

    def describe(self) -> dict[str, Any]:
        """What the manifest records about it (name, threads, workers, nodes...)."""
        ...

    def map(self, task: Task, clf, out: Path, batches: Iterable[list[Item]],
            on_stage: StageListener | None = None) -> Iterator[BatchResult]:
        """Run every batch, yielding each one's result as it finishes (in any order)."""
        ...

    def close(self) -> None:
        """Release workers; called once, also after an error."""
        ...


EXECUTORS: Registry[type] = Registry("executor")


@dataclass
class BatchResult:
    """A processed batch: the records of the items that finished and the errors of those that did not."""

    keys: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    worker: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # what the batch wrote (run-relative), so --overwrite removes it


def worker_info() -> dict[str, Any]:
    """Who ran a batch, and the numerics its floats depend on (torch threads, the CPU kernel set)."""
    info: dict[str, Any] = {"node": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads()}
    with contextlib.suppress(AttributeError, RuntimeError):
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def load_items(items: list[Item], clf) -> tuple[list[Item], torch.Tensor | None, list[dict[str, Any]]]:
    """Decode the items' images the model's way; a file that cannot be read becomes an error record."""
    from featvis.images import load_image

    good, tensors, errors = [], [], []
    for it in items:
        if it.image is not None:  # in memory (Dataset.from_tensors): moved to the model's device, not re-read
            tensors.append(it.image.to(clf.device))
            good.append(it)
            continue
        try:
            tensors.append(load_image(it.path, clf))
            good.append(it)
        except FeatvisError as e:
            errors.append({"key": it.key, "input": shown(it.path or ""), "name": it.name, "error": str(e)})
    return good, (torch.cat(tensors) if tensors else None), errors


def _safe_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"task artifact path {rel!r} must be relative and stay inside the run folder")
    return str(p)


def execute(task: Task, clf, items: list[Item], out: Path, loaded=None,
            on_stage: StageListener | None = None) -> BatchResult:
    """Run one batch: load (unless `loaded` is given), compute, write the files; returns records and errors."""
    t0 = time.perf_counter()
    result = BatchResult([it.key for it in items], worker=worker_info())
    if task.kind == "images":
        good, images, errors = loaded if loaded is not None else load_items(items, clf)
        result.errors += errors
    else:
        good, images = items, None
    t1 = time.perf_counter()
    if good:
        with _progress.listening(on_stage):
            try:
                outputs = task.run(clf, Batch(good, images))
            except FeatvisError as e:  # bad input for this batch: recorded, the rest of the run goes on
                result.errors += [{"key": it.key, "input": shown(it.path) if it.path is not None else it.key,
                                   "name": it.name, "error": str(e)} for it in good]
                outputs = []
        t2 = time.perf_counter()
        for it, o in zip(good, outputs, strict=False):
            for rel, data in o.artifacts.items():
                target = out / _safe_rel(rel)
                clean_temporaries_of(target)  # a killed writer's partial file (this batch is being redone)
                atomic_write_bytes(target, data)
                result.files.append(_safe_rel(rel))
            base = {"key": it.key, "input": shown(it.path) if it.path is not None else it.value,
                    "label": it.label, "seed": it.seed}
            if it.path is not None:
                base["name"] = it.name  # the path as the user knows it (relative to the input root)
            result.records.append(base | o.record)
    else:
        t2 = t1
    result.seconds = {"load": t1 - t0, "run": t2 - t1, "write": time.perf_counter() - t2}
    return result


@EXECUTORS.register("local")
class LocalExecutor:
    """Run batches in this process, one at a time, decoding the next batch's images while the current one runs."""

    name = "local"
    forwards_stages = True

    def __init__(self, prefetch: bool = True) -> None:
        self.prefetch = prefetch

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threads": torch.get_num_threads(), "prefetch": self.prefetch}

    def map(self, task: Task, clf, out: Path, batches: Iterable[list[Item]],
            on_stage: StageListener | None = None) -> Iterator[BatchResult]:
        batches = list(batches)
        if not self.prefetch or task.kind != "images" or len(batches) < 2:
            for items in batches:
                yield execute(task, clf, items, out, on_stage=on_stage)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featvis-decode") as pool:
            nxt = pool.submit(load_items, batches[0], clf)
            for i, items in enumerate(batches):
                loaded = nxt.result()
                if i + 1 < len(batches):
                    nxt = pool.submit(load_items, batches[i + 1], clf)
                yield execute(task, clf, items, out, loaded=loaded, on_stage=on_stage)

    def close(self) -> None:
        pass


def executor_options(name: str) -> list[str]:
    """The options an executor takes: its constructor's keyword parameters."""
    cls = EXECUTORS.get(name)
    return [p.name for p in inspect.signature(cls).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def make_executor(name: str | Any = "local", **options: Any) -> Executor:
    """A registered executor by name with its options, or an executor object as is (checked against the
    protocol)."""
    if not isinstance(name, str):
        if not isinstance(name, Executor):
            raise FeatvisError(f"{type(name).__name__} is not an executor (it needs name, forwards_stages, describe, "
                               "map and close)")
        return name
    key = EXECUTORS.canonical(name)
    takes = executor_options(key)
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise FeatvisError(f"the {key} executor takes {', '.join(takes) or 'no options'}, not "
                           f"{', '.join(unknown)}")
    return EXECUTORS.get(key)(**options)
