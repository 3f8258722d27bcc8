"""The runner: resume, seeds by item identity, validation before writing, errors per item, lock, schema, events."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featvis as fv
from featvis.data import Dataset
from featvis.tasks import FoolTask, SaliencyTask, read_run, run_task
from featvis.tasks.results import SCHEMA

from _models import TinyConvNet, noise_photos


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return noise_photos(tmp_path_factory.mktemp("photos"), 6)


def tasks():
    return [SaliencyTask(methods=("gradient", "smoothgrad"), metrics=True, metric_steps=4, options={"samples": 3}),
            FoolTask(method="pgd", target="random", options={"steps": 2, "random_start": True})]


def artifacts(folder: Path) -> dict[str, str]:
    """Every file a task wrote (not the manifest/records bookkeeping), with its hash."""
    skip = {"manifest.json", "results.json", ".featvis.lock"}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and "records" not in p.parts}


class Interrupt(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("task", tasks(), ids=lambda t: t.name)
def test_resumed_run_equals_uninterrupted_byte_for_byte(tiny, photos, tmp_path, task):
    whole = run_task(task, [photos], tmp_path / "whole", clf=tiny, batch_size=2, seed=3)
    batches = []

    def stop_after_first(event):
        if event.kind == "batch":
            batches.append(event.done)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_task(task, [photos], tmp_path / "cut", clf=tiny, batch_size=2, seed=3, progress=stop_after_first)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and batches == [2]
    events = []
    resumed = run_task(task, [photos], tmp_path / "cut", clf=tiny, batch_size=2, seed=3, progress=events.append)
    assert events[0].kind == "start" and events[0].skipped == 2
    assert resumed.manifest["counts"] == {"items": 6, "done": 6, "failed": 0, "skipped": 2}
    assert artifacts(tmp_path / "cut") == artifacts(tmp_path / "whole") and len(artifacts(tmp_path / "whole")) >= 12
    assert [r["key"] for r in resumed.items] == [r["key"] for r in whole.items]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed.items) == strip(whole.items)


@pytest.mark.slow
def test_item_seeds_come_from_identity_not_position(tiny, photos, tmp_path):
    task = FoolTask(method="pgd", target="random", options={"steps": 1})
    a = run_task(task, [photos], tmp_path / "a", clf=tiny, batch_size=6, seed=1)
    files = sorted(photos.glob("*.png"))
    b = run_task(task, [str(f) for f in reversed(files)], tmp_path / "b", clf=tiny, batch_size=1, seed=1)
    by_key = lambda run: {r["key"]: (r["seed"], r["target"]) for r in run.items}  # noqa: E731
    assert by_key(a) == by_key(b)  # same seed and random target per image, whatever the order and batch
    assert len({s for s, _ in by_key(a).values()}) == 6
    c = run_task(task, [photos], tmp_path / "c", clf=tiny, batch_size=6, seed=2)
    assert [r["seed"] for r in c.items] != [r["seed"] for r in a.items]  # the run's seed matters
    sal = SaliencyTask(methods=("smoothgrad",), options={"samples": 2})
    one = run_task(sal, [photos], tmp_path / "s1", clf=tiny, batch_size=1)
    six = run_task(sal, [photos], tmp_path / "s6", clf=tiny, batch_size=6)
    for r1, r6 in zip(one.items, six.items, strict=True):
        m1 = np.load(tmp_path / "s1" / r1["maps"]["smoothgrad"])
        m6 = np.load(tmp_path / "s6" / r6["maps"]["smoothgrad"])
        np.testing.assert_allclose(m1, m6, rtol=1e-5, atol=1e-7)  # the noise is the image's own


def test_validation_happens_before_anything_is_written(tiny, photos, tmp_path):
    with pytest.raises(fv.FeatvisError, match="untargeted"):
        run_task(FoolTask(method="deepfool", target="b"), [photos], tmp_path / "x", clf=tiny)
    with pytest.raises(fv.FeatvisError, match="unknown class"):
        run_task(SaliencyTask(target="zebra"), [photos], tmp_path / "y", clf=tiny)
    with pytest.raises(fv.FeatvisError, match="needs each image's true class"):
        run_task(SaliencyTask(target="true"), [photos], tmp_path / "z", clf=tiny)
    assert not any((tmp_path / n).exists() for n in "xyz")
    # the corrected command then runs in the same folder
    run_task(FoolTask(method="deepfool", target=None, options={"steps": 2}), [photos], tmp_path / "x", clf=tiny)


@pytest.mark.slow
def test_other_parameters_are_refused_unless_overwrite(tiny, photos, tmp_path):
    run_task(SaliencyTask(), [photos], tmp_path, clf=tiny)
    with pytest.raises(fv.FeatvisError, match="other parameters.*--overwrite"):
        run_task(SaliencyTask(score="prob"), [photos], tmp_path, clf=tiny)
    with pytest.raises(fv.FeatvisError, match="other parameters"):
        run_task(SaliencyTask(), [photos], tmp_path, clf=tiny, seed=5)
    run = run_task(SaliencyTask(score="prob"), [photos], tmp_path, clf=tiny, overwrite=True)
    assert run.manifest["counts"]["skipped"] == 0 and run.params["score"] == "prob"
    again = run_task(SaliencyTask(score="prob"), [photos], tmp_path, clf=tiny)  # same parameters: resumes
    assert again.manifest["counts"]["skipped"] == len(run.items)
    fresh = run_task(SaliencyTask(score="prob"), [photos], tmp_path, clf=tiny, overwrite=True)  # starts over anyway
    assert fresh.manifest["counts"]["skipped"] == 0 and len(fresh.items) == len(run.items)


def test_a_bad_image_is_recorded_and_retried(tiny, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(photos.glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = run_task(SaliencyTask(), [folder], tmp_path / "out", clf=tiny)
    assert len(run.items) == 3 and len(run.failed) == 1 and "broken.png" in run.failed[0]["input"]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "broken.png")  # fixed: the rerun does it
    again = run_task(SaliencyTask(), [folder], tmp_path / "out", clf=tiny)
    assert len(again.items) == 4 and not again.failed and again.manifest["counts"]["skipped"] == 3


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tiny, photos, tmp_path):
    seen = []

    def nested(event):
        if event.kind == "start":
            with pytest.raises(fv.FeatvisError, match="another featvis run .* is writing"):
                run_task(SaliencyTask(), [photos], tmp_path, clf=tiny)
            seen.append(True)

    run_task(SaliencyTask(), [photos], tmp_path, clf=tiny, progress=nested)
    assert seen == [True]


@pytest.mark.slow
def test_stage_events_report_progress_inside_a_batch(tiny, photos, tmp_path):
    events = []
    run_task(SaliencyTask(methods=("gradient", "occlusion"), metrics=True, metric_steps=4,
                          options={"window": 8, "stride": 8}), [photos], tmp_path, clf=tiny, batch_size=6,
             progress=events.append)
    stages = {e.stage.split(":")[0] for e in events if e.kind == "stage"}
    assert {"map", "occlusion windows", "deletion/insertion"} <= stages, stages
    assert [e.kind for e in events][-1] == "done"


def test_results_schema_is_versioned_and_newer_ones_are_refused(tiny, photos, tmp_path):
    run = run_task(SaliencyTask(), [photos], tmp_path, clf=tiny)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == SCHEMA == 1 and run.manifest["schema"] == 1 and data["task"] == "saliency"
    assert {"key", "input", "label", "seed", "target", "maps", "figure"} <= set(data["items"][0])
    data["schema"] = SCHEMA + 1
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(fv.FeatvisError, match="newer featvis .*upgrade"):
        read_run(tmp_path)


def test_datasets_select_shards_and_labels(tiny, photos, tmp_path):
    ds = Dataset.from_inputs([photos])
    shards = [ds.select(shard=(i, 3)) for i in range(3)]
    keys = [k for s in shards for k in (it.key for it in s)]
    assert sorted(keys) == sorted(it.key for it in ds) and len(set(keys)) == len(ds)  # a partition
    assert [it.key for it in ds.select(shuffle=True, seed=4)] == [it.key for it in ds.select(shuffle=True, seed=4)]
    assert [it.key for it in ds.select(shuffle=True, seed=4, limit=2)] == \
        [it.key for it in ds.select(shuffle=True, seed=4)][:2]
    root = tmp_path / "folder"
    for cls_name, files in (("a", ["p0.png", "p1.png"]), ("c", ["p2.png"])):
        (root / cls_name).mkdir(parents=True)
        for f in files:
            (root / cls_name / f).write_bytes((photos / f).read_bytes())
    labelled = Dataset.from_inputs([root], labels=tiny.labels, imagefolder=True)
    assert sorted(it.label for it in labelled) == [0, 0, 2]
    (root / "zebra").mkdir()
    (root / "zebra" / "z.png").write_bytes((photos / "p3.png").read_bytes())
    with pytest.raises(fv.FeatvisError, match="'zebra'"):
        Dataset.from_inputs([root], labels=tiny.labels, imagefolder=True)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{photos / f},{lab}\n" for f, lab in (("p4.png", "d"), ("p5.png", 1))))
    assert [it.label for it in Dataset.from_inputs([listing], labels=tiny.labels)] == [3, 1]
    run = run_task(SaliencyTask(target="true"), [listing], tmp_path / "true", clf=tiny)
    assert [r["target"] for r in run.items] == [3, 1] and "accuracy" in run.summary


def test_non_utf8_file_names_run(tiny, photos, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/bad\xff[red]x.png")
    Path(odd).write_bytes((photos / "p0.png").read_bytes())
    run = run_task(SaliencyTask(), [folder], tmp_path / "out", clf=tiny)
    assert len(run.items) == 1 and "\\xff" in run.items[0]["input"]
    json.dumps(run.items)  # printable, encodable


@pytest.mark.slow
def test_classvis_and_features_are_unit_tasks_that_resume(tmp_path, clf):
    from featvis.tasks import ClassvisTask, FeaturesTask

    run = run_task(ClassvisTask(classes=("pizza", 1), preset="lab", steps=2, size=32), None, tmp_path / "c", clf=clf)
    assert [r["value"] for r in run.items] == [963, 1] and (tmp_path / "c" / "grid.png").is_file()
    again = run_task(ClassvisTask(classes=("pizza", 1), preset="lab", steps=2, size=32), None, tmp_path / "c",
                     clf=clf)
    assert again.manifest["counts"]["skipped"] == 2
    feats = run_task(FeaturesTask(layer="blocks.1", channels="all", steps=1, size=32), None, tmp_path / "f",
                     clf=clf, batch_size=24)
    assert len(feats.items) == 24 and feats.items[-1]["key"] == "_blocks.1-0023"  # every channel of the layer
    with pytest.raises(fv.FeatvisError, match="has 24 channels"):
        run_task(FeaturesTask(layer="blocks.1", channels=(24,)), None, tmp_path / "g", clf=clf)


def test_tensors_never_leak_into_records(tiny, photos, tmp_path):
    run = run_task(SaliencyTask(), [photos], tmp_path, clf=tiny)
    text = json.dumps(run.items)
    assert "tensor" not in text and torch.is_tensor(run.items[0]) is False
