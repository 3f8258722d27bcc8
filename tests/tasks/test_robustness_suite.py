"""The robustness task with --suite autoattack: robust accuracy per budget with intervals, per class with labels,
each image's breaking attack, and the report section; on a tiny model."""

import shutil
import sys

import pytest
import torch

import featvis as fv
import featvis.adversarial.autoattack
from featvis.tasks import RobustnessTask, read_run, run_task

from _models import TinyConvNet, noise_photos

aa = sys.modules["featvis.adversarial.autoattack"]


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(aa, "VERSIONS", {**aa.VERSIONS, "standard": aa.VERSIONS["standard"][:2]})  # APGD part only


def _tiny():
    return fv.Classifier.wrap(TinyConvNet(classes=4), labels=list("abcd"), input_size=32)


def test_suite_run_records_and_section(quick, tmp_path):
    photos = noise_photos(tmp_path, 4)
    clf = _tiny()
    task = RobustnessTask(suite="autoattack", eps=("2/255", "8/255"), options={"steps": 5})
    assert task.params.method == "autoattack" and task.params.eps == (2 / 255, 8 / 255)
    run_task(task, sorted(photos.glob("*.png")), tmp_path / "rob", clf=clf)
    run = read_run(tmp_path / "rob")
    summ = run.summary
    assert summ["clean_accuracy"] == 1.0 and not summ["labelled"]  # no labels: the predictions are the labels
    accs = [r["robust_accuracy"] for r in summ["robust"]]
    assert accs == sorted(accs, reverse=True)
    for r in summ["robust"]:
        lo, hi = r["interval"]
        assert lo <= r["robust_accuracy"] <= hi
        assert sum(r["broken_by"].values()) == round((1 - r["robust_accuracy"]) * 4)
    for rec in run.items:
        assert rec["robust_per_eps"] == [b is None for b in rec["broken_by_per_eps"]]
        if rec["min_eps"] is not None:
            assert rec["broken_by"] in ("apgd-ce", "apgd-t")
            img = fv.load_image(tmp_path / "rob" / rec["fooled_png"], clf)
            assert clf.predict(img, k=1)[0][0].index != rec["label_used"]
    section = RobustnessTask.section(run)
    assert section.title.startswith("Robustness: AutoAttack (standard, linf)")
    assert section.tables[0].rows[0][0] == "clean" and len(section.tables[0].rows) == 3


def test_suite_per_class_with_labels(quick, tmp_path):
    (tmp_path / "src").mkdir()
    src = noise_photos(tmp_path / "src", 4)
    for i, f in enumerate(sorted(src.glob("*.png"))):
        (tmp_path / "data" / "abcd"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "data" / "abcd"[i % 2] / f.name)
    run_task(RobustnessTask(suite="autoattack", eps=("4/255",), options={"steps": 3}), [tmp_path / "data"],
             tmp_path / "rob", clf=_tiny(), imagefolder=True)
    summ = read_run(tmp_path / "rob").summary
    assert summ["labelled"] and [c["name"] for c in summ["per_class"]] == ["a", "b"]
    assert all(c["images"] == 2 for c in summ["per_class"])
    assert summ["robust"][0]["robust_accuracy"] <= summ["clean_accuracy"]


def test_suite_params_errors():
    with pytest.raises(fv.FeatvisError, match="unknown suite 'autoatack'"):
        RobustnessTask(suite="autoatack")
    with pytest.raises(fv.FeatvisError, match="unknown AutoAttack version 'fast'"):
        RobustnessTask(suite="autoattack", version="fast")
    with pytest.raises(fv.FeatvisError, match="untargeted"):
        RobustnessTask(suite="autoattack", target="random")
    with pytest.raises(fv.FeatvisError, match="takes steps as options, not 'alpha'"):
        RobustnessTask(suite="autoattack", options={"alpha": 1})


def test_robustness_curve_with_apgd_still_works(tmp_path):
    photos = noise_photos(tmp_path, 2)
    run_task(RobustnessTask(method="apgd", eps=("1/255", "4/255"), options={"steps": 3}),
             sorted(photos.glob("*.png")), tmp_path / "rob", clf=_tiny())
    run = read_run(tmp_path / "rob")
    assert run.params["method"] == "apgd" and len(run.summary["curve"]["fooled_rate"]) == 2
    assert torch.tensor(run.summary["curve"]["fooled_rate"]).diff().ge(0).all()
