"""`evaluate`: score attribution methods by every metric over images (a batch in memory, or files), against a random
map; always one path, the evaluate task through the runner (a tensor batch runs from memory into a temporary run
folder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featvis._types import Result
from featvis.tasks.evaluate import EvaluateTask


@dataclass(frozen=True, repr=False)
class EvaluationResult(Result):
    """What `evaluate` measured: the leaderboard (`summary["leaderboard"]`), one record per image, and the run folder
    when the inputs were files. Shows its deletion/insertion curves in Jupyter."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    folder: Any = None

    def mean(self, method: str, metric: str) -> float:
        return float(self.summary["table"][method][metric]["mean"])

    def beats_random(self, method: str, metric: str) -> bool | None:
        return self.summary["table"][method][metric]["beats_random"]


def evaluate(clf, inputs: Any, *, methods: tuple[str, ...] | str = "all", metrics: tuple[str, ...] | str = "default",
             target: Any = None, out: str | os.PathLike | None = None, executor: Any = "local",
             batch_size: int | None = None, seed: int = 0,
             options: Mapping[str, Any] | None = None) -> EvaluationResult:
    """Score attribution methods by faithfulness metrics over images, against a random map (see `featvis evaluate`).

    Args:
        inputs: a batch [B, 3, H, W], or files/folders/globs/lists/a Dataset: either way a run of the evaluate task
            (resumable in `out`, on any executor; a batch is one batch of the run, so expected-gradients' default
            references are its other images).
        methods: method names or "all" (every method that applies to the model).
        metrics: metric names, "default" or "all" (adds the expensive randomization check).
        target: None (the predicted classes), "true" (dataset labels), or a class.
        out: the run folder (default: a temporary folder, removed after).
        options: `option`, `method.option` or `group.option` values (see `featvis evaluate --help`).

    Example:
        >>> res = fv.evaluate(clf, x, methods=("gradient", "gradcam", "rise"), metrics=("deletion", "insertion"))
        >>> res.mean("gradcam", "insertion"), res.beats_random("gradcam", "insertion")
    """
    import tempfile

    import torch

    from featvis.data import Dataset
    from featvis.tasks.runner import run_task

    task = EvaluateTask(methods=methods, metrics=metrics, target=target, options=dict(options or {}), examples=0)
    if isinstance(inputs, torch.Tensor):  # from memory, one batch (references are the batch's other images)
        inputs = Dataset.from_tensors(inputs)
        batch_size = batch_size or len(inputs)
    with tempfile.TemporaryDirectory(prefix="featvis-evaluate-") as tmp:
        run = run_task(task, inputs, out or tmp, clf=clf, executor=executor, batch_size=batch_size, seed=seed)
        return EvaluationResult(run.summary, run.items, run.folder if out else None)
