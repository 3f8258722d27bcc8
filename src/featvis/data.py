"""Datasets: inputs as a stream of items with a stable identity.

An input is a file, a folder (recursive), a glob, a text list (one path per line) or a CSV list (a `path` column
and an optional `label` column), or a folder in the ImageFolder layout (one sub-folder per class; folder names are
class names or indices, resolved through the model's labels). Each item has a *key* (file-name safe, unique in a
run: the stem and a hash of the resolved path) and a *seed* derived from the run's seed and the key, so an item
gets the same random draws whichever batch, worker or resumed run processes it.

Selection is deterministic: `limit`, `shuffle` (seeded) and `shard=(i, n)` (a partition by the key's hash, so the
n shards are disjoint, cover the set, and don't change when other files are added).

Example:
    >>> ds = Dataset.from_inputs(["val/"], labels=clf.labels, imagefolder=True).select(limit=100, shuffle=True)
    >>> for item in ds: item.key, item.path, item.label
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from featvis.errors import SHOWN_PATH_CHARS, FeatvisError, closest, display_path, path_kind
from featvis.images import IMAGE_SUFFIXES

LIST_SUFFIXES = {".txt", ".csv", ".tsv", ".lst"}
PATH_COLUMNS = ("path", "image", "file", "filename")
LABEL_COLUMNS = ("label", "class", "target")


def shown(path: str | os.PathLike) -> str:
    """A path as printable text (undecodable bytes and control characters as backslash escapes)."""
    return display_path(path)


def _said(path: str | os.PathLike) -> str:
    """A path for a message: printable, and cut in the middle when very long."""
    return display_path(path, SHOWN_PATH_CHARS)


def _real(path: str | os.PathLike) -> str:
    """The absolute path with links resolved as far as they go: unlike `Path.resolve`, a symlink loop is no error
    here (the item is kept, and reading it says what is wrong)."""
    return os.path.realpath(path)


def item_key(path: str | os.PathLike) -> str:
    """A file-name-safe key for an input file: its stem plus a short hash of its resolved path (no collisions)."""
    p = Path(path)
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in shown(p.stem))[:60] or "image"
    return f"{stem}-{hashlib.sha1(os.fsencode(_real(p))).hexdigest()[:8]}"


def item_seed(seed: int, key: str) -> int:
    """The seed of one item: a hash of the run's seed and the item's key (never its position)."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def class_key(index: int, name: str) -> str:
    """A class's item key: `0281-tabby_cat` (index first, so keys sort as the classes do; safe as a file name)."""
    return f"{index:04d}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace(" ", "_"))


def shard_of(key: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") % shards


@dataclass(frozen=True)
class Item:
    """One unit of work: an image file (`path`) or a unit such as a class or channel (`value`)."""

    key: str
    path: str | None = None  # image file (resolved, as str; may hold surrogate escapes)
    value: Any = None  # for unit tasks: a class index, a channel, ...
    label: int | None = None  # the true class, when the dataset knows it
    label_name: str | None = None  # the name as written in the dataset (folder / CSV), for messages
    seed: int = 0
    rel: str | None = None  # the path as the user knows it: relative to the one input folder, else as given
    image: Any = field(default=None, repr=False, compare=False)  # an in-memory image [1, 3, H, W] (no file)

    @property
    def name(self) -> str:
        """What to show for this item: its path relative to the input root (`cats/001.jpg`, so two `001.jpg` of an
        ImageFolder stay apart), else the file name, or the unit's key."""
        if self.rel:
            return shown(self.rel)
        return shown(Path(self.path).name) if self.path is not None else self.key

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": None if self.path is None else shown(self.path), "value": self.value,
                "label": self.label, "label_name": self.label_name, "seed": self.seed, "name": self.name}


@dataclass(frozen=True)
class Dataset:
    """A deterministic, re-iterable list of items (paths only: images are decoded when a batch runs)."""

    items: tuple[Item, ...]
    spec: dict[str, Any] = field(default_factory=dict)  # how it was made (for the manifest)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_labels(self) -> bool:
        return any(i.label is not None for i in self.items)

    @classmethod
    def from_inputs(cls, inputs: Sequence[str | os.PathLike], *, labels: Sequence[str] | None = None,
                    imagefolder: bool = False, needs: str | None = None) -> Dataset:
        """Files, folders, globs and list files; with `imagefolder`, folders are read as one sub-folder per class.

        Args:
            inputs: paths, folders, glob patterns (`val/**/*.JPEG`) or `.txt`/`.csv` lists.
            labels: the model's `Labels` (resolves class names from folders and CSV columns).
            imagefolder: read folders as ImageFolder layouts (the sub-folder names are the true classes).
            needs: what requires the layout (a task's name), said when a folder has no class sub-folders.
        """
        if not inputs:
            raise FeatvisError("no inputs given; name image files, folders, globs or a .txt/.csv list")
        found: list[tuple[Path, str | None]] = []
        roots: list[Path] = []  # the folder inputs: items are shown relative to the one root, if there is one
        for raw in inputs:
            text = os.fspath(raw)
            p = Path(text).expanduser()
            globbed = any(ch in str(text) for ch in "*?[")
            kind = "missing" if globbed and not os.path.lexists(p) else path_kind(p)
            if kind == "dir":
                roots.append(p)
                found += _image_folder(p, needs) if imagefolder else [(f, None) for f in _walk(p)]
            elif kind == "file" and p.suffix.lower() in LIST_SUFFIXES:
                found += _listing(p)
            elif kind == "file":
                found.append((p, None))
            elif kind == "other":
                raise FeatvisError(f"input '{_said(text)}' is not a regular file or folder (a pipe, socket or "
                                   "device); pass image files, folders, globs or a .txt/.csv list")
            elif globbed:
                hits = sorted(Path(h) for h in globlib.glob(os.path.expanduser(str(text)), recursive=True))
                hits = [h for h in hits if h.suffix.lower() in IMAGE_SUFFIXES and _is_candidate(h)]
                if not hits:
                    raise FeatvisError(f"pattern '{_said(text)}' matches no image files")
                found += [(h, None) for h in hits]
            else:
                raise FeatvisError(f"input '{_said(text)}' does not exist")
        if not found:
            raise FeatvisError("the inputs hold no image files")
        resolved = _resolve_labels(found, labels)
        root = roots[0] if len(roots) == 1 and len(inputs) == 1 else None
        items, seen = [], set()
        for path, (label, name) in resolved:
            key = item_key(path)
            if key in seen:
                continue
            seen.add(key)
            rel = os.path.relpath(path, root) if root is not None else os.fspath(path)
            items.append(Item(key, _real(path), label=label, label_name=name, rel=rel))
        spec = {"inputs": [shown(i) for i in inputs], "imagefolder": imagefolder, "count": len(items)}
        return cls(tuple(items), spec)

    @classmethod
    def from_tensors(cls, images: Any, names: Sequence[str] | None = None) -> Dataset:
        """Images already in memory ([B, 3, H, W] in [0, 1]) as items keyed "0", "1", ... (or by `names`): the
        runner treats them as it treats files (seeds from the keys, batches, records), without reading a file."""
        from featvis.images import check_images

        batch = check_images(images)
        keys = [str(i) for i in range(batch.shape[0])] if names is None else [str(n) for n in names]
        if len(set(keys)) != len(keys) or len(keys) != batch.shape[0]:
            raise FeatvisError(f"give one distinct name per image ({batch.shape[0]} images, {len(set(keys))} names)")
        items = tuple(Item(k, value=f"<image {k}>", image=batch[i:i + 1]) for i, k in enumerate(keys))
        return cls(items, {"inputs": "in memory", "count": len(items)})

    @classmethod
    def of_units(cls, units: Iterable[tuple[str, Any]], what: str) -> Dataset:
        """Items that are not images: (key, value) pairs such as classes or channels."""
        items = tuple(Item(key, value=value) for key, value in units)
        return cls(items, {"units": what, "count": len(items)})

    def by_class(self, labels=None) -> Dataset:
        """One item per true class, keyed `0281-tabby_cat`, whose value is {"class": index, "images": [paths]}
        (sorted, so the item and its seed do not depend on the order files were found). Unlabelled images are left
        out; no labelled image at all is an error naming what to do."""
        groups: dict[int, list[str]] = {}
        for it in self.items:
            if it.label is not None and it.path is not None:
                groups.setdefault(int(it.label), []).append(it.path)
        if not groups:
            raise FeatvisError("the inputs have no labelled images: give an ImageFolder (one sub-folder per class, "
                               "named as the model names it; --imagefolder on the command line) or a .csv list "
                               "with a label column")
        units = [(class_key(c, labels[c] if labels is not None else str(c)), {"class": c, "images": sorted(paths)})
                 for c, paths in sorted(groups.items())]
        return Dataset(tuple(Item(key, value=value, label=value["class"]) for key, value in units),
                       {**self.spec, "units": "classes", "count": len(units)})

    def select(self, *, limit: int | None = None, shuffle: bool = False, seed: int = 0,
               shard: tuple[int, int] | None = None) -> Dataset:
        """The items of shard `i` of `n` (by key hash), shuffled (seeded) and cut to `limit`."""
        items = list(self.items)
        if shard is not None:
            i, n = shard
            if not (n >= 1 and 0 <= i < n):
                raise FeatvisError(f"shard {i}/{n} is not valid; write I/N with 0 <= I < N, e.g. --shard 0/4")
            items = [it for it in items if shard_of(it.key, n) == i]
        if shuffle:
            items.sort(key=lambda it: it.key)
            random.Random(seed).shuffle(items)
        if limit is not None:
            if limit < 1:
                raise FeatvisError(f"limit must be at least 1, got {limit}")
            items = items[:limit]
        spec = {**self.spec, "limit": limit, "shuffle": shuffle, "shuffle_seed": seed if shuffle else None,
                "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "count": len(items)}
        return Dataset(tuple(items), spec)

    def seeded(self, seed: int) -> Dataset:
        """The same items, each with its seed derived from `seed` and its key."""
        return Dataset(tuple(replace(it, seed=item_seed(seed, it.key)) for it in self.items), self.spec)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` as (I, N)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise FeatvisError(f"shard {text!r} must be written I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise FeatvisError(f"shard {text!r} is not valid; write I/N with 0 <= I < N")
    return i, n


def _walk(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable order (each directory sorted)."""
    out: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: os.fsencode(e.name))
        except OSError as e:
            raise FeatvisError(f"cannot list folder '{_said(d)}': {e.strerror}") from None
        subdirs = []
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                subdirs.append(Path(e.path))
            elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".") \
                    and _is_candidate(Path(e.path)):
                out.append(Path(e.path))
        stack.extend(reversed(subdirs))
    if not out:
        raise FeatvisError(f"folder '{_said(root)}' holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def _is_candidate(path: Path) -> bool:
    """An image-named entry worth an item: a regular file, or one the OS cannot look up (a symlink loop, no
    permission), kept so that reading it records one line saying what is wrong, as for any unreadable image.
    Dangling links and folders named like images are no images."""
    try:
        return path_kind(path) == "file"
    except FeatvisError:
        return True


def _image_folder(root: Path, needs: str | None = None) -> list[tuple[Path, str | None]]:
    try:
        classes = sorted(e for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise FeatvisError(f"cannot list folder '{_said(root)}': {e.strerror}") from None
    if not classes:
        hint = f"{needs} needs one sub-folder per class, named as the model names it" if needs else \
            "drop --imagefolder to read it as a plain folder"
        raise FeatvisError(f"'{_said(root)}' has no class sub-folders; an ImageFolder layout is ROOT/CLASS/IMAGE "
                           f"({hint})")
    out = []
    for d in classes:
        try:
            out += [(f, d.name) for f in _walk(d)]
        except FeatvisError:
            continue  # an empty class folder holds nothing to do
    if not out:
        raise FeatvisError(f"'{_said(root)}' holds no image files in its class folders")
    return out


def _listing(path: Path) -> list[tuple[Path, str | None]]:
    """A .txt list (one path per line, `#` comments) or a .csv/.tsv with a path column and an optional label."""
    base = path.parent
    try:
        text = path.read_text("utf-8-sig")
    except OSError as e:
        raise FeatvisError(f"cannot read list '{_said(path)}': {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FeatvisError(f"list '{_said(path)}' is not UTF-8 text; save it as UTF-8 (one path per line)") from None
    rows: list[tuple[str, str | None]] = []
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.reader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        table = [r for r in reader if r and any(c.strip() for c in r)]
        if not table:
            raise FeatvisError(f"list '{_said(path)}' is empty")
        header = [h.strip().lower() for h in table[0]]
        pcol = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
        lcol = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if pcol is None:  # no header: path[, label]
            pcol, lcol = 0, (1 if len(table[0]) > 1 else None)
        else:
            table = table[1:]
        for r in table:
            rows.append((r[pcol].strip(), r[lcol].strip() if lcol is not None and lcol < len(r) and r[lcol].strip()
                         else None))
    else:
        rows = [(ln.strip(), None) for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out, missing = [], []
    for name, label in rows:
        p = Path(name).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            kind = path_kind(p, "entry")
        except FeatvisError as e:
            raise FeatvisError(f"list '{_said(path)}': {e}") from None
        (out if kind == "file" else missing).append((p, label))
    if missing:
        first = ", ".join(f"'{_said(m[0])}'" for m in missing[:3])
        raise FeatvisError(f"list '{_said(path)}' names {len(missing)} file(s) that do not exist ({first}"
                           f"{', …' if len(missing) > 3 else ''}); fix the list (paths are relative to its folder)")
    if not out:
        raise FeatvisError(f"list '{_said(path)}' names no files")
    return out


def _resolve_labels(found: list[tuple[Path, str | None]], labels) -> list[tuple[Path, tuple[int | None, str | None]]]:
    names = sorted({n for _, n in found if n is not None})
    if not names:
        return [(p, (None, None)) for p, _ in found]
    if labels is None:
        raise FeatvisError("the dataset names classes but no model labels were given to resolve them")
    index: dict[str, int] = {}
    unknown = []
    for n in names:
        try:
            index[n] = labels.lookup(n)
        except (FeatvisError, ValueError):
            unknown.append(n)
    if unknown:
        near = closest(unknown[0], labels.all_names())
        listed = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                              else "")
        raise FeatvisError(f"{len(unknown)} class name(s) in the dataset are not classes of the model: {listed}"
                           f"{'; e.g. did you mean ' + ', '.join(map(repr, near)) + '?' if near else ''} "
                           "(use the model's class names, indices or WordNet ids)")
    return [(p, (None, None) if n is None else (index[n], n)) for p, n in found]
