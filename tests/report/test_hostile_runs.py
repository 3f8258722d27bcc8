"""Run folders whose files are damaged or replaced: each is one line saying what is wrong, or a page — never a
traceback; and every string in a run's files reaches the page escaped."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

import featvis as fv
from featvis.cli import main
from featvis.report import build_report

from _report_runs import copy_run, edit_json

XSS = "\"'><img src=x onerror=alert(1)><script>alert(2)</script><!--<script>"


def _figure(run):
    return run / json.loads((run / "results.json").read_text())["items"][0]["figure"]


def _bomb_png() -> bytes:
    """A PNG whose header claims 100,000 × 100,000 pixels (PIL refuses to open it: DecompressionBombError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _loop(run):
    fig = _figure(run)
    fig.unlink()
    fig.symlink_to(fig)


def _results_link_out(run):
    (run.parent / "elsewhere.json").write_bytes((run / "results.json").read_bytes())
    (run / "results.json").unlink()
    (run / "results.json").symlink_to(run.parent / "elsewhere.json")


def _raw_replace(old: str, new: str):
    def damage(run):
        path = run / "results.json"
        path.write_text(path.read_text().replace(old, new, 1))
    return damage


DAMAGE = {
    "figure is a symlink loop": (_loop, "cannot be looked up .*Symlink loop"),
    "figure is a bomb PNG": (lambda r: _figure(r).write_bytes(_bomb_png()), "is not a PNG image"),
    "figure name has a lone surrogate": (_raw_replace('"figures/', '"figures/\\ud800'), "cannot be looked up"),
    "figure name is 10 MB": (lambda r: edit_json(r / "results.json", lambda d: d["items"][0].update(
        figure="a" * 10_000_000)), "a 10000000-character name"),
    "figure name is a list": (lambda r: edit_json(r / "results.json", lambda d: d["items"][0].update(
        figure=["x"] * 100_000)), r"names an invalid file \['x', .*… \(not a string\)"),
    "results.json links outside": (_results_link_out, "is a link to .*outside its run folder"),
    "artifacts is not a list": (lambda r: edit_json(r / "results.json", lambda d: d.update(artifacts=5)),
                                "'artifacts' is not a list"),
    "task name is 10 MB": (lambda r: edit_json(r / "manifest.json", lambda d: d.update(task="t" * 10_000_000)),
                           "is a 'tttt.*… run; reports cover"),
    "results.json is not UTF-8": (lambda r: (r / "results.json").write_bytes(b'{"a": "\xff"}'),
                                  r"cannot read .*results\.json.*0xff"),  # one line before too: a guard
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_runs_are_one_line_errors(tiny_runs, tmp_path, case, capsys):
    damage, message = DAMAGE[case]
    run = copy_run(tiny_runs, "fool", tmp_path)
    damage(run)
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and len(err) < 600, err[:600]
    with pytest.raises(fv.FeatvisError, match=message):
        build_report([run], tmp_path / "p.html")
    assert not (tmp_path / "p.html").exists()


def test_a_lone_surrogate_in_a_label_makes_a_valid_utf8_page(tiny_runs, tmp_path):
    run = copy_run(tiny_runs, "fool", tmp_path)
    _raw_replace('"original_name": "', '"original_name": "\\ud800')(run)
    edit_json(run / "manifest.json", lambda m: m["model"].update(id="model\ud800"))
    page = build_report([run], tmp_path / "p.html").read_bytes().decode("utf-8")  # strict: raises if invalid
    assert "model\ufffd" in page


def _poison(value, run, key=None):
    """Every string value (and the keys of free-form maps) with XSS appended; the task and file names are kept."""
    if isinstance(value, dict):
        free = key in ("timings_s", "params", "options", "versions", "workers", "inputs", "model")
        return {(k + XSS if free else k): _poison(v, run, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v, run, key) for v in value]
    if isinstance(value, str) and key != "task" and not (run / value).is_file():
        return value + XSS
    return value


def test_every_string_in_the_runs_reaches_the_page_escaped(tiny_runs, tmp_path):
    runs = [copy_run(tiny_runs, name, tmp_path) for name in ("fool", "rob", "sal")]
    for run in runs:
        for name in ("manifest.json", "results.json"):
            edit_json(run / name, lambda d, run=run: d.update(_poison(d, run)))
    page = build_report(runs, tmp_path / "p.html", title=XSS, intro=XSS).read_text()
    assert "<script" not in page and "<img src=x" not in page and "<!--" not in page
    assert page.count(r"&lt;img src=x onerror=alert(1)&gt;") >= 40  # names, classes, parameters, model ids, ...
