"""Issue 12's CLI findings: rich markup in file names, one error per line whatever the width, file modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import featvis as fv
from featvis.cli import main


def test_file_names_are_printed_as_written_never_as_markup(tmp_path, capsys):
    (tmp_path / "bad[").mkdir()
    data = fv.samples.path("coffee").read_bytes()
    (tmp_path / "bad[" / "x].png").write_bytes(data)  # the path reads bad[/x].png: a closing tag to rich
    (tmp_path / "[bold red]x.jpg").write_bytes(data)
    (tmp_path / "[red]broken.jpg").write_bytes(b"garbage")
    code = main(["classify", str(tmp_path), "-o", str(tmp_path / "out"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1  # one input is broken; the rest were done
    assert "[bold red]x.jpg" in out and "x].png" in out and "[red]broken.jpg" in err


def test_errors_stay_one_line_when_stderr_is_not_a_terminal(tmp_path):
    long_name = "a" * 150
    proc = subprocess.run([sys.executable, "-m", "featvis.cli", "classify", f"/nonexistent/{long_name}.jpg"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and long_name in proc.stderr


def test_outputs_follow_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(["classify", str(fv.samples.path("coffee")), "-o", str(tmp_path), "--json"]) == 0
    finally:
        os.umask(old)
    json.loads(capsys.readouterr().out)
    for f in ("manifest.json", "results.json"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o644  # not mkstemp's 0600


def test_help_shows_metavars_not_python_types(capsys):
    """Issue 11: `--help` showed argument types as `<list[Path]>` / `<list[str]>`."""
    from featvis.cli import app, main

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) >= 15
    for name in names:
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("Usage:") and "<list[" not in text and "...]..." not in text, name
