"""`concepts`: what a model learned of each class of a labelled data set, in CRAFT concepts, as a browsable page
(the concepts task through the runner, then `featvis.report.lens`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featvis.tasks.concepts import ConceptsTask
from featvis.tasks.runner import Event, run_task


def concepts(clf, inputs, out: str | os.PathLike, *, classes: Any = "all", layer: str | None = None, k: int = 10,
             executor: Any = "local", seed: int = 0, overwrite: bool = False,
             progress: Callable[[Event], None] | None = None, **params: Any):
    """Find k concepts per class of `inputs` (an ImageFolder: one sub-folder per class) and write the page.

    Every other `featvis concepts` option is a keyword (`images=`, `crops=`, `designs=`, `steps=`, ...; see
    `ConceptsParams`). The run resumes in `out` and `executor="ray"` spreads the classes over a cluster.

    Returns:
        The finished run (`featvis.tasks.results.Run`: `.items` holds one record per class with its ranked
        concepts, their importances and the deletion curve); the page is `out`/index.html.

    Example:
        >>> run = fv.concepts(clf, "photos/", "concepts/", classes=("tabby", "pizza"), k=6)
        >>> [c["importance"] for c in run.items[0]["concepts"]]
    """
    from featvis.data import Dataset
    from featvis.report.lens import build_lens

    task = ConceptsTask(classes=classes if isinstance(classes, str) else tuple(classes), layer=layer or "", k=k,
                        **params)
    data = inputs if isinstance(inputs, Dataset) else Dataset.from_inputs(
        [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs), labels=clf.labels, imagefolder=True)
    run = run_task(task, data, out, clf=clf, executor=executor, batch_size=1, seed=seed, overwrite=overwrite,
                   progress=progress)
    build_lens(Path(out), run)
    return run
