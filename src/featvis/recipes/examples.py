"""`dataset_examples`: the top and bottom dataset examples of every channel of a layer, over any inputs (the examples
task through the runner)."""

from __future__ import annotations

from typing import Any

from featvis.tasks.examples import ExamplesTask


def dataset_examples(clf, inputs, layer: str, channels: tuple[int, ...] | str = "all", *, k: int = 9,
                     neuron: bool = False, out=None, executor: Any = "local", batch_size: int | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """Top-k and bottom-k dataset examples per channel of `layer` (see `featvis examples`).

    Returns:
        The run's summary: {"layer", "images", "channels": [{"channel", "mean", "std", "max", "active", "top":
        [{"input", "value", "pos", "patch"}], "bottom": [...], "classes_of_top": [...]}]}; with `out`, the patches
        are kept there.

    Example:
        >>> ex = fv.dataset_examples(clf, ["photos/"], "blocks.8", channels=(0, 1, 2), k=5, out="ex/")
        >>> ex["channels"][0]["top"][0]["input"]
    """
    import tempfile

    from featvis.tasks.runner import run_task

    task = ExamplesTask(layer=layer, channels=channels, k=k, neuron=neuron)
    with tempfile.TemporaryDirectory(prefix="featvis-examples-") as tmp:
        run = run_task(task, inputs, out or tmp, clf=clf, executor=executor, batch_size=batch_size, seed=seed)
        return run.summary
