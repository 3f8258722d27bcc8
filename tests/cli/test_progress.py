"""Issue 22 (new user): long runs were silent when stderr was not a terminal, and the bar counted whole batches
(0/24 for 75 s, ETA -:--:--)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import featvis as fv
from featvis.cli._progress_view import ProgressView, duration
from featvis.tasks.runner import Event


def events(batches: int = 3, size: int = 4) -> list[Event]:
    """What the runner sends for `batches` batches of `size` items, each going through two stages."""
    out = [Event("start", total=batches * size)]
    for b in range(batches):
        for stage, total in (("map", 2), ("deletion", 10)):
            out += [Event("stage", done=b * size, total=batches * size, stage=stage, stage_done=d, stage_total=total,
                          batch=size) for d in range(1, total + 1)]
        out.append(Event("batch", done=(b + 1) * size, total=batches * size))
    return [*out, Event("done", done=batches * size, total=batches * size)]


def test_the_view_moves_inside_a_batch_once_it_knows_a_batchs_stages(monkeypatch):
    monkeypatch.setenv("FEATVIS_PROGRESS_EVERY", "0")
    lines: list[str] = []
    monkeypatch.setattr("featvis.cli._console.say", lambda text, **_: lines.append(text))
    view = ProgressView("saliency", show=False, speak=True)
    where = []
    for e in events():
        view(e)
        where.append(view.where)
    assert where == sorted(where)  # never backwards
    first_batch = where[1:1 + 12]
    assert max(first_batch) == 0  # nothing claimed before one batch has shown its stages
    second = where[1 + 13:1 + 13 + 12]  # inside the second batch: between 4 and 8 items, moving
    assert 4 < second[0] < second[5] < second[-1] < 8
    assert lines[0] == "saliency: 12 item(s) to do"
    assert "about" in lines[20] and "left" in lines[20] and "· map" in lines[14]
    assert lines[-1].startswith("saliency: done, 12 items in")


@pytest.mark.slow
def test_a_log_gets_progress_lines_not_silence(tmp_path):
    """stderr to a file: the start, lines every FEATVIS_PROGRESS_EVERY seconds, and the end with its time."""
    env = {**os.environ, "FEATVIS_PROGRESS_EVERY": "0", "FEATVIS_FAST": "0"}
    photos = [str(fv.samples.path(n)) for n in ("chelsea", "coffee", "rocket")]
    proc = subprocess.run([sys.executable, "-m", "featvis.cli", "saliency", *photos, "--method", "gradient",
                           "--no-figures", "--batch-size", "1", "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-800:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("saliency:")]
    assert lines[0] == "saliency: 3 item(s) to do" and lines[-1].startswith("saliency: done, 3 items in")
    assert any("1/3 items" in ln for ln in lines) and any("2/3 items" in ln for ln in lines)


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (1.23, 42.4, 185, 3725)] == ["1.2 s", "42 s", "3 min 05 s", "1 h 02 min"]


def test_the_printed_server_url_can_be_opened():
    """Found while fixing the web items of issue 22: IPv6 hosts need brackets, 0.0.0.0 is no address to open."""
    from featvis.cli.demo import server_url

    assert server_url("127.0.0.1", 8000, None) == "http://127.0.0.1:8000/"
    assert server_url("::1", 8000, "t") == "http://[::1]:8000/?token=t"
    assert server_url("0.0.0.0", 9000, "t").startswith("http://127.0.0.1:9000/?token=t (bound to every interface")


def test_progress_listeners_nest():
    """A listener opened inside another's block (the runner's inside a web job's) hears first; the outer one still
    hears (issue 23: the web page's live previews come through the runner)."""
    from featvis import _progress

    heard = []
    with _progress.listening(lambda s, d, t, e: heard.append(("outer", s, d))):
        with _progress.listening(lambda s, d, t, e: heard.append(("inner", s, d))):
            _progress.update("render step", 3, 10)
        _progress.update("after", 1, 1)
    _progress.update("nobody", 0, 1)
    assert heard == [("inner", "render step", 3), ("outer", "render step", 3), ("outer", "after", 1)]
