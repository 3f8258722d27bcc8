"""What a task is: typed parameters, `run(clf, batch) -> outputs`, a summary, run-level artifacts, a report section.

A task holds no state besides its frozen parameters, so it can be sent to another process (a Ray worker) as is;
the classifier never travels (workers rebuild it from the run's model source). Everything a task writes goes
through the runner, which owns batching, seeds, atomic writes, resume, errors, the manifest and progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from featvis._registry import Registry
from featvis.data import Dataset, Item
from featvis.errors import FeatvisError


@dataclass(frozen=True)
class FieldDoc:
    """What a front end needs to know of a task parameter, declared with it (`param(...)`): its help, its flag and
    short flag when not `--field-name`, its metavar, bounds, the words it takes beside a list ("all"), and whether
    the CLI offers it at all (some are set by the web or a recipe only)."""

    help: str
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    low: float | None = None
    high: float | None = None
    words: tuple[str, ...] = ()
    cli: bool = True
    show_default: bool = True


def param(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          **doc: Any) -> Any:
    """A field of a task's Params with its documentation (`FieldDoc`): the CLI builds its option from it, with the
    field's own default, so no front end restates a parameter.

    Example:
        >>> k: int = param(9, help="Examples per channel, top and bottom.", short="-k", low=1, high=100)
    """
    meta = {FIELD_DOC: FieldDoc(help, **doc)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


FIELD_DOC = "featvis"  # the dataclass-field metadata key of a FieldDoc


def field_doc(f: dataclasses.Field) -> FieldDoc | None:
    return f.metadata.get(FIELD_DOC)


@dataclass(frozen=True)
class Batch:
    """Items to process together; for image tasks `images` holds the loaded ones ([B, 3, H, W] in [0, 1])."""

    items: list[Item]
    images: torch.Tensor | None = None

    @property
    def seeds(self) -> list[int]:
        return [i.seed for i in self.items]

    @property
    def labels(self) -> list[int | None]:
        return [i.label for i in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Output:
    """What one item produced: a JSON record and files (relative posix path -> bytes), written atomically."""

    record: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """A table for the terminal and the report: a caption, a header and rows of plain values."""

    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass
class Section:
    """A report section: a title, an introduction (HTML the task writes), figures (run-relative paths) and tables."""

    title: str
    intro: str
    figures: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the run folder, caption)
    tables: list[Table] = field(default_factory=list)


class Task:
    """Base class of the tasks. Subclasses set `name`, `title`, `Params` and implement `run`.

    Class attributes:
        name: the registry name (also the manifest's `task`).
        title: what a person calls it.
        kind: "images" (inputs are image files), "units" (the task makes its own items: classes, channels) or
            "classes" (inputs are labelled images, an ImageFolder; one item per class holds its images' paths).
        Params: a frozen dataclass of the task's parameters; `__post_init__` validates what needs no model.
        default_batch: items per batch unless the caller says otherwise.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    kind: ClassVar[str] = "images"
    Params: ClassVar[type] = object
    default_batch: ClassVar[int] = 8

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        if params is None:
            known = {f.name for f in dataclasses.fields(self.Params)}
            unknown = sorted(set(kwargs) - known)
            if unknown:
                from featvis.errors import did_you_mean

                raise did_you_mean(f"{self.name} parameter", unknown[0], sorted(known))
            params = self.Params(**kwargs)
        elif kwargs:
            params = dataclasses.replace(params, **kwargs)
        if not isinstance(params, self.Params):
            raise FeatvisError(f"{self.name} takes {self.Params.__name__}, got {type(params).__name__}")
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def __reduce__(self):  # send only the parameters to workers
        return (type(self), (self.params,))

    # -- what the runner calls -----------------------------------------------------------------------------------

    def param_dict(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (recorded in the manifest, compared on resume)."""
        return _plain(dataclasses.asdict(self.params))

    def prepare(self, clf) -> None:
        """Check the parameters against the model (class names, layers, channel counts); raise before any write."""

    def needs_labels(self) -> bool:
        """True when the parameters ask for each image's true class (target "true")."""
        return False

    def units(self, clf) -> Dataset:
        """The items of a unit task (classes, channels)."""
        raise FeatvisError(f"{self.name} works on images; give input images")

    def units_from(self, data: Dataset, clf) -> Dataset:
        """The items of a "classes" task from its labelled inputs (default: one item per class, `Dataset.by_class`)."""
        return data.by_class(clf.labels)

    def run(self, clf, batch: Batch) -> list[Output]:
        """Process one batch; one Output per item, in order."""
        raise NotImplementedError

    def summarize(self, records: list[dict[str, Any]], info: Mapping[str, Any]) -> dict[str, Any]:
        """The run's summary from every finished item's record; `info` has the model id and labels."""
        return {"items": len(records)}

    def finalize(self, records: list[dict[str, Any]], summary: dict[str, Any], info: Mapping[str, Any]
                 ) -> dict[str, bytes]:
        """Run-level files (grids, curves, CSV), written after every item is done."""
        return {}

    # -- what front ends read ------------------------------------------------------------------------------------

    @classmethod
    def section(cls, run) -> Section:
        """The report section, drawn only from the stored results of `run` (a `featvis.tasks.results.Run`)."""
        return Section(cls.title or cls.name, "")

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        """The files of one item a live front end shows as it finishes (name → run-relative path, from the
        record): the web page's images. Front ends read this, never a task's record keys."""
        return {}

    @classmethod
    def overview(cls, run) -> Table | list[Table] | None:
        """The table(s) a terminal shows when the run ends (default: the section's first table)."""
        tables = cls.section(run).tables
        return tables[0] if tables else None


class ClassTarget:
    """For tasks whose parameters have a `target`: None (the predicted class), "true" (each image's label),
    "random" (attacks only: drawn per image) or a class name/index, checked against the model's labels."""

    TARGET_WORDS: ClassVar[tuple[str, ...]] = ("true", "predicted")

    def prepare(self, clf) -> None:
        t = self.params.target  # type: ignore[attr-defined]
        if t is not None and not (isinstance(t, str) and t.strip().lower() in self.TARGET_WORDS):
            clf.labels.lookup(t)

    def needs_labels(self) -> bool:
        t = self.params.target  # type: ignore[attr-defined]
        return isinstance(t, str) and t.strip().lower() == "true"


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


TASKS: Registry[type[Task]] = Registry("task")


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task to the registry under its `name`."""
    TASKS.add(cls.name, cls)
    return cls


def item_name(record: Mapping[str, Any]) -> str:
    """What tables call an item: its `name` (the path relative to the input root, so `cats/001.jpg` and
    `dogs/001.jpg` stay apart), else its input file's name (runs from before `name` was recorded), or '-'."""
    from featvis.data import shown

    name, path = record.get("name"), record.get("input")
    if isinstance(name, str) and name:
        return name
    return shown(Path(path).name) if isinstance(path, str) and path else "-"
