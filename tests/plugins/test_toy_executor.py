"""A new executor is one file: a class with describe/map/close, registered by name, reaches `--executor` on every
task command (its constructor's parameters are its options), the Python API, the manifest and the report."""

from typing import ClassVar

import pytest

import featvis as fv
from featvis.tasks import EXECUTORS, SaliencyTask, run_task
from featvis.tasks.executors import LocalExecutor, execute

from _drive import cli_json, report_html


class Reverse:
    """Runs the batches in this process, last first (batches are independent: the results must not change)."""

    name = "toy-reverse"
    forwards_stages = True
    runs: ClassVar[list[int]] = []  # batches per map call, across instances

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers}

    def map(self, task, clf, out, batches, on_stage=None):
        batches = list(batches)
        Reverse.runs.append(len(batches))
        for items in reversed(batches):
            yield execute(task, clf, items, out, on_stage=on_stage)

    def close(self) -> None:
        pass


@pytest.fixture
def toy():
    EXECUTORS.register("toy-reverse")(Reverse)
    Reverse.runs = []
    yield "toy-reverse"
    EXECUTORS.remove("toy-reverse")


def test_toy_executor_through_cli_api_manifest_and_report(toy, clf, capsys, tmp_path):
    photos = [fv.samples.path(n) for n in ("chelsea", "coffee", "rocket")]
    out = cli_json(capsys, "saliency", *photos, "--method", "gradient", "--no-figures", "--batch-size", "1",
                   "--executor", toy, "--workers", "3", "-o", tmp_path / "run")
    assert Reverse.runs == [3] and len(out["items"]) == 3
    manifest = fv.tasks.read_run(tmp_path / "run").manifest
    assert manifest["executor"]["name"] == toy and manifest["executor"]["workers"] == 3
    local = run_task(SaliencyTask(methods=("gradient",), figures=False), photos, tmp_path / "local", clf=clf,
                     batch_size=1, executor=LocalExecutor())
    assert [r["prob"] for r in local.items] == [r["prob"] for r in out["items"]]  # same results, any order run
    from featvis.cli import main

    assert main(["classify", str(photos[0]), "--executor", toy, "--address", "auto", "--quiet"]) == 2
    assert "--address only apply to --executor ray" in capsys.readouterr().err
    page = report_html(capsys, tmp_path / "run", tmp_path)
    assert f"executor {toy}" in page
    with pytest.raises(fv.FeatvisError, match="is not an executor"):
        run_task(SaliencyTask(methods=("gradient",)), photos, tmp_path / "bad", clf=clf, executor=object())
