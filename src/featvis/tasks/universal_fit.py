"""`run_universal`: fit a universal perturbation on part of a data set and measure it on the rest, resumably.

1. The split: the images are ordered by a hash of (seed, identity) and the first `holdout` share is held out, so
   the split does not depend on the order the inputs are given in.
2. The fit (sequential: every batch updates the one perturbation) runs here, in the driver, streaming the training
   images batch by batch from their files. After every batch its state — v, the pass and the batch reached — is
   written atomically to RUN/fit/checkpoint.pt, so Ctrl-C and the same command again continue where it stopped
   and end with the very v an uninterrupted fit ends with. RUN/fit/fit.json holds the finished fit's numbers.
3. The evaluation (independent per held-out batch) is the universal task through the runner: resumable like every
   run, and on any executor (`executor="ray"` spreads the held-out batches; the fit stays in the driver).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from featvis._io import atomic_write_bytes, atomic_write_json
from featvis.data import Dataset, Item
from featvis.errors import FeatvisError
from featvis.tasks import results as fmt
from featvis.tasks.runner import Event, Progress, folder_lock, run_task
from featvis.tasks.universal import FIT, FIT_SUMMARY, UniversalTask

CHECKPOINT = f"{FIT}/checkpoint.pt"


def split(data: Dataset, holdout: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(training items, held-out items): the first round(holdout · N) items by hash of (seed, key) are held out
    (at least one when holdout > 0, and at least one image is left to fit on)."""
    items = sorted(data.items, key=lambda it: hashlib.sha256(f"{seed}:{it.key}".encode()).hexdigest())
    n = len(items)
    k = min(max(round(holdout * n), 1 if holdout > 0 else 0), n - 1)
    if n < 2 and holdout > 0:
        raise FeatvisError(f"{n} image is too few to hold any out; give more images or --holdout 0")
    held = {it.key for it in items[:k]}
    return [it for it in data.items if it.key not in held], [it for it in data.items if it.key in held]


class _Files(Sequence):
    """The training images as batches loaded when indexed: the fit's memory does not grow with the data set."""

    def __init__(self, items: list[Item], clf, size: int) -> None:
        self.items, self.clf, self.size = items, clf, size

    def __len__(self) -> int:
        return -(-len(self.items) // self.size)

    def __getitem__(self, i):  # type: ignore[override]
        from featvis.tasks.executors import load_items

        if not 0 <= i < len(self):
            raise IndexError(i)
        _, images, errors = load_items(self.items[i * self.size:(i + 1) * self.size], self.clf)
        if errors:
            raise FeatvisError(f"{errors[0]['error']} (a training image of the universal fit: remove it and rerun)")
        return images


def fit_key(task: UniversalTask, clf, seed: int, train: list[Item]) -> str:
    """What a checkpoint must share with the fit that resumes it: the fit's parameters, the model, the seed and
    the training images."""
    p = task.params
    key = {"method": p.method, "eps": p.eps, "norm": p.norm, "epochs": p.epochs, "target_rate": p.target_rate,
           "fit_batch": p.fit_batch, "step": p.step, "model": clf.id, "seed": seed, "train": [it.key for it in train]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fit(task: UniversalTask, clf, train: list[Item], folder: Path, *, seed: int, overwrite: bool,
        progress: Progress) -> dict[str, Any]:
    """The checkpointed fit (see the module docstring); returns the fit summary (also in RUN/fit/fit.json)."""
    from featvis.adversarial.universal import UniversalState, universal_steps

    p = task.params
    (folder / FIT).mkdir(parents=True, exist_ok=True)
    key = fit_key(task, clf, seed, train)
    with folder_lock(folder / FIT):
        if overwrite:
            for rel in (CHECKPOINT, FIT_SUMMARY):
                (folder / rel).unlink(missing_ok=True)
        saved = _load(folder / CHECKPOINT)
        if saved is not None and saved.get("key") != key:
            raise FeatvisError(f"{str(folder)!r} holds a universal fit with other parameters or images; use a new "
                               "-o folder, or --overwrite to start over")
        start = UniversalState.from_dict(saved["state"]) if saved is not None else None
        spent = float(saved.get("seconds", 0.0)) if saved is not None else 0.0
        batches = _Files(train, clf, p.fit_batch)
        t0 = time.perf_counter()
        state = start
        if start is None or not start.done:
            for state in universal_steps(clf, batches, eps=p.eps, norm=p.norm, method=p.method, epochs=p.epochs,
                                         target_rate=p.target_rate, step=p.step, seed=seed, start=start):
                seconds = spent + time.perf_counter() - t0
                _save(folder / CHECKPOINT, {"key": key, "state": state.to_dict(), "seconds": seconds})
                rate = f", training fooling rate {state.history[-1]:.0%} after the last" if state.history else ""
                progress(Event("stage", stage=f"fit pass {state.epoch + 1}/{p.epochs}{rate}",
                               stage_done=state.batch, stage_total=len(batches)))
        saved = _load(folder / CHECKPOINT)
        assert state is not None and saved is not None
        summary = {"images": len(train), "method": p.method, "eps": p.eps, "norm": p.norm,
                   "fooling_rate": state.history[-1] if state.history else 0.0, "history": list(state.history),
                   "passes": len(state.history), "reached_target": bool(state.history) and
                   state.history[-1] >= p.target_rate, "seconds": round(float(saved["seconds"]), 3)}
        atomic_write_json(folder / FIT_SUMMARY, summary)
    task.perturbation = state.perturbation.float()
    return summary


def run_universal(clf, inputs, out: str | os.PathLike, *, executor: Any = "local", batch_size: int | None = None,
                  seed: int = 0, overwrite: bool = False, progress: Progress | None = None,
                  argv: Sequence[str] | None = None, **params: Any) -> fmt.Run:
    """Fit a universal perturbation on the training share of `inputs` and measure it on the held-out share.

    Args:
        inputs: a `Dataset` or files/folders/globs (an ImageFolder's classes give the per-class table).
        out: the run folder; the same call again resumes the fit or the evaluation where it stopped.
        executor: where the held-out evaluation runs ("local", "ray"); the fit runs here.
        batch_size: held-out images per evaluation batch.
        params: `UniversalParams` fields (method, eps, norm, epochs, target_rate, holdout, fit_batch, step, panels).

    Returns:
        The evaluation run (`featvis.tasks.results.Run`): `.summary["fooling_rate"]` on the held-out images,
        `["random_fooling_rate"]` the baseline, `["fit"]` the fit's numbers; v is RUN/perturbation.npy.

    Example:
        >>> run = run_universal(clf, ["photos/"], "out/uap", eps=10 / 255, method="sgd")
        >>> run.summary["fooling_rate"], run.summary["random_fooling_rate"]
    """
    emit = progress or (lambda _e: None)
    task = UniversalTask(**params)
    folder = Path(out)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    data = inputs if isinstance(inputs, Dataset) else Dataset.from_inputs(list(inputs), labels=clf.labels)
    data = data.seeded(seed)
    train, held = split(data, task.params.holdout, seed)
    previous = folder / fmt.MANIFEST
    if previous.exists() and not overwrite:  # refuse before a long fit what the runner would refuse after it
        try:
            other = json.loads(previous.read_text("utf-8")).get("task")
        except (OSError, ValueError):
            other = "unreadable"
        if other != task.name:
            raise FeatvisError(f"{str(folder)!r} holds a {other!r} run; use a new -o folder, or --overwrite")
    fit(task, clf, train, folder, seed=seed, overwrite=overwrite, progress=emit)
    task.panel_keys = tuple(it.key for it in held[:task.params.panels])
    task.seed = seed
    evaluated = held or train  # --holdout 0: the training images are all there is to report on (said in the section)
    spec = {**data.spec, "universal_split": {"train": len(train), "held_out": len(held)}}
    return run_task(task, Dataset(tuple(evaluated), spec), folder, clf=clf, executor=executor, batch_size=batch_size,
                    seed=seed, overwrite=overwrite, progress=progress, argv=argv)


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged checkpoint of any kind: the fit starts over, saying so
        import warnings

        from featvis.errors import FeatvisWarning

        warnings.warn(f"{path} cannot be read ({type(e).__name__}); the universal fit starts over", FeatvisWarning,
                      stacklevel=3)
        return None
