"""The runner: one place that turns "this task over these inputs" into a run folder.

It owns what every front end needs and no algorithm should do: validating before writing, the manifest, per-item
seeds (from each item's identity), batching, atomic writes (through the executor), resume (finished items are
skipped; other parameters are refused; `overwrite` starts over), per-item errors (recorded, the rest goes on), a lock
against two runs in one folder, and progress events for the CLI (rich), the web API (SSE) and notebooks.

Example:
    >>> from featvis.tasks import SaliencyTask, run_task
    >>> run = run_task(SaliencyTask(methods=("gradient", "gradcam")), ["photos/"], "out/", clf=clf)
    >>> run.summary
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featvis._io import atomic_write_bytes, atomic_write_json, clean_temporaries, dumps, numerics, versions
from featvis.data import Dataset, Item
from featvis.errors import FeatvisError, FeatvisWarning
from featvis.tasks import results as fmt
from featvis.tasks.base import Task
from featvis.tasks.executors import make_executor

if TYPE_CHECKING:
    from featvis.models.classifier import Classifier

MAX_REDO = 2  # batches redone because a finished item's file was damaged, before the run gives up


@dataclass(frozen=True)
class Event:
    """A progress event. kind: "start" (total items, already done), "stage" (progress inside a batch), "batch"
    (items done so far), "error" (an item failed: message), "done" (the run finished)."""

    kind: str
    done: int = 0
    total: int = 0
    skipped: int = 0
    stage: str = ""
    stage_done: float = 0.0
    stage_total: float = 0.0
    message: str = ""
    batch: int = 0  # "stage": items in the batch being computed (a view can place the stage inside it)


Progress = Callable[[Event], None]


def model_info(clf) -> dict[str, Any]:
    source = getattr(clf, "source", None)
    return {"name": clf.name, "id": clf.id, "weights_sha256": clf.weights_hash, "input_size": clf.input_size,
            "mean": clf.mean.flatten().tolist(), "std": clf.std.flatten().tolist(), "classes": len(clf.labels),
            "device": str(clf.device), "source": source.to_dict() if hasattr(source, "to_dict") else None}


def params_hash(task: Task, clf, seed: int) -> str:
    """What a resumed run must share with the run it resumes: the task and parameters, the model, the seed, and the
    numerics that change results beyond float tolerance — the fast path's options (bf16 autocast moves maps by tens
    of percent) and the images per model call. At their defaults they are left out, so run folders made before
    they were recorded still resume."""
    key: dict[str, Any] = {"task": task.name, "params": task.param_dict(), "model": clf.id, "seed": seed}
    defaults = _default_numerics()
    chosen = {k: v for k, v in run_numerics(clf).items() if v != defaults.get(k)}
    if chosen:
        key["numerics"] = chosen
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_numerics(clf) -> dict[str, Any]:
    """The settings that change a run's numbers: the fast path's options and the cap on images per model call."""
    from featvis.attribution._base import chunk_cap

    return {"fast_path": fast_path(clf), "max_chunk": chunk_cap()}


def _default_numerics() -> dict[str, Any]:
    from dataclasses import asdict

    from featvis.attribution._base import MAX_CHUNK
    from featvis.models.fast import FastOptions

    return {"fast_path": asdict(FastOptions()), "max_chunk": MAX_CHUNK}


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder: a second run on the same folder fails at once instead of doing
    all the work twice. The lock file is removed when the run ends, so a finished run folder holds only results."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (said in the README)
        yield
        return
    path = out / fmt.LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FeatvisError(f"another featvis run (pid {other}) is writing to {str(out)!r}; wait for it to "
                               "finish or choose another -o folder") from None
        # The run that held the lock may have removed its file between our open and our flock: then we hold a lock
        # on a file nobody else can see, and must take the one at `path` instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a run that opened it now sees another inode and retries
        os.close(fd)


def _inputs(task: Task, clf, inputs, *, imagefolder: bool) -> Dataset:
    if task.kind == "units":
        if inputs is not None:
            raise FeatvisError(f"{task.name} makes its own items ({task.title}); it takes no input images")
        return task.units(clf)
    if inputs is None:
        raise FeatvisError(f"{task.name} needs input images: files, folders, globs or a .txt/.csv list")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    classes = task.kind == "classes"
    data = inputs if isinstance(inputs, Dataset) else Dataset.from_inputs(
        list(inputs), labels=clf.labels, imagefolder=imagefolder or classes, needs=task.name if classes else None)
    return task.units_from(data, clf) if task.kind == "classes" else data


def _chunks(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def run_task(task: Task, inputs: Dataset | Sequence[str | os.PathLike] | str | os.PathLike | None,
             out: str | os.PathLike, *, clf: Classifier, executor: Any = "local", batch_size: int | None = None,
             seed: int = 0, overwrite: bool = False, imagefolder: bool = False, progress: Progress | None = None,
             argv: Sequence[str] | None = None) -> fmt.Run:
    """Run `task` over `inputs` into the folder `out`, resuming what an earlier run of the same task left there.

    Args:
        task: a task with its parameters (e.g. `SaliencyTask(methods=("gradient",))`).
        inputs: a `Dataset`, or files/folders/globs/lists; None for tasks that make their own items (classvis).
        out: the run folder (created; a rerun resumes it).
        clf: the classifier (the Ray executor rebuilds it on each worker from `clf.source`).
        executor: "local" (default), "ray", or an executor object.
        batch_size: items per batch (default: the task's).
        seed: the run's seed; each item's seed is derived from it and the item's key.
        overwrite: start over (the folder's earlier run and its files are removed), whatever its parameters.
        imagefolder: read input folders as ImageFolder layouts (sub-folder = true class).
        progress: called with each `Event`.

    Returns:
        The finished run, read back from its folder (`featvis.tasks.results.Run`).
    """
    emit = progress or (lambda _e: None)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise FeatvisError(f"output {str(folder)!r} exists and is not a folder; choose another -o")
    # Validate everything before the first write: a refused command leaves nothing behind.
    task.prepare(clf)
    data = _inputs(task, clf, inputs, imagefolder=imagefolder).seeded(seed)
    if getattr(task, "needs_labels", lambda: False)():
        missing = sum(it.label is None for it in data)
        if missing:
            raise FeatvisError(f"target 'true' needs each image's true class, and {missing} of {len(data)} inputs have "
                               "none; use an ImageFolder layout (--imagefolder) or a CSV list with a label column")
    size = batch_size or task.default_batch
    if size < 1:
        raise FeatvisError(f"batch size must be at least 1, got {size}")
    ex = make_executor(executor)
    phash = params_hash(task, clf, seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from featvis._io import os_error

        raise os_error(e, folder) from None
    with folder_lock(folder):
        previous = _previous_manifest(folder)
        if previous is not None and overwrite:  # start over, also with the same parameters (new code, new data)
            _clear(folder)
        elif previous is not None and previous.get("params_hash") not in (None, phash):
            raise FeatvisError(f"{str(folder)!r} holds a {previous.get('task', 'different')!r} run with other "
                               "parameters; use a new -o folder, or --overwrite to start over")
        clean_temporaries(folder)
        manifest = {
            "schema": fmt.SCHEMA, "task": task.name, "params": task.param_dict(), "params_hash": phash,
            "seed": seed, "model": model_info(clf), "inputs": data.spec,
            "executor": ex.describe() | {"batch_size": size}, "versions": versions(),
            "numerics": numerics() | run_numerics(clf),
            "argv": list(argv if argv is not None else sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running",
        }
        atomic_write_json(folder / fmt.MANIFEST, manifest)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        status = "failed"
        redone = 0
        try:
            while True:
                skipped = _work(task, clf, data, folder, ex, size, manifest, timings, emit)
                try:
                    run = _finish(task, clf, data, folder, manifest, timings, t_start, skipped)
                    break
                except fmt.Damaged as e:  # a finished item's file is unreadable now: redo its batch, once
                    keys = fmt.forget(folder, e.rel)
                    if not keys or redone >= MAX_REDO:
                        raise FeatvisError(f"run {str(folder)!r}: {e}; rerun with --overwrite to start over") \
                            from None
                    redone += 1
                    warnings.warn(f"{e}; redoing the {len(keys)} item(s) of its batch", FeatvisWarning,
                                  stacklevel=2)
            status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            manifest["executor"] = ex.describe() | {"batch_size": size}
            ex.close()
            if status != "done":
                manifest.update(status=status, timings_s=_rounded(timings, t_start))
                with contextlib.suppress(FeatvisError, OSError):
                    atomic_write_json(folder / fmt.MANIFEST, manifest)
    emit(Event("done", done=len(run.items), total=len(data), message=str(folder)))
    return run


def _work(task: Task, clf, data: Dataset, folder: Path, ex, size: int, manifest: dict, timings: dict[str, float],
          emit: Progress) -> int:
    """Run every batch that holds an item not done yet; returns how many were done before."""
    damaged: list[Path] = []
    done, _, _ = fmt.read_batches(folder, damaged)
    if damaged:
        names = ", ".join(f"'{p.name}'" for p in damaged[:3]) + (" …" if len(damaged) > 3 else "")
        warnings.warn(f"{len(damaged)} record file(s) in {str(folder / fmt.RECORDS)!r} cannot be read ({names}); "
                      "their items are redone", FeatvisWarning, stacklevel=3)
    keys = [it.key for it in data]
    skipped = sum(k in done for k in keys)
    emit(Event("start", done=skipped, total=len(keys), skipped=skipped))
    # Batches are fixed chunks of the whole item list, so a resumed run redoes exactly the batches an interrupted
    # one left (same batch-mates, same results), and the Ray executor runs the same batches.
    batches = [[it for it in chunk if it.key not in done] for chunk in _chunks(data.items, size)]
    batches = [b for b in batches if b]
    count = skipped
    finished = 0  # batches back: the local executor computes batches[finished] while it reports stages

    def on_stage(stage: str, d: float, t: float, extra: dict | None = None) -> None:
        size = len(batches[finished]) if finished < len(batches) else 0
        emit(Event("stage", done=count, total=len(keys), stage=stage, stage_done=d, stage_total=t, batch=size))

    for res in ex.map(task, clf, folder, batches, on_stage=on_stage):
        finished += 1
        fmt.write_batch(folder, res.keys, res.records, res.errors, res.worker, res.files)
        _note_worker(manifest, res.worker)
        for k, v in res.seconds.items():
            timings[k] = timings.get(k, 0.0) + v
        count += len(res.records)
        for e in res.errors:
            emit(Event("error", done=count, total=len(keys), message=_error_line(e)))
        emit(Event("batch", done=count, total=len(keys)))
    # A worker killed while writing (Ray restarts it and redoes its batch under new temporary names) left its
    # temporary files; every writer is done now, so none of them is anyone's.
    clean_temporaries(folder)
    return skipped


def _read(folder: Path, manifest: dict) -> Callable[[str], bytes]:
    """`read(rel)`: the bytes of a file the run's records name; a missing one is `Damaged` (its batch is redone)."""
    run = fmt.Run(folder, manifest)

    def read(rel: str) -> bytes:
        try:
            return run.file(rel).read_bytes()
        except OSError as e:
            raise fmt.Damaged(rel, f"cannot be read ({e.strerror or type(e).__name__})") from None

    return read


def _finish(task: Task, clf, data: Dataset, folder: Path, manifest: dict, timings: dict[str, float],
            t_start: float, skipped: int) -> fmt.Run:
    records, errors, nodes = fmt.read_batches(folder)
    items = [records[it.key] for it in data if it.key in records]
    failed = [errors[it.key] for it in data if it.key in errors]
    info = {"model": clf.id, "labels": clf.labels, "task": task.name, "clf": clf, "seed": manifest.get("seed", 0),
            "read": _read(folder, manifest)}
    t0 = time.perf_counter()
    summary = task.summarize(items, info)
    artifacts = task.finalize(items, summary, info)
    for rel, blob in artifacts.items():
        atomic_write_bytes(folder / rel, blob)
    timings["summary"] = time.perf_counter() - t0
    fmt.write_results(folder, task.name, clf.id, summary, items, failed, sorted(artifacts))
    manifest.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    timings_s=_rounded(timings, t_start), workers=nodes,
                    counts={"items": len(data), "done": len(items), "failed": len(failed), "skipped": skipped})
    atomic_write_json(folder / fmt.MANIFEST, manifest)
    return fmt.Run(folder, manifest, summary, items, failed, sorted(artifacts))


def fast_path(clf) -> dict[str, Any] | str:
    """The fast-path options in force for `clf` ("off" when its own network runs): part of a run's numerics."""
    from dataclasses import asdict

    from featvis.models import fast

    opts = fast.options(clf) if hasattr(clf, "net") else None
    return "off" if opts is None else asdict(opts)


def _note_worker(manifest: dict, worker: dict) -> None:
    """Record each worker's threads and CPU kernels once: runs with other threads per worker can differ in the last
    bits (a ReLU6 boundary flips), so `featvis report` says when two runs differ in them."""
    threads = worker.get("threads")
    if threads is None:
        return
    seen = manifest["numerics"].setdefault("workers", [])
    entry = {"node": worker.get("node", "local"), "threads": threads, "cpu_capability": worker.get("cpu_capability")}
    if entry not in seen:
        seen.append(entry)


def _error_line(error: dict) -> str:
    """An item's error as one line: the error names its file already, or gets the item's name in front."""
    text, where = str(error.get("error", "")), str(error.get("input", ""))
    return text if where and where in text else f"{error.get('name') or where}: {text}"


def _rounded(timings: dict[str, float], t_start: float) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()} | {"total": round(time.perf_counter() - t_start, 4)}


def _previous_manifest(folder: Path) -> dict | None:
    path = folder / fmt.MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"params_hash": "unreadable", "task": "unreadable"}
    return data if isinstance(data, dict) else {"params_hash": "unreadable"}


def _clear(folder: Path) -> None:
    """Remove an earlier run: every file its records and results name (maps and figures of methods the new run may
    not compute would stay behind otherwise), then its records and results; folders it leaves empty go too."""
    root = folder.resolve()
    for path in fmt.written(folder):
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != root and root in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    for f in (folder / fmt.RECORDS).glob("*.json"):
        f.unlink()
    (folder / fmt.RESULTS).unlink(missing_ok=True)


__all__ = ["Event", "Progress", "dumps", "model_info", "run_task"]
