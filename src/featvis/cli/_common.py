"""What every CLI command shares, in one place: the app, the output conventions (-o, --json, --quiet, --overwrite,
--device, --model, --seed, -O), dataset selection, executors, progress drawing, result tables and exit codes.

A task command is a function that turns its own options into a task; `task_command` adds the shared options to its
signature and does the rest: load the model, run the task through the runner, draw progress, print the table or
JSON. No batch loop and no algorithm lives in a front end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.markup import escape
from rich.table import Table

from featvis.cli._console import err_console, out_console, say
from featvis.cli._progress_view import ProgressView
from featvis.errors import FeatvisError
from featvis.models import DEFAULT_MODEL


class _Argument(typer.core.TyperArgument):
    """An argument whose help shows its metavar ("INPUTS...") and no Python type ("<list[str]>") beside it: typer
    prints the type beside every argument, and ours all have metavars that say more."""

    def display_type_rich(self, ctx) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)


class _Command(typer.core.TyperCommand):
    """A command whose arguments are `_Argument`s (a subclass, not a patch of typer: importing featvis changes
    nothing in typer for other programs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for p in self.params:
            if type(p) is typer.core.TyperArgument:
                p.__class__ = _Argument

class _App(typer.Typer):
    """The featvis app: its commands are `_Command`s."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(
    name="featvis",
    help="See what a pretrained image classifier sees, how easily it is fooled, and what it has learned.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: "[web]" stays "[web]"
    context_settings={"help_option_names": ["-h", "--help"]},
)

TABLE_ROWS = 50  # rows a terminal table shows; the rest are in results.json



# -- the shared options (written once; `task_command` adds them to every task command) -------------------------

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name (see `featvis models`) or checkpoint path.",
                                       metavar="MODEL")]
WeightsOpt = Annotated[Path | None, typer.Option(help="State-dict/safetensors file to load into --model.",
                                                 metavar="FILE")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow loading a file that runs code (a pickled "
                                        "module or TorchScript): only for files you trust.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps, or auto (CUDA when available).",
                                        metavar="DEVICE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Start over: remove the output folder's earlier run (without it, a "
                                                  "rerun with the same parameters resumes).")]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Items per batch (default: the task's).", metavar="N")]
MaxChunkOpt = Annotated[int | None, typer.Option(min=1, help="Most images per model call inside a method (default "
                                                 "32, less when memory is short; FEATVIS_MAX_CHUNK); recorded in the "
                                                 "manifest, and a resume with another value is refused.",
                                                 metavar="N")]
SeedOpt = Annotated[int, typer.Option(help="The run's seed; each item's own seed derives from it and the item.",
                                      metavar="N")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-O", help="A method/attack/preset option "
                                                     "KEY=VALUE (repeatable), checked against what it takes.",
                                                     metavar="KEY=VALUE")]
ExecutorOpt = Annotated[str, typer.Option(help="local (in this process) or ray (a Ray cluster; needs featvis[ray]).",
                                          metavar="NAME")]
AddressOpt = Annotated[str | None, typer.Option(help="Ray: auto (a running cluster) or HOST:PORT; default starts a "
                                                "local Ray instance.", metavar="ADDRESS")]
WorkersOpt = Annotated[int | None, typer.Option(min=1, help="Ray: worker actors (default: one per available CPU "
                                                "slot).", metavar="N")]
CpusOpt = Annotated[float, typer.Option(min=0.0, help="Ray: CPUs per worker (and torch threads).", metavar="N")]
GpusOpt = Annotated[float, typer.Option(min=0.0, help="Ray: GPUs per worker.", metavar="N")]
ImageFolderOpt = Annotated[bool, typer.Option("--imagefolder", help="Read input folders as ROOT/CLASS/IMAGE: the "
                                              "sub-folder names are the true classes.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Only the first N inputs (after --shuffle).", metavar="N")]
ShuffleOpt = Annotated[bool, typer.Option("--shuffle", help="Shuffle the inputs (seeded by --seed).")]
ShardOpt = Annotated[str | None, typer.Option(help="Only shard I of N (I/N, by each input's identity).",
                                              metavar="I/N")]
InputsArg = Annotated[list[str], typer.Argument(help="Image files, folders, globs ('val/**/*.JPEG') or .txt/.csv "
                                                "lists.", show_default=False, metavar="INPUTS")]


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


MeanOpt = Annotated[str | None, typer.Option(help="The model's input normalization mean, R,G,B (default: the model's "
                                             "own).", metavar="R,G,B")]
StdOpt = Annotated[str | None, typer.Option(help="The normalization std, R,G,B (default: the model's own).",
                                            metavar="R,G,B")]
LabelsOpt = Annotated[str | None, typer.Option(help="Class names: a text file (one per line) or a comma list "
                                               "(default: the model's own, ImageNet for 1000 classes).",
                                               metavar="FILE|A,B,...")]
InputSizeOpt = Annotated[int | None, typer.Option(min=8, help="The model's input side (default: its own).",
                                                  metavar="PX")]


def model_overrides(mean: str | None, std: str | None, labels: str | None, input_size: int | None) -> dict[str, Any]:
    """--mean/--std/--labels/--input-size as load_model keywords (only those given)."""
    out: dict[str, Any] = {}
    for key, text in (("mean", mean), ("std", std)):
        if text is not None:
            try:
                values = tuple(float(v) for v in text.split(","))
            except ValueError:
                raise FeatvisError(f"--{key} {text!r} must be three numbers, e.g. 0.485,0.456,0.406") from None
            if len(values) != 3:
                raise FeatvisError(f"--{key} {text!r} must be three numbers (R,G,B), got {len(values)}")
            out[key] = values
    if labels is not None:
        path = Path(labels).expanduser()
        try:
            is_file = path.is_file()
        except OSError:  # a long comma list is no file name
            is_file = False
        if is_file:
            names = [ln.strip() for ln in path.read_text("utf-8").splitlines() if ln.strip()]
        else:
            names = [n.strip() for n in labels.split(",") if n.strip()]
        if not names:
            raise FeatvisError(f"--labels {labels!r} names no classes; give a file with one name per line or A,B,C")
        out["labels"] = names
    if input_size is not None:
        out["input_size"] = input_size
    return out


def _shared(output: str | None, batch: int | None) -> list[inspect.Parameter]:
    what = "Folder for results (a rerun resumes it)." if output else "Save results in this folder (a rerun resumes " \
        "it); without it nothing is written."
    out_opt = Annotated[Path | None, typer.Option("--output", "-o", help=what, metavar="DIR")]
    return [
        _param("model", ModelOpt, DEFAULT_MODEL), _param("weights", WeightsOpt, None),
        _param("trust_checkpoint", TrustOpt, False), _param("mean", MeanOpt, None), _param("std", StdOpt, None),
        _param("labels", LabelsOpt, None), _param("input_size", InputSizeOpt, None),
        _param("output", out_opt, Path(output) if output else None),
        _param("option", OptionOpt, None), _param("seed", SeedOpt, 0), _param("batch_size", BatchOpt, batch),
        _param("device", DeviceOpt, "auto"), _param("executor", ExecutorOpt, "local"),
        _param("address", AddressOpt, None), _param("workers", WorkersOpt, None),
        _param("cpus_per_worker", CpusOpt, 1.0), _param("gpus_per_worker", GpusOpt, 0.0),
        _param("json", JsonOpt, False), _param("quiet", QuietOpt, False), _param("overwrite", OverwriteOpt, False),
        _param("max_chunk", MaxChunkOpt, None),
    ]


def _dataset() -> list[inspect.Parameter]:
    return [_param("imagefolder", ImageFolderOpt, False), _param("limit", LimitOpt, None),
            _param("shuffle", ShuffleOpt, False), _param("shard", ShardOpt, None)]


SHARED = ("model", "weights", "trust_checkpoint", "mean", "std", "labels", "input_size", "output", "option", "seed",
          "batch_size", "device", "executor", "address", "workers", "cpus_per_worker", "gpus_per_worker", "json",
          "quiet", "overwrite", "max_chunk")
DATASET = ("imagefolder", "limit", "shuffle", "shard")


def task_command(task: type | None = None, *, output: str | None, inputs: bool = True,
                 batch: int | None = None, recipe: bool = False) -> Callable:
    """Register `fn(own options..., fields, options) -> Task` as a command with the shared options added.

    `task`: the task class whose Params fields declared with `param(...)` become options (their defaults and help
    from the field; the command restates none of them); `fn` gets their values in `fields` and any option it
    declares itself (glue such as fool's attack flags) as a keyword.
    `output`: the default run folder (None: results go to a temporary folder unless -o is given).
    `inputs`: the command takes INPUTS... (its first parameter, named `inputs`) and the dataset options.
    `recipe`: the command runs something other than one task (the atlas): `fn(own options..., options, ctx)` gets a
    `Context` with the model, the executor and the data set the shared options describe, and returns the exit code.
    """
    from featvis.cli._params import field_parameters

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in ("options", "fields", "ctx")]
        generated, converters = field_parameters(task.Params, {p.name for p in own}) if task else ([], {})
        params = own + generated + _shared(output, batch) + (_dataset() if inputs or recipe else [])
        params.sort(key=lambda p: p.kind != inspect.Parameter.POSITIONAL_OR_KEYWORD)  # arguments first

        @functools.wraps(fn)
        def command(**kwargs: Any) -> int:
            shared = {k: kwargs.pop(k) for k in SHARED}
            data = {k: kwargs.pop(k) for k in DATASET if k in kwargs}
            fields = {k: converters[k](kwargs.pop(k)) for k in converters}
            from featvis._registry import parse_assignments

            extra = {"fields": fields} if "fields" in sig.parameters else {}
            if recipe:
                return fn(**kwargs, **extra, options=parse_assignments(shared["option"]), ctx=Context(shared, data))
            built = fn(**kwargs, **extra, options=parse_assignments(shared["option"]))
            return run_command(built, kwargs.get("inputs"), shared, data)

        command.__signature__ = sig.replace(parameters=params, return_annotation=int)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": int}
        return app.command(fn.__name__.rstrip("_").replace("_", "-"))(command)

    return deco


def task_from(task: type, fields: dict[str, Any], options: dict[str, Any]) -> Any:
    """The task with the fields the command line gave, and its -O options if its Params take any."""
    takes = {f.name for f in dataclasses.fields(task.Params)}
    if options and "options" not in takes:
        raise FeatvisError(f"{task.name} takes no -O options")
    return task(**fields, **({"options": options} if "options" in takes else {}))


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


def load_classifier(model: str, device: str, weights: Path | None = None, trust: bool = False, **overrides: Any):
    from featvis.models import load_model

    return load_model(model, device=pick_device(device), weights=weights, trust_checkpoint=trust, **overrides)


def executor_from(shared: dict[str, Any]):
    """The executor the shared options name, with the options it takes (its constructor's parameters); an option
    given for an executor that does not take it is a one-line error."""
    from featvis.tasks.executors import EXECUTORS, executor_options
    from featvis.tasks.executors import make_executor as make

    name = EXECUTORS.canonical(shared["executor"])
    takes = set(executor_options(name))
    given = {k for k, default in EXECUTOR_FLAGS.items() if shared.get(k) != default}
    refused = [f"--{k.replace('_', '-')}" for k in sorted(given - takes)]
    if refused:
        users = [n for n in EXECUTORS.names() if given <= set(executor_options(n))]
        raise FeatvisError(f"{', '.join(refused)} only apply to --executor {' or '.join(users) or 'ray'}")
    return make(name, **{k: shared[k] for k in EXECUTOR_FLAGS if k in takes})


# The executor options every task command takes, with their defaults (an executor uses those its constructor names)
EXECUTOR_FLAGS = {"address": None, "workers": None, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}


@dataclasses.dataclass
class Context:
    """What the shared options of a command describe: the model (loaded once), the data set, the executor."""

    shared: dict[str, Any]
    data: dict[str, Any]
    _clf: Any = None

    def __post_init__(self) -> None:
        if self.shared.get("max_chunk") is not None:  # read by the methods' chunking and recorded by the runner
            os.environ["FEATVIS_MAX_CHUNK"] = str(self.shared["max_chunk"])

    @property
    def clf(self):
        if self._clf is None:
            s = self.shared
            self._clf = load_classifier(s["model"], s["device"], s["weights"], s["trust_checkpoint"],
                                        **model_overrides(s["mean"], s["std"], s["labels"], s["input_size"]))
        return self._clf

    def dataset(self, inputs: list[str] | None, needs: str | None = None):
        """The inputs as a Dataset, selected by --limit/--shuffle/--shard (None for none); `needs`: the command
        that needs an ImageFolder, said when a folder is not one."""
        if not inputs:
            return None
        from featvis.data import Dataset, parse_shard

        data = self.data
        dataset = Dataset.from_inputs(inputs, labels=self.clf.labels, imagefolder=data.get("imagefolder", False),
                                      needs=needs)
        if data.get("limit") or data.get("shuffle") or data.get("shard"):
            dataset = dataset.select(limit=data.get("limit"), shuffle=data.get("shuffle", False),
                                     seed=self.shared["seed"], shard=parse_shard(data.get("shard")))
        return dataset

    def executor(self):
        return executor_from(self.shared)


def run_command(task, inputs: list[str] | None, shared: dict[str, Any], data: dict[str, Any]) -> int:
    """Load the model, run `task` through the runner with progress, then print its table or JSON."""
    from featvis.tasks.runner import run_task

    quiet, as_json = shared["quiet"], shared["json"]
    ctx = Context(shared, data)
    clf = ctx.clf
    dataset = ctx.dataset(inputs) if inputs is not None else None
    executor = ctx.executor()
    show = not quiet and not as_json and err_console().is_terminal
    keep = shared["output"] is not None
    with contextlib.ExitStack() as stack:
        folder = shared["output"] if keep else stack.enter_context(tempfile.TemporaryDirectory(prefix="featvis-"))
        view = stack.enter_context(ProgressView(task.name, show, speak=not quiet and not as_json))
        run = run_task(task, dataset, folder, clf=clf, executor=executor, batch_size=shared["batch_size"],
                       seed=shared["seed"], overwrite=shared["overwrite"], progress=view)
        counts = run.manifest.get("counts", {})
        if as_json:
            emit({"task": run.task, "model": run.model_id, "output": str(run.folder) if keep else None,
                  "summary": run.summary, "items": run.items, "failed": run.failed, "counts": counts})
        elif not quiet:
            if run.items:
                tables = type(task).overview(run)
                for i, table in enumerate(tables if isinstance(tables, list) else [tables]):
                    print_table(table, run.model_id if i == 0 else None)
            if keep:
                say(f"results in {run.folder} ({counts.get('done', len(run.items))} done, {len(run.failed)} failed)")
    if run.failed and not run.items:
        return 2
    return 1 if run.failed else 0


def emit(obj: Any) -> None:
    """The command's machine-readable result: one JSON document on stdout (NaN/inf as null)."""
    from featvis._io import dumps

    sys.stdout.write(dumps(obj))
    sys.stdout.flush()


def cell(v: Any) -> str:
    """A table value: floats with three decimals everywhere (a probability of 1 reads 1.000, as 0.998 beside it
    does), large ones with thousands separators; integers as they are."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.3f}"
    return "-" if v is None else str(v)


def print_table(table, model_id: str | None = None, limit: int = TABLE_ROWS) -> None:
    """A task table (featvis.tasks.Table) on the terminal; long tables are cut with a note."""
    if table is None:
        return
    # The caption is the table's title, on stdout with it: on stderr it landed after the table when both were
    # redirected to one file (stdout is block-buffered there).
    title = f"{table.caption} — {model_id}" if model_id else table.caption
    t = Table(*table.header, title=escape(title), title_justify="left")
    for row in list(table.rows)[:limit]:
        t.add_row(*(escape(cell(v)) for v in row))
    out_console().print(t)
    if len(table.rows) > limit:
        out_console().print(f"… and {len(table.rows) - limit} more rows in results.json", markup=False,
                          highlight=False)


def print_rows(header: list[str], rows: list[list[Any]], as_json: bool, records: Any) -> None:
    """A listing command's output: JSON records or a table."""
    if as_json:
        emit(records)
        return
    t = Table(*header)
    for r in rows:
        t.add_row(*(escape(cell(v)) for v in r))
    out_console().print(t)
