"""What a web job runs: a task through the runner (as every front end does), in a temporary run folder of the job's
own, and the pictures it declares, as bytes the API serves by name (no request path reaches the filesystem)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from featvis.errors import FeatvisError


def run_one(clf, task, x: torch.Tensor | None) -> tuple[dict, dict[str, bytes]]:
    """Run `task` through the runner on one image in memory (or, for x=None, on its own units) in a temporary run
    folder; (the item's record, its declared previews as bytes). A failed item is its one-line error."""
    from featvis.data import Dataset
    from featvis.tasks import run_task

    with tempfile.TemporaryDirectory(prefix="featvis-web-") as tmp:
        run = run_task(task, None if x is None else Dataset.from_tensors(x, names=["web"]), tmp, clf=clf,
                       batch_size=1 if x is None else None, argv=["featvis serve"])
        if not run.items:
            raise FeatvisError(run.failed[0]["error"] if run.failed else f"{task.name} produced nothing")
        record = run.items[0]
        files = {name: run.file(rel).read_bytes() for name, rel in type(task).previews(record).items()}
    if "title" in record:  # a visualization says what it rendered
        record = {"objective": record["title"], **record}
    return record, files


def run_concepts(clf, task, images: list[torch.Tensor], index: int) -> tuple[dict, dict[str, bytes]]:
    """The concepts task through the runner on uploaded photos of class `index` (written as PNGs into the job's
    own temporary folder, the task's items being file paths); the record with every picture named by its file
    name, and those pictures."""
    from featvis.data import Dataset, Item
    from featvis.images import save_image
    from featvis.tasks import run_task

    with tempfile.TemporaryDirectory(prefix="featvis-web-") as tmp:
        paths = [Path(tmp) / f"photo{i:02d}.png" for i in range(len(images))]
        for path, x in zip(paths, images, strict=True):
            save_image(x[0], path)
        data = Dataset(tuple(Item(p.name, path=str(p), label=index) for p in paths), {"inputs": "web upload"})
        run = run_task(task, data, Path(tmp) / "run", clf=clf, batch_size=1, argv=["featvis serve"])
        if not run.items:
            raise FeatvisError(run.failed[0]["error"] if run.failed else "concepts produced nothing")
        record = run.items[0]
        files: dict[str, bytes] = {}

        def named(rel: str) -> str:
            name = rel.rsplit("/", 1)[-1]
            files[name] = run.file(rel).read_bytes()
            return name

        for c in record["concepts"]:
            c["crops"] = [named(r) for r in c["crops"]]
            c["maps"] = [named(r) for r in c["maps"]]
            if c.get("visual"):
                c["visual"] = named(c["visual"])
    d = record["deletion"]
    summary = {k: d[k] for k in ("auc", "auc_ci", "random_auc", "random_ci", "beats_random", "orders", "images")}
    return {"class": record["class"], "class_name": record["class_name"], "layer": record["layer"],
            "images": record["images"], "crops": record["crops"], "concepts": record["concepts"],
            "deletion": summary, "seconds": record["seconds"]}, files
