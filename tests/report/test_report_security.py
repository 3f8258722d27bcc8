"""A run folder is data that may come from someone else: the report escapes it and reads nothing outside it."""

from __future__ import annotations

import json
import shutil

import pytest

import featvis as fv
from featvis.report import build_report
from featvis.tasks import FoolTask, RobustnessTask, run_task

from _models import TinyConvNet

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tiny = fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)
    root = tmp_path_factory.mktemp("runs")
    photo = fv.samples.path("coffee")
    run_task(FoolTask(method="pgd", target=None, options={"steps": 1}), [photo], root / "fool", clf=tiny)
    run_task(RobustnessTask(eps=("1/255",)), [photo], root / "rob", clf=tiny)
    return root


def copy(runs, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(runs / name, dst)
    return dst


def edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_values_are_escaped(runs, tmp_path):
    fool, rob = copy(runs, "fool", tmp_path), copy(runs, "rob", tmp_path)

    def poison_manifest(m):
        m["seed"] = XSS
        m["timings_s"] = {XSS: 1.0, "load": "not a number"}
        m["params"]["method"] = XSS
        m["params"]["target"] = XSS
        m["model"]["id"] = XSS

    edit(fool / "manifest.json", poison_manifest)
    edit(rob / "manifest.json", poison_manifest)
    edit(rob / "results.json", lambda r: r["items"][0].update(original_name=XSS))
    page = build_report([fool, rob], tmp_path / "page.html").read_text()
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(1)&gt;", "")


@pytest.mark.parametrize("figure", ["../../../../etc/passwd", "/etc/hostname", "curve.png/../../x"])
@pytest.mark.parametrize("embed", [False, True])
def test_files_outside_the_run_are_refused(runs, tmp_path, figure, embed):
    fool = copy(runs, "fool", tmp_path)
    edit(fool / "results.json", lambda r: r["items"][0].update(figure=figure))
    with pytest.raises(fv.FeatvisError, match="outside its folder|missing"):
        build_report([fool], tmp_path / "page.html", embed=embed)
    assert not (tmp_path / "page.html").exists()


def test_only_real_pngs_are_embedded(runs, tmp_path):
    fool = copy(runs, "fool", tmp_path)
    rec = json.loads((fool / "results.json").read_text())["items"][0]
    (fool / rec["figure"]).write_text("secret text, not an image")
    with pytest.raises(fv.FeatvisError, match="not a PNG"):
        build_report([fool], tmp_path / "page.html", embed=True)


@pytest.mark.parametrize("damage", ["missing", "broken", "not-a-dict", "items-not-a-list", "newer"])
def test_broken_results_are_one_line_errors(runs, tmp_path, damage, capsys):
    from featvis.cli import main

    fool = copy(runs, "fool", tmp_path)
    results = fool / "results.json"
    if damage == "missing":
        results.unlink()
    elif damage == "broken":
        results.write_text("{not json")
    elif damage == "not-a-dict":
        results.write_text("[1, 2]")
    elif damage == "items-not-a-list":
        edit(results, lambda r: r.update(items=5))
    else:
        edit(results, lambda r: r.update(schema=99))
    assert main(["report", str(fool), "-o", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_malformed_records_are_one_line_errors(runs, tmp_path):
    fool = copy(runs, "fool", tmp_path)
    edit(fool / "results.json", lambda r: r["items"][0].pop("steps"))
    with pytest.raises(fv.FeatvisError, match="malformed"):
        build_report([fool], tmp_path / "page.html")
