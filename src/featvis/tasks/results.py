"""The results format of a featvis run, schema 1: written here, read here (the report, `featvis report`, resume).

A run folder holds:

- `manifest.json` — `{"schema": 1, "task", "params", "params_hash", "seed", "model": {"id", "weights_sha256",
  "source", ...}, "inputs": {...}, "executor", "versions", "argv", "started", "finished", "status":
  "running" | "done" | "interrupted" | "failed", "timings_s", "workers": {node: items}}`.
- `records/<batch>.json` — one file per finished batch, written atomically when its items' files are in place:
  `{"schema": 1, "items": [record, ...], "errors": [{"key", "input", "error"}], "worker": {"node", "pid"}}`.
  An item is done when its record is in some batch file; an item with an error is retried by the next run.
- `results.json` — written at the end: `{"schema": 1, "task", "model", "summary", "items": [record, ...],
  "failed": [{"key", "input", "error"}], "artifacts": [run-level files]}`.
- the task's files, named in the records (always relative to the run folder).

Every record has `key` (file-name safe, unique), `input` (the image path or the unit), `label` (the true class or
null), `seed` (the item's own seed) and the task's fields. A reader refuses a schema newer than it knows.
See docs/results-format.md for each task's fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featvis._io import atomic_write_json
from featvis._json import _short, load_checked
from featvis.errors import FeatvisError

SCHEMA = 1
MANIFEST = "manifest.json"
RESULTS = "results.json"
RECORDS = "records"
LOCK = ".featvis.lock"


def batch_id(keys: list[str]) -> str:
    return hashlib.sha1("\0".join(keys).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def write_batch(out: Path, keys: list[str], records: list[dict], errors: list[dict], worker: dict,
                files: list[str] | None = None) -> Path:
    """Record a finished batch (after its files are written; `files`: their run-relative paths)."""
    return atomic_write_json(out / RECORDS / f"{batch_id(keys)}.json",
                             {"schema": SCHEMA, "items": records, "errors": errors, "worker": worker,
                              "files": list(files or [])})


class Damaged(FeatvisError):
    """A file that a finished item wrote cannot be read back (missing, truncated, replaced): the runner forgets the
    batch that names it and redoes it."""

    def __init__(self, rel: str, problem: str) -> None:
        super().__init__(f"{rel}: {problem}")
        self.rel, self.problem = rel, problem


def read_batches(out: Path, damaged: list[Path] | None = None
                 ) -> tuple[dict[str, dict], dict[str, dict], dict[str, int]]:
    """(records by key, latest errors by key for items not done, items per worker node) of the batch files.

    A batch file is written atomically, so one that cannot be read or has the wrong shape was damaged after the
    fact (or is not ours): it is skipped, its items are redone, and it is appended to `damaged` if given.
    """
    records: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    nodes: dict[str, int] = {}
    folder = out / RECORDS
    if not folder.is_dir():
        return records, errors, nodes
    for f in sorted(folder.glob("*.json")):
        data = _batch(f)
        if data is None:
            if damaged is not None:
                damaged.append(f)
            continue
        node = str((data.get("worker") or {}).get("node", "local"))
        for r in data["items"]:
            records[r["key"]] = r
            nodes[node] = nodes.get(node, 0) + 1
        for e in data["errors"]:
            errors[e["key"]] = e
    return records, {k: e for k, e in errors.items() if k not in records}, nodes


def _batch(path: Path) -> dict[str, Any] | None:
    """A batch file's contents if it has the shape `write_batch` gives it, else None (a newer schema is an error:
    upgrading featvis reads it, redoing its items would not)."""
    try:
        data = load_checked(path)
    except FeatvisError:  # not UTF-8, not JSON, not an object, huge integers, deep nesting, a bad schema value
        return None
    _check_schema(data, path)
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) \
            or not isinstance(data.get("errors", []), list) or not isinstance(data.get("worker") or {}, dict):
        return None
    entries = data["items"] + data.get("errors", [])
    if not all(isinstance(r, dict) and isinstance(r.get("key"), str) and r["key"] for r in entries):
        return None
    return data | {"errors": data.get("errors", [])}


def written(out: Path) -> list[Path]:
    """Every file a run in `out` wrote, as far as its records and results say: the batches' files, any file a
    record names, the results' run-level artifacts, the records and results themselves (for `--overwrite`)."""
    run = Run(out, {})
    names: set[str] = set()
    folder = out / RECORDS
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _batch(f)
        if data is not None:
            names.update(n for n in data.get("files") or [] if isinstance(n, str))
            names.update(_strings(data["items"]))
    with contextlib.suppress(OSError, ValueError, RecursionError):
        results = json.loads((out / RESULTS).read_text("utf-8"))
        if isinstance(results, dict) and isinstance(results.get("artifacts"), list):
            names.update(a for a in results["artifacts"] if isinstance(a, str))
    found = []
    for name in sorted(names):
        try:
            path = run.file(name)
        except FeatvisError:
            continue
        if path.is_file():
            found.append(path)
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def forget(out: Path, rel: str) -> list[str]:
    """Delete the batch files whose records name the file `rel` (its items are then redone); their keys."""
    keys: list[str] = []
    folder = out / RECORDS
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _batch(f)
        if data is not None and any(_names(r, rel) for r in data["items"]):
            keys += [r["key"] for r in data["items"]]
            f.unlink(missing_ok=True)
    return keys


def _names(value: Any, rel: str) -> bool:
    return any(s == rel for s in _strings(value))


def write_results(out: Path, task: str, model: str | None, summary: dict, items: list[dict], failed: list[dict],
                  artifacts: list[str]) -> Path:
    return atomic_write_json(out / RESULTS, {"schema": SCHEMA, "task": task, "model": model, "summary": summary,
                                             "items": items, "failed": failed, "artifacts": artifacts})


def _check_schema(data: Any, path: Path) -> None:
    schema = data.get("schema") if isinstance(data, dict) else None
    if isinstance(data, dict) and "schema" in data and (type(schema) is not int or schema < 1):
        raise FeatvisError(f"{str(path)!r}: schema must be a positive integer, got {_short(schema)}; rerun the "
                           "command to rewrite it")
    if isinstance(schema, int) and schema > SCHEMA:
        raise FeatvisError(f"{str(path)!r} was written by a newer featvis (results schema {schema}; this one reads "
                           f"up to {SCHEMA}); upgrade featvis to read it")


@dataclass
class Run:
    """A finished (or partial) run read back from its folder."""

    folder: Path
    manifest: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # run-level files (grid.png, curve.png, ...)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def params(self) -> dict[str, Any]:
        p = self.manifest.get("params")
        return p if isinstance(p, dict) else {}

    @property
    def model_id(self) -> str:
        m = self.manifest.get("model")
        return str(m.get("id", "?")) if isinstance(m, dict) else "?"

    def file(self, rel: str) -> Path:
        """A file the run names, confined to the run folder (a name that leaves it is refused)."""
        if not isinstance(rel, str) or not rel or "\0" in rel:
            raise FeatvisError(f"run {str(self.folder)!r} names an invalid file {_short(rel)}")
        try:
            root = self.folder.resolve()
            path = (root / rel).resolve()
        except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop (Python 3.11)
            raise FeatvisError(f"run {str(self.folder)!r} names a file that cannot be looked up ({_short(rel)}: "
                               f"{e})") from None
        if os.path.isabs(rel) or root not in path.parents:
            raise FeatvisError(f"run {str(self.folder)!r} names a file outside its folder ({_short(rel)}); "
                               "refusing it")
        return path


NUMERICS_COMPARED = ("threads per worker", "cpu_capability", "cpu", "fast_path", "float32_matmul_precision")


def numerics_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    """What a run's floats depend on, as text per `NUMERICS_COMPARED` (threads per worker from each worker's own
    report where there is one: a Ray run at 1 thread per worker is not a local run at 2)."""
    num = manifest.get("numerics")
    if not isinstance(num, dict):
        return {}
    workers = [w for w in num.get("workers") or [] if isinstance(w, dict)]
    threads = sorted({str(w.get("threads")) for w in workers}) or [str(num.get("threads"))]
    caps = sorted({str(w.get("cpu_capability")) for w in workers if w.get("cpu_capability")}) or \
        [str(num.get("cpu_capability"))]
    fast = num.get("fast_path")
    return {"threads per worker": ",".join(threads), "cpu_capability": ",".join(caps), "cpu": str(num.get("cpu")),
            "fast_path": fast if isinstance(fast, str) else json.dumps(fast, sort_keys=True),
            "float32_matmul_precision": str(num.get("float32_matmul_precision"))}


def numerics_differences(runs: list[Run]) -> list[str]:
    """One line per numerics setting in which the runs differ (empty when they agree, or record none): two runs
    are byte-identical only at equal settings, so a comparison across them is within float tolerance only."""
    seen = [(r, numerics_of(r.manifest)) for r in runs]
    seen = [(r, n) for r, n in seen if n]
    lines = []
    for key in NUMERICS_COMPARED:
        values: dict[str, list[str]] = {}
        for run, n in seen:
            values.setdefault(n.get(key, "?"), []).append(Path(run.folder).name)
        if len(values) > 1:
            parts = "; ".join(f"{v} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
                              for v, names in values.items())
            lines.append(f"{key} differs: {parts}")
    return lines


def read_run(folder: str | os.PathLike) -> Run:
    """Read a run folder's manifest and results; a newer schema or a broken file is a one-line error."""
    d = Path(folder)
    manifest_path = d / MANIFEST
    if not manifest_path.is_file():
        raise FeatvisError(f"{str(d)!r} is not a featvis run folder (no {MANIFEST})")
    manifest = _load(manifest_path)
    _check_schema(manifest, manifest_path)
    if "schema" not in manifest or "task" not in manifest:
        raise FeatvisError(f"{str(manifest_path)!r} is from an older featvis (no results schema); rerun the command "
                           "with this version to make a report from it")
    _inside(manifest_path, d)
    results_path = d / RESULTS
    if not results_path.is_file():
        status = manifest.get("status", "unknown")
        raise FeatvisError(f"run {str(d)!r} has no {RESULTS} (status: {status}); rerun the same command to finish it")
    _inside(results_path, d)
    results = _load(results_path)
    _check_schema(results, results_path)
    for name, kind in (("summary", dict), ("items", list), ("failed", list), ("artifacts", list)):
        if not isinstance(results.get(name, kind()), kind):
            raise FeatvisError(f"{str(results_path)!r} is malformed ({name!r} is not a {kind.__name__}); rerun the "
                               "command to rewrite it")
    items = [r for r in results.get("items", []) if isinstance(r, dict)]
    artifacts = [a for a in results.get("artifacts", []) if isinstance(a, str)]
    return Run(d, manifest, results.get("summary", {}), items, results.get("failed", []), artifacts)


def _load(path: Path) -> dict:
    """A run's JSON file, read as one from anyone (`featvis._json.load_checked`: huge integers, deep nesting, a
    schema that is no positive integer, bad UTF-8 are each one line)."""
    return load_checked(path)


def _inside(path: Path, folder: Path) -> None:
    """Refuse a manifest or results file reached through a link that leaves its run folder."""
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python 3.11)
        raise FeatvisError(f"cannot read {str(path)!r}: {e}; rerun the command to rewrite it") from None
    if root not in real.parents:
        raise FeatvisError(f"{str(path)!r} is a link to {str(real)!r}, outside its run folder; refusing it")
