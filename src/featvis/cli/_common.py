"""What every CLI command shares: the app, option types, model loading, output, progress, batch loops."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from featvis.errors import FeatvisError

app = typer.Typer(
    name="featvis",
    help="See what a pretrained image classifier sees, how easily it is fooled, and what it has learned.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name (see `featvis models`) or checkpoint path.")]
WeightsOpt = Annotated[Path | None, typer.Option(help="State-dict/safetensors file to load into --model.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling of a local file "
                                        "(runs code from it: only for files you trust).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps, or auto (CUDA when available).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")]
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Folder for results (resumes if rerun).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Start over in an output folder that holds another run.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Images per batch.")]


@dataclass
class Ui:
    """How a command talks: quiet, JSON or human."""

    quiet: bool = False
    json: bool = False

    def info(self, msg: str) -> None:
        if not self.quiet and not self.json:
            err_console.print(msg)

    def emit(self, obj: Any) -> None:
        """The command's machine-readable result (stdout, one JSON document)."""
        if self.json:
            sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr; yields `advance(n)`. Silent with --quiet or when stderr is no terminal."""
        show = not self.quiet and err_console.is_terminal
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=not show,
                      transient=False) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(task, n)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise FeatvisError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatvisError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return device


def load_classifier(model: str, device: str, weights: Path | None = None, trust: bool = False):
    from featvis.models import load_model

    return load_model(model, device=pick_device(device), weights=weights, trust_checkpoint=trust)


def parse_budget(text: str) -> float:
    """A budget in [0, 1] pixel units: "0.0314", "8/255" or "inf"."""
    t = text.strip().lower()
    try:
        value = float(t[:-4]) / 255 if t.endswith("/255") else float(t)
    except ValueError:
        raise FeatvisError(f"cannot read budget {text!r}; write it in [0, 1] units (0.0314) or in 8-bit levels "
                           "(8/255)") from None
    if not value > 0:
        raise FeatvisError(f"budget {text!r} must be positive")
    return value


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pending_image_batches(job, keys: dict[str, Path], clf, ui: Ui, label: str, batch_size: int,
                          failed: list[tuple[Path, str]]) -> Iterator[tuple[list[Path], Any]]:
    """The images a resumable job has not done yet, loaded in batches under a progress bar: yields
    (paths, [B, 3, H, W]); files that cannot be read are reported, appended to `failed` and left pending."""
    todo = job.pending(list(keys))
    if job.skipped:
        ui.info(f"resuming: {job.skipped} of {len(keys)} images already done in {job.out_dir}")
    with ui.progress(label, len(todo)) as advance:
        for batch_keys in chunks(todo, batch_size):
            good, x, bad = load_batch([keys[k] for k in batch_keys], clf, ui)
            failed += bad
            if x is not None:
                yield good, x
            advance(len(batch_keys))


def load_batch(paths: Sequence[Path], clf, ui: Ui) -> tuple[list[Path], Any, list[tuple[Path, str]]]:
    """Load what can be loaded; bad files are reported and left out (they stay pending for a rerun)."""
    import torch

    from featvis.images import load_image

    good, tensors, bad = [], [], []
    for p in paths:
        try:
            tensors.append(load_image(p, clf))
            good.append(p)
        except FeatvisError as e:
            bad.append((p, str(e)))
            ui.info(f"[yellow]skipped[/] {p}: {e}")
    return good, (torch.cat(tensors) if tensors else None), bad
