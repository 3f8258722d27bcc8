"""Numbers no featvis run writes (issue 22, item 9): each is one line naming the file and the place, never a traceback.

The rule (featvis._json): a manifest or results file with an integer beyond ±2**64 (or too long for Python to
parse), nesting deeper than MAX_DEPTH, or a schema that is not a positive integer is refused, with one line.
"""

from __future__ import annotations

import pytest

import featvis as fv
from featvis._json import MAX_DEPTH
from featvis.cli import main
from featvis.report import build_report

from _report_runs import copy_run, put_raw

DEEP_LISTS = "[" * 100_000 + "]" * 100_000
DEEP_DICTS = '{"a":' * 100_000 + "1" + "}" * 100_000
JUST_TOO_DEEP = "[" * MAX_DEPTH + "]" * MAX_DEPTH  # under Python's limit, over featvis's

HOSTILE = {
    "400-digit timing": ("manifest.json", ["timings_s", "run"], "9" * 400, r"timings_s\.run is a 400-digit integer"),
    "negative 400-digit": ("results.json", ["items", 0, "steps"], "-" + "9" * 400,
                           r"items\[0\]\.steps is a 400-digit integer"),
    "2**64 + 1": ("results.json", ["items", 0, "steps"], str(2**64 + 1), r"items\[0\]\.steps is a 20-digit integer"),
    "5000-digit timing": ("manifest.json", ["timings_s", "run"], "9" * 5000, r"timings_s\.run is a 5000-digit"),
    "5000-digit summary": ("results.json", ["summary", "images"], "9" * 5000, r"summary\.images is a 5000-digit"),
    "100,000-deep lists": ("manifest.json", ["params", "x"], DEEP_LISTS, "nests lists or objects deeper than"),
    "100,000-deep dicts": ("results.json", ["summary", "x"], DEEP_DICTS, "nests lists or objects deeper than"),
    "just too deep": ("manifest.json", ["params", "x"], JUST_TOO_DEEP, rf"nests lists or objects {MAX_DEPTH + 2} levels deep"),
}
SCHEMAS = ['"1"', "null", "-1", "0", "1.5", "true", "[1]", "9" * 400]


def _cli_error(run, out, capsys) -> str:
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err[:500]
    assert not out.exists()
    return err


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_numbers_are_one_line_naming_file_and_place(tiny_runs, tmp_path, case, capsys):
    name, keys, raw, message = HOSTILE[case]
    run = copy_run(tiny_runs, "fool", tmp_path)
    put_raw(run / name, keys, raw)
    err = _cli_error(run, tmp_path / "p.html", capsys)
    assert f"{run / name}" in err and len(err) < 400
    assert __import__("re").search(message, err), err
    with pytest.raises(fv.FeatvisError, match=message):
        build_report([run], tmp_path / "p.html")


@pytest.mark.parametrize("name", ["manifest.json", "results.json"])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_schema_that_is_not_a_positive_integer_is_refused(tiny_runs, tmp_path, name, schema, capsys):
    run = copy_run(tiny_runs, "fool", tmp_path)
    put_raw(run / name, ["schema"], schema)
    err = _cli_error(run, tmp_path / "p.html", capsys)
    assert f"{run / name}" in err and "schema must be a positive integer, got " in err
    with pytest.raises(fv.FeatvisError, match="schema must be a positive integer"):
        build_report([run], tmp_path / "p.html")


def test_numbers_featvis_writes_still_make_a_page(tiny_runs, tmp_path):
    run = copy_run(tiny_runs, "fool", tmp_path)
    put_raw(run / "manifest.json", ["timings_s", "run"], str(2**64))  # the largest integer accepted
    put_raw(run / "manifest.json", ["timings_s", "load"], "1e999")  # read by Python as inf: shown as "–"
    put_raw(run / "manifest.json", ["params", "x"], "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3))
    page = build_report([run], tmp_path / "p.html").read_text()
    assert "load – s" in page and "run 1.84e+19 s" in page
