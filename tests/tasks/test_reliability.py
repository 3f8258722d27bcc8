"""Issue 22 (reliability, round 3): what the runner reads back, the inputs it is given, and how a run ends.

Each test here failed on the code before the fix it names."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import featvis as fv
from featvis.cli import main
from featvis.data import Dataset
from featvis.errors import FeatvisError, FeatvisWarning
from featvis.tasks import ClassifyTask, ExamplesTask, SaliencyTask, run_task
from featvis.tasks.executors import LocalExecutor

from _models import TinyConvNet, noise_photos


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(), labels=["tabby", "pizza", "stingray", "tick"], input_size=32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return noise_photos(tmp_path_factory.mktemp("photos"), 4)


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


class DropsTemporaries(LocalExecutor):
    """A local executor whose first batch also leaves what a worker killed mid-write leaves: a temporary file beside
    an artifact, under a name no later writer uses (Ray redoes the batch on a restarted worker)."""

    def map(self, task, clf, out, batches, on_stage=None):
        for i, res in enumerate(super().map(task, clf, out, batches, on_stage=on_stage)):
            if i == 0:
                target = out / res.files[0]
                (target.parent / f".{target.name}.killed1234.tmp").write_bytes(b"half a png")
            yield res


def test_a_killed_writers_temporaries_are_gone_when_the_run_ends(tiny, photos, tmp_path):
    """22.0: a Ray worker killed while writing left `fooled/.img02-….png.….tmp` in the finished run folder."""
    run = run_task(SaliencyTask(methods=("gradient",)), [photos], tmp_path, clf=tiny, batch_size=2,
                   executor=DropsTemporaries())
    assert len(run.items) == 4
    assert leftovers(tmp_path) == []


def test_a_redone_item_removes_the_temporary_its_killed_writer_left(tiny, photos, tmp_path):
    """22.0: and the temporary goes as soon as the item is written again, not only at the end."""
    from featvis.tasks.executors import execute

    data = Dataset.from_inputs([photos]).seeded(0)
    task = SaliencyTask(methods=("gradient",))
    first = execute(task, tiny, list(data.items[:1]), tmp_path)
    stale = tmp_path / Path(first.files[0]).parent / f".{Path(first.files[0]).name}.abcd.tmp"
    stale.write_bytes(b"partial")
    again = execute(task, tiny, list(data.items[:1]), tmp_path)
    assert again.files == first.files and not stale.exists()


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"items": null}', b'{"schema": 1, "items": [{"input": "x"}]}',
                                     b"\xff\xfe not utf-8", b"{" * 100_000 + b"}" * 100_000, b'{"items": {}}'],
                         ids=["list", "items-null", "no-key", "not-utf8", "deep", "items-dict"])
def test_a_damaged_record_file_is_skipped_with_a_warning_and_its_items_redone(tiny, photos, tmp_path, content):
    """22.8: a record file of the wrong shape or not UTF-8 crashed every rerun and marked the run failed."""
    task = ClassifyTask()
    whole = run_task(task, [photos], tmp_path, clf=tiny, batch_size=2)
    first = sorted((tmp_path / "records").glob("*.json"))[0]
    first.write_bytes(content)
    with pytest.warns(FeatvisWarning, match="cannot be read.*redone"):
        again = run_task(task, [photos], tmp_path, clf=tiny, batch_size=2)
    assert again.manifest["status"] == "done"
    assert again.manifest["counts"] == {"items": 4, "done": 4, "failed": 0, "skipped": 2}
    assert [r["predicted"] for r in again.items] == [r["predicted"] for r in whole.items]
    assert json.loads(first.read_text())["items"]  # rewritten whole


@pytest.mark.parametrize("damage", ["pickle", "not-zip", "truncated", "missing"])
def test_a_damaged_examples_partial_is_redone_and_the_run_finishes(tiny, photos, tmp_path, damage):
    """22.8: a pickled or non-zip partial of an examples run ended in a traceback with the manifest at "running"."""
    import pickle

    task = ExamplesTask(layer="conv2", channels=(0, 1), k=2)
    whole = run_task(task, [photos], tmp_path, clf=tiny, batch_size=2)
    partial = sorted((tmp_path / "partials").glob("*.npz"))[0]
    if damage == "pickle":
        partial.write_bytes(pickle.dumps({"top_v": [1, 2]}))
    elif damage == "not-zip":
        partial.write_bytes(b"just some bytes")
    elif damage == "truncated":
        partial.write_bytes(partial.read_bytes()[:100])
    else:
        partial.unlink()
    (tmp_path / "results.json").unlink()  # the run is being finished again
    with pytest.warns(FeatvisWarning, match="redoing the 2 item"):
        again = run_task(task, [photos], tmp_path, clf=tiny, batch_size=2)
    assert again.manifest["status"] == "done"
    assert again.summary["channels"] == whole.summary["channels"]
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "done"


def test_a_failing_summary_marks_the_run_failed_not_running(tiny, photos, tmp_path, monkeypatch):
    """22.8: the manifest stayed at "running" when the summary raised."""
    def broken(self, records, info):
        raise FeatvisError("summary cannot be made")

    monkeypatch.setattr(ClassifyTask, "summarize", broken)
    with pytest.raises(FeatvisError, match="summary cannot be made"):
        run_task(ClassifyTask(), [photos], tmp_path, clf=tiny)
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "failed"


def test_overwrite_removes_the_files_of_methods_the_new_run_does_not_compute(tiny, photos, tmp_path):
    """22.12: overwriting a gradient+smoothgrad run with gradient only left every smoothgrad.npy and figure."""
    run_task(SaliencyTask(methods=("gradient", "smoothgrad"), options={"samples": 2}), [photos], tmp_path,
             clf=tiny, batch_size=2)
    assert len(list(tmp_path.rglob("smoothgrad.npy"))) == 4
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    run = run_task(SaliencyTask(methods=("gradient",)), [photos], tmp_path, clf=tiny, batch_size=2, overwrite=True)
    files = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert not list(tmp_path.rglob("smoothgrad*")), sorted(map(str, files))
    named = {tmp_path / p for r in run.items for p in r["maps"].values()} | {tmp_path / r["figure"] for r in run.items}
    assert named <= files and len(before) > len(files)


def test_the_lock_file_is_gone_when_a_run_ends_and_a_second_run_is_still_refused(tiny, photos, tmp_path):
    """22 (new user): finished runs kept `.featvis.lock`."""
    seen = []

    def during(event):
        if event.kind == "batch" and not seen:
            seen.append((tmp_path / ".featvis.lock").exists())
            with pytest.raises(FeatvisError, match="another featvis run"):
                run_task(ClassifyTask(), [photos], tmp_path, clf=tiny)

    run_task(ClassifyTask(), [photos], tmp_path, clf=tiny, batch_size=2, progress=during)
    assert seen == [True] and not (tmp_path / ".featvis.lock").exists()


def test_the_manifest_records_the_numerics_a_run_ran_with(tiny, photos, tmp_path):
    """22.0/22.7: the CPU, its kernel set, the threads (also per worker) and the fast path, so two runs that differ
    in the last bits can be told apart."""
    import torch

    run = run_task(ClassifyTask(), [photos], tmp_path, clf=tiny)
    num = run.manifest["numerics"]
    assert num["threads"] == torch.get_num_threads() and num["cpu"] and num["mkldnn"] in (True, False)
    assert num["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert num["fast_path"]["fold_bn"] is True  # the default options (the tiny net runs as it is: under 8 convs)
    assert num["workers"] == [{"node": num["workers"][0]["node"], "threads": torch.get_num_threads(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability()}]
    os.environ["FEATVIS_FAST"] = "0"
    try:
        off = run_task(ClassifyTask(), [photos], tmp_path / "off", clf=tiny)
    finally:
        del os.environ["FEATVIS_FAST"]
    assert off.manifest["numerics"]["fast_path"] == "off"


# -- inputs --------------------------------------------------------------------------------------------------------


@pytest.fixture
def looped(photos, tmp_path):
    """A folder with a photo and a symlink loop named like an image, and an ImageFolder with the same."""
    plain = tmp_path / "plain"
    (tmp_path / "tree" / "tabby").mkdir(parents=True)
    plain.mkdir()
    for d in (plain, tmp_path / "tree" / "tabby"):
        (d / "ok.png").write_bytes((photos / "p0.png").read_bytes())
        os.symlink("loop.png", d / "loop.png")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("form", ["folder", "glob", "imagefolder"])
def test_a_symlink_loop_among_the_inputs_is_one_skipped_line_not_a_traceback(tiny, looped, form, capsys):
    """22.2: a folder holding `ln -s loop.png loop.png` ended in a ~30-line ELOOP traceback, in all three forms."""
    arg, extra = {"folder": (looped / "plain", []), "glob": (looped / "plain" / "*.png", []),
                  "imagefolder": (looped / "tree", ["--imagefolder"])}[form]
    code = main(["classify", str(arg), *extra, "-o", str(looped / "out"), "--quiet", "--json"])
    err = capsys.readouterr()
    assert code == 1, err.err  # one item failed, the other was classified
    out = json.loads(err.out)
    assert [r["name"] for r in out["items"]] == (["tabby/ok.png"] if form == "imagefolder" else
                                                 ["ok.png"] if form == "folder" else [str(looped / "plain/ok.png")])
    assert len(out["failed"]) == 1 and "symbolic link loop" in out["failed"][0]["error"]
    assert "Traceback" not in err.err


def test_a_symlink_loop_given_by_name_is_one_line(looped, capsys):
    assert main(["classify", str(looped / "plain" / "loop.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link loop" in err


@pytest.mark.slow
def test_a_5000_character_name_on_the_command_line_or_in_a_list_is_one_line(tmp_path):
    """22.2: `OSError: [Errno 36] File name too long` with a traceback, from the command line and from a .txt list."""
    long = "a" * 5000 + ".jpg"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{long}\n")
    for arg in (long, str(listing)):
        proc = subprocess.run([sys.executable, "-m", "featvis.cli", "classify", arg, "--quiet"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-500:]
        assert proc.stderr.count("\n") == 1 and "too long a name" in proc.stderr
        assert len(proc.stderr) < 700 and re.search(r"\(5,0\d\d characters\)", proc.stderr)


def test_two_files_of_one_name_in_an_imagefolder_are_told_apart(tiny, photos, tmp_path, capsys):
    """22.5: the classify table showed only basenames, so cats/001.jpg and dogs/001.jpg looked the same; with labels
    the terminal also shows the true class, the accuracy, per class and the mistakes (README promise)."""
    for cls in ("tabby", "pizza"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls / "001.png").write_bytes((photos / f"p{len(cls) % 2}.png").read_bytes())
    run = run_task(ClassifyTask(), [tmp_path / "val"], tmp_path / "out", clf=tiny, imagefolder=True)
    assert [r["name"] for r in run.items] == ["pizza/001.png", "tabby/001.png"]
    assert [r["label_name"] for r in run.items] == ["pizza", "tabby"]
    table = ClassifyTask.overview(run)
    assert [t.caption for t in table][:2] == ["top-4 classes per image", "accuracy on the labelled images"]
    assert table[0].header[:2] == ["image", "true class"] and table[0].rows[0][:2] == ["pizza/001.png", "pizza (1)"]
    assert [t.caption for t in table][2:] in (["accuracy per true class", "images the model gets wrong"],
                                              ["accuracy per true class"])


@pytest.mark.slow
def test_the_terminal_shows_accuracy_and_captions_come_before_their_tables(tmp_path):
    """22 (new user): `classify --imagefolder` printed no accuracy in the terminal, and captions went to stderr, after
    the table when both were redirected to one file."""
    import shutil

    for cls, name in (("tabby", "chelsea"), ("espresso", "coffee")):
        (tmp_path / "val" / cls).mkdir(parents=True)
        shutil.copy(fv.samples.path(name), tmp_path / "val" / cls / "001.jpg")
    proc = subprocess.run(f"{sys.executable} -m featvis.cli classify val --imagefolder -k 2 > out.txt 2>&1",
                          shell=True, cwd=tmp_path, capture_output=True, text=True)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode in (0, 1), out
    assert out.index("top-2 classes per image") < out.index("espresso/001.jpg") < out.index("tabby/001.jpg")
    assert "accuracy on the labelled images" in out and "accuracy per true class" in out
    assert out.index("accuracy on the labelled images") > out.index("tabby/001.jpg")


@pytest.mark.slow
def test_sigterm_ends_a_run_like_ctrl_c(photos, tmp_path):
    """22 (new user): SIGTERM ended a run silently (exit 143) where Ctrl-C said "interrupted; rerun to resume"."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(400):
        os.link(photos / f"p{i % 4}.png", many / f"{i:03d}.png")
    env = {**os.environ, "FEATVIS_FAST": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "featvis.cli", "saliency", str(many), "--method", "gradient",
                             "--no-figures", "-o", str(tmp_path / "run"), "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "run" / "records").glob("*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-800:]
    assert "terminated (SIGTERM); rerun the same command to resume" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "run" / ".featvis.lock").exists()


def test_warnings_are_one_line_in_the_cli(capsys):
    from featvis.cli import _show_warning

    with warnings.catch_warnings():
        _show_warning(FeatvisWarning("a record file cannot be read\nsecond line"), FeatvisWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err == "featvis: warning: a record file cannot be read\n"


def test_report_says_when_runs_differ_in_their_numerics(tiny, photos, tmp_path):
    """22.7: a Ray run at 1 thread per worker and a local run at 2 differ in the last bits (a ReLU6 boundary flips);
    the manifest records the threads per worker, and `featvis report` says when runs differ in them."""
    from featvis.report import build_report
    from featvis.tasks.results import numerics_differences, read_run

    for name in ("a", "b"):
        run_task(ClassifyTask(), [photos], tmp_path / name, clf=tiny)
    assert numerics_differences([read_run(tmp_path / "a"), read_run(tmp_path / "b")]) == []
    path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(path.read_text())
    other = "AVX512" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "AVX2"  # not this machine's
    manifest["numerics"]["workers"] = [{"node": "n1", "threads": 1, "cpu_capability": other},
                                       {"node": "n2", "threads": 1, "cpu_capability": other}]
    path.write_text(json.dumps(manifest))
    differ = numerics_differences([read_run(tmp_path / "a"), read_run(tmp_path / "b")])
    assert differ[0].startswith("threads per worker differs:") and "1 (b)" in differ[0]
    assert any(d.startswith("cpu_capability differs") for d in differ)
    with pytest.warns(FeatvisWarning, match="other numerics"):
        page = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "page.html")
    assert "These runs ran with other numerics" in page.read_text() and "threads per worker differs" in \
        page.read_text()


def test_the_evaluate_table_carries_its_legend(tiny, photos, tmp_path):
    """22 (new user): `evaluate`'s ✗ and ★ had no legend in the terminal (it was only in the report's prose)."""
    from featvis.tasks import EvaluateTask

    run = run_task(EvaluateTask(methods=("gradient",), metrics=("deletion",), examples=0), [photos], tmp_path,
                   clf=tiny)
    table = EvaluateTask.overview(run)
    assert table.header[:2] == ["method", "deletion ↓"]
    assert "★ best of the column" in table.caption and "✗ does not beat the random map" in table.caption


def test_a_resume_under_other_numerics_is_refused(clf, tmp_path, monkeypatch):
    """Issue 23: the fast-path setting was not in the parameters hash, so a run resumed with FEATVIS_FAST=bf16 mixed
    bf16 and fp32 batches silently; the images per model call are part of it too."""
    photo = str(fv.samples.path("chelsea"))
    task = ClassifyTask()
    first = run_task(task, [photo], tmp_path, clf=clf)
    assert first.manifest["numerics"]["fast_path"]["autocast"] is None and first.manifest["numerics"]["max_chunk"]
    for env in ({"FEATVIS_FAST": "bf16"}, {"FEATVIS_FAST": "0"}, {"FEATVIS_MAX_CHUNK": "4"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            with pytest.raises(FeatvisError, match="other parameters"):
                run_task(task, [photo], tmp_path, clf=clf)
    again = run_task(task, [photo], tmp_path, clf=clf)  # the same numerics resume
    assert again.manifest["counts"]["skipped"] == 1


def test_the_images_per_call_chunk_is_a_declared_and_recorded_option(tmp_path, capsys, monkeypatch):
    """Issue 23: FEATVIS_MAX_CHUNK was the only way to set the images per model call from the CLI, and not recorded;
    `--max-chunk` sets it, the manifest records it, and a resume with another value is refused."""
    monkeypatch.setenv("FEATVIS_MAX_CHUNK", "32")  # recorded, so the value main() sets is undone after the test
    monkeypatch.delenv("FEATVIS_MAX_CHUNK")
    photo = str(fv.samples.path("coffee"))
    argv = ["saliency", photo, "--method", "gradient", "--no-figures", "-o", str(tmp_path), "--quiet"]
    assert main([*argv, "--max-chunk", "4"]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["numerics"]["max_chunk"] == 4
    monkeypatch.delenv("FEATVIS_MAX_CHUNK", raising=False)
    assert main([*argv, "--max-chunk", "8"]) == 2
    assert "other parameters" in capsys.readouterr().err
