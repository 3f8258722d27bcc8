"""How the CLI shows a run's progress: a live bar on a terminal, a plain line every interval in a log.

The runner sends events (`featvis.tasks.runner.Event`): "start", "stage" (progress inside the batch being computed:
"map: gradient 3/8"), "batch" (items done), "error", "done". A bar that counted whole batches sat at 0/24 for a
minute with no ETA (issue 22), so the bar moves inside a batch: after the first batch the view knows the sequence
of stages one batch goes through, and places a stage event at its share of the batch (never backwards); during
the first batch it shows the stage's own count and claims no share or time left. When stderr is not a terminal (a
log, `nohup`, CI), one line goes out at the start, every `FEATVIS_PROGRESS_EVERY` seconds (default 30) and at the
end, instead of a bar that cannot be drawn — a long run is never silent.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featvis.cli import _console

LOG_EVERY_S = 30.0  # seconds between progress lines in a log (FEATVIS_PROGRESS_EVERY overrides)


def log_interval() -> float:
    text = os.environ.get("FEATVIS_PROGRESS_EVERY", "")
    try:
        return max(0.0, float(text)) if text else LOG_EVERY_S
    except ValueError:
        return LOG_EVERY_S


def duration(seconds: float) -> str:
    """1.2 s, 42 s, 3 min 05 s, 1 h 02 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class BatchShape:
    """Where a stage event lies inside its batch, learnt from the batch before: the sequence of (stage, total) one
    batch goes through. During the first batch that sequence is unknown, so nothing is claimed (`None`)."""

    def __init__(self) -> None:
        self.learnt: list[tuple[str, float]] = []
        self.current: list[tuple[str, float]] = []
        self.best = 0.0

    def fraction(self, stage: str, done: float, total: float) -> float | None:
        key = (stage, total)
        if not self.current or self.current[-1] != key:
            self.current.append(key)
        at = len(self.current) - 1
        if at >= len(self.learnt) or self.learnt[at] != key:
            return None
        part = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        self.best = max(self.best, min((at + part) / len(self.learnt), 0.99))
        return self.best

    def next_batch(self) -> None:
        if self.current:
            self.learnt = self.current
        self.current, self.best = [], 0.0


class ProgressView:
    """Draws the runner's events for one run: a bar over the items with the current stage and an ETA on a
    terminal, a line per interval otherwise; errors as one line each; the run's time at the end."""

    def __init__(self, label: str, show: bool, speak: bool, *, prefix: str = "") -> None:
        self.label, self.show, self.speak, self.prefix = label, show, speak, prefix
        self.bar: Progress | None = None
        self.task_id = None
        self.shape = BatchShape()
        self.t0 = time.perf_counter()
        self.last_line = 0.0
        self.every = log_interval()
        self.done = self.total = self.first = 0
        self.where = 0.0
        self.stage = ""

    def __enter__(self) -> ProgressView:
        if self.show:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                TextColumn("{task.fields[items]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=_console.err_console(), transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def __call__(self, event) -> None:
        if event.kind == "start":
            self.t0 = self.last_line = time.perf_counter()
            self.done, self.total, self.where = event.done, event.total, float(event.done)
            self.first = event.done  # done before this run: the ETA is from this run's own pace
            if event.skipped and self.speak:
                _console.say(f"{self.prefix}resuming: {event.skipped} of {event.total} items already done")
            if self.bar is not None:
                self.task_id = self.bar.add_task(escape(self.label), total=max(event.total, 1),
                                                 completed=event.done, items=self._items())
            elif self.speak:
                _console.say(f"{self.prefix}{self.label}: {event.total - event.done} item(s) to do")
            return
        if event.kind == "error":
            if self.speak:
                _console.say(f"{self.prefix}skipped {event.message}", style="yellow")
            return
        if event.kind == "stage":
            frac = self.shape.fraction(event.stage, event.stage_done, event.stage_total)
            if frac is not None:
                self.where = max(self.where, event.done + frac * (getattr(event, "batch", 0) or 0))
            self.stage = f"{event.stage} {event.stage_done:.0f}/{event.stage_total:.0f}"
        elif event.kind == "batch":
            self.shape.next_batch()
            self.done, self.where, self.stage = event.done, float(event.done), ""
        elif event.kind == "done":
            self.done = self.total
            self.where = float(self.total)
        if self.bar is not None and self.task_id is not None:
            stage = f" · {escape(self.stage)}" if self.stage else ""
            self.bar.update(self.task_id, completed=self.where, description=escape(self.label) + stage,
                            items=self._items())
        elif self.speak:
            now = time.perf_counter()
            if event.kind == "done" or now - self.last_line >= self.every:
                self.last_line = now
                _console.say(self._line(now, final=event.kind == "done"))

    def _items(self) -> str:
        return f"{self.done}/{self.total} items"

    def _line(self, now: float, final: bool) -> str:
        elapsed = now - self.t0
        if final:
            return f"{self.prefix}{self.label}: done, {self.total} items in {duration(elapsed)}"
        todo = self.total - self.first
        pace = (self.where - self.first) / todo if todo > 0 else 1.0  # the share of this run's work done
        share = f" ({100 * self.where / self.total:.0f} %)" if self.total and self.where > self.first else ""
        left = f", about {duration(elapsed / pace * (1 - pace))} left" if 0.01 < pace < 1 else ""
        stage = f" · {self.stage}" if self.stage else ""
        return (f"{self.prefix}{self.label}: {self.done}/{self.total} items{share}, {duration(elapsed)} elapsed"
                f"{left}{stage}")
