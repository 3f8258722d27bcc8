"""Runs: atomic writes, the manifest every run leaves beside its results, and resumable batch jobs.

Nothing is lost: each result is written to a temporary file and renamed into place, so a crash leaves either
the old file or the new one. A batch job records each finished item; rerunning the same command with the same
output folder skips what is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from featvis.errors import FeatvisError

MANIFEST = "manifest.json"
ITEMS_DIR = "items"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return str(obj)


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("featvis", "torch", "numpy", "pillow", "efficientnet-lite-pytorch", "torchvision", "timm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=_jsonable).encode()).hexdigest()[:16]


def model_info(clf) -> dict[str, Any]:
    return {"name": clf.name, "id": clf.id, "weights_sha256": clf.weights_hash, "input_size": clf.input_size,
            "mean": clf.mean.flatten().tolist(), "std": clf.std.flatten().tolist(), "classes": len(clf.labels)}


def item_key(path: str | os.PathLike) -> str:
    """A file-name-safe key for an input: its stem plus a short hash of its absolute path (no collisions)."""
    p = Path(path)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.stem)[:60] or "image"
    return f"{stem}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"


@dataclass
class Job:
    """A resumable run writing into `out_dir`: a manifest, one record per finished item, timings.

    Opening a folder that already holds a run of the same command with the same parameters resumes it;
    different parameters are refused (results would mix).

    Example:
        >>> job = Job.open("out/", "classify", {"model": "efficientnet-lite0", "k": 5}, clf=clf)
        >>> for key in job.pending(keys): ...; job.done(key, record)
        >>> job.finish()
    """

    out_dir: Path
    command: str
    params: dict[str, Any]
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    skipped: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, out_dir: str | os.PathLike, command: str, params: dict[str, Any], *, clf=None,
             seed: int | None = None, overwrite: bool = False) -> Job:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FeatvisError(f"output {str(out)!r} exists and is not a folder; choose another -o")
        out.mkdir(parents=True, exist_ok=True)
        phash = params_hash({"command": command, **params, "model": clf.id if clf is not None else None})
        old = out / MANIFEST
        if old.exists() and not overwrite:
            try:
                prev = json.loads(old.read_text("utf-8"))
            except (json.JSONDecodeError, OSError):
                prev = {}
            if prev.get("params_hash") not in (None, phash):
                raise FeatvisError(
                    f"{str(out)!r} holds a {prev.get('command', 'different')!r} run with other parameters; use a "
                    "new -o folder, or --overwrite to start over"
                )
        if overwrite and (out / ITEMS_DIR).exists():
            for f in (out / ITEMS_DIR).glob("*.json"):
                f.unlink()
        manifest = {
            "command": command,
            "params": params,
            "params_hash": phash,
            "seed": seed,
            "model": model_info(clf) if clf is not None else None,
            "versions": versions(),
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
        }
        job = cls(out, command, params, manifest)
        job.write_manifest()
        return job

    def _item_path(self, key: str) -> Path:
        return self.out_dir / ITEMS_DIR / f"{key}.json"

    def is_done(self, key: str) -> bool:
        return self._item_path(key).exists()

    def pending(self, keys: list[str]) -> list[str]:
        """The keys not finished yet (counts the rest as skipped)."""
        todo = [k for k in keys if not self.is_done(k)]
        self.skipped += len(keys) - len(todo)
        return todo

    def done(self, key: str, record: dict[str, Any]) -> None:
        """Mark one item finished; call after its output files are written."""
        atomic_write_json(self._item_path(key), record)

    def record(self, key: str) -> dict[str, Any]:
        return json.loads(self._item_path(key).read_text("utf-8"))

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def write_manifest(self, **extra: Any) -> Path:
        self.manifest.update(extra)
        self.manifest["timings_s"] = {k: round(v, 4) for k, v in self.timings.items()}
        return atomic_write_json(self.out_dir / MANIFEST, self.manifest)

    def finish(self, **extra: Any) -> Path:
        self.timings["total"] = time.perf_counter() - self._t0
        return self.write_manifest(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   skipped=self.skipped, **extra)
