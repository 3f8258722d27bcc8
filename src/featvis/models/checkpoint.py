"""Safe loading of local model files: safetensors and state_dicts (weights_only unpickling); TorchScript if trusted.

Two kinds of file run code from the file when loaded, and are refused unless the caller says they trust it:
a pickle that needs arbitrary code (a whole pickled `nn.Module`, or a malicious file), because
`torch.load(weights_only=False)` runs whatever it contains; and any TorchScript archive, because it is compiled
code too: `torch.jit.load` runs the `__setstate__` of its modules, which can open, map and write files
(`torch.from_file(..., shared=True)`). Weights alone (safetensors, or a state_dict read with `weights_only=True`)
load without trust.

A file that cannot be read — missing, not a regular file, unreadable, damaged, truncated, or not a checkpoint at
all — is one FeatvisError line naming it, whatever the reader underneath raised (issue 22). The format is read
from the file's first bytes, not its name, so a safetensors file saved as `.bin` loads too.
"""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
import pickle
import pickletools
import re
import stat
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from featvis.errors import FeatvisError, display_path

StateDict = dict[str, torch.Tensor]
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
_MAX_NESTING = 4  # {'state_dict': {'model': {...}}} is as deep as real layouts go; a cycle stops here
_DETAIL_CHARS = 160  # how much of a reader's own message a one-line error quotes
_HEAD_BYTES = 32  # enough for every magic below
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # pickle of torch.serialization.MAGIC_NUMBER
_LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, its storage keys
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6 and TorchScript archives (torch.serialization._is_zipfile)
_WEIGHTS_ONLY_REASON = "WeightsUnpickler error:"  # what follows is the reason (torch/serialization.py)
# Sentences torch appends that are about torch, not the file: miniz's "please report it", the 2.6 default change.
_BOILERPLATE = (" This is an internal miniz error", " In PyTorch 2.6,")
# What torch's weights-only unpickler says when a file needs code it will not run, as opposed to bytes it cannot
# parse (torch/_weights_only_unpickler.py): a global outside its allowlist, or an object it may not build.
_NEEDS_CODE = ("Unsupported global", "is blocked", "Can only create new object", "Can only build")
_WEIGHTS_GLOBALS = ("torch.", "collections.OrderedDict")  # what a plain state_dict's pickle imports
_NOT_WEIGHTS = "not a checkpoint; pass the model's weights file (.safetensors, .pt, .pth, .bin)"
_FOREIGN = {  # magic bytes no checkpoint starts with: what the file is, and what to do
    b"\x89PNG": f"a PNG image, {_NOT_WEIGHTS}", b"\xff\xd8\xff": f"a JPEG image, {_NOT_WEIGHTS}",
    b"GIF8": f"a GIF image, {_NOT_WEIGHTS}", b"\x93NUMPY": f"a NumPy .npy array, {_NOT_WEIGHTS}",
    b"\x89HDF": f"an HDF5 (Keras) file, {_NOT_WEIGHTS}", b"PK\x05\x06": f"an empty zip archive, {_NOT_WEIGHTS}",
    b"\x1f\x8b": "gzip data; decompress it (gunzip) and load the file inside",
    b"<!DOCTYPE": "an HTML page, not a checkpoint (a failed download?); download it again",
    b"<html": "an HTML page, not a checkpoint (a failed download?); download it again",
    b"version https://git-lfs": "a Git LFS pointer, not the file itself; run git lfs pull where it was cloned",
}
_UNREADABLE = ("the file is damaged, truncated or not a checkpoint; download or copy it again, or re-save it "
               "(torch.save(model.state_dict(), path) or safetensors)")


def is_torchscript(path: Path) -> bool:
    """True if `path` is a TorchScript archive (a zip holding compiled `code/`), not a plain torch.save file.

    False for a file that is not a zip or whose zip directory is too damaged to list.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") or n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError):
        return False  # ValueError includes UnicodeDecodeError: a damaged member name


def load_checkpoint(path: str | Path, *, trust: bool = False) -> nn.Module | StateDict:
    """Load a local model file safely: a state_dict, or (only when trusted) a TorchScript or pickled module.

    Args:
        path: a `.pt`/`.pth`/`.ckpt` (torch.save'd state_dict, TorchScript archive or pickled module) or
            `.safetensors` file.
        trust: allow files that run code when loaded: TorchScript archives and full unpickling. Only for files
            from a trusted source; without it both are refused with a FeatvisError before any of their code runs.

    Returns:
        A flat `{name: tensor}` state_dict, or, when trusted, an `nn.Module` (TorchScript or a pickled module).

    Raises:
        FeatvisError: one line naming the file, for every file it refuses or cannot read.
    """
    path = Path(path)
    where = f"'{display_path(path)}'"
    head = _head(path, where)
    kind = _kind(head, path.suffix.lower())
    foreign = _foreign(head) if kind == "unknown" else None
    if foreign:
        raise FeatvisError(f"cannot read checkpoint {where}: it is {foreign}")
    try:
        if kind == "safetensors":
            return _load_safetensors(path, where)
        return _load_torch(path, where, kind, trust)
    except FeatvisError:
        raise
    except MemoryError:
        # Reported, not swallowed: a damaged length field makes the reader ask for more memory than exists, and
        # the failed allocation leaves the process healthy, so the one line says both possible causes.
        raise FeatvisError(f"cannot read checkpoint {where}: ran out of memory reading its {path.stat().st_size:,} "
                           "bytes; a damaged file can claim more data than it holds, otherwise free memory or use a "
                           "larger machine") from None
    except Exception as e:
        # The one broad catch, at the one boundary: on damaged bytes torch's zip reader and unpickler (and Python's
        # pickle when trusted) raise whatever the bytes lead them into — BadZipFile, UnicodeDecodeError,
        # struct.error, IndexError, KeyError, ValueError, OverflowError, RecursionError, NotImplementedError
        # (issue 22's fuzz, tests/models/test_checkpoint_fuzz.py). Each means "this file cannot be read" and comes
        # before anything is returned; the reader's own words ride along. (A trusted file's own code may raise
        # too: its message is quoted the same way.) KeyboardInterrupt and SystemExit are not Exceptions and pass.
        raise FeatvisError(f"cannot read checkpoint {where}{_described(kind)}: {_detail(e)}; {_UNREADABLE}") \
            from None


def _head(path: Path, where: str) -> bytes:
    """The first bytes of `path`, after one-line errors for anything that is not a readable, non-empty file."""
    try:
        mode = path.stat().st_mode  # follows symlinks: a link to a checkpoint is that checkpoint
    except (FileNotFoundError, NotADirectoryError):
        raise FeatvisError(f"checkpoint {where} does not exist; check the path") from None
    except OSError as e:  # a symlink loop, a name too long, no permission to look inside a folder on the way
        raise FeatvisError(f"cannot open checkpoint {where}: {_os_problem(e)}") from None
    except ValueError:  # an embedded NUL byte
        raise FeatvisError(f"checkpoint {where} is not a valid path (it holds a NUL byte)") from None
    if stat.S_ISDIR(mode):
        raise FeatvisError(f"checkpoint {where} is a folder, not a file; pass the weights file inside it (e.g. "
                           "model.safetensors or pytorch_model.bin)")
    if not stat.S_ISREG(mode):
        raise FeatvisError(f"checkpoint {where} is not a regular file (a device, FIFO or socket); pass a saved "
                           "weights or model file")
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as e:
        raise FeatvisError(f"cannot open checkpoint {where}: {_os_problem(e)}") from None
    if not head:
        raise FeatvisError(f"checkpoint {where} is empty (0 bytes); the download or save did not finish, do it again")
    return head


def _os_problem(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; fix its permissions or copy it somewhere readable"
    if e.errno == errno.ELOOP:
        return "a symbolic link loop; fix or remove the link"
    if e.errno == errno.ENAMETOOLONG:
        return "the name is too long for the file system; rename or move it"
    return f"{_printable(e.strerror or str(e))}; check the path and the file"


def _kind(head: bytes, suffix: str) -> str:
    """The format the first bytes say: "zip" (torch.save, TorchScript), "safetensors", "pickle" or "unknown"."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) > 8 and head[8:9] == b"{":  # an 8-byte little-endian header length, then the JSON header
        return "safetensors"
    if suffix == ".safetensors":
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+ (legacy torch.save starts with its magic number so)
        return "pickle"
    return "unknown"


def _foreign(head: bytes) -> str | None:
    """What a file that is not a checkpoint is, from magic bytes no checkpoint starts with (None: no idea)."""
    return next((what for magic, what in _FOREIGN.items() if head.startswith(magic)), None)


def _described(kind: str) -> str:
    return {"zip": " (a torch.save zip archive)", "safetensors": " (a safetensors file)",
            "pickle": " (a pickle or legacy torch.save file)"}.get(kind, "")


def _load_safetensors(path: Path, where: str) -> StateDict:
    from safetensors.torch import load, load_file

    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:  # safetensors opens only UTF-8 names: read the bytes here instead of mapping them
        tensors = load(path.read_bytes())
    else:
        tensors = load_file(path, device="cpu")
    if not tensors:
        raise FeatvisError(f"safetensors file {where} holds no tensors; save the model's weights into it")
    return tensors


def _load_torch(path: Path, where: str, kind: str, trust: bool) -> nn.Module | StateDict:
    """torch.save files: read weights-only first, even when trusted, so that full unpickling (which runs the
    file's code, and on damaged bytes can ask CPython for gigabytes of memo) is reached only by a well-formed
    pickle that needs it."""
    if kind == "zip" and is_torchscript(path):
        if not trust:
            raise _refuse_torchscript(where)
        with open(path, "rb") as f:
            return torch.jit.load(f, map_location="cpu")
    with open(path, "rb") as f:  # a file object: torch.load would hand any name ending .safetensors to safetensors
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            needs = _needs_full_unpickling(path, e)
            if needs is None:
                raise  # damaged: the one boundary in load_checkpoint says so
            if not trust:
                raise FeatvisError(
                    f"refusing to load {where}: {needs}; if you trust its source pass trust_checkpoint=True (CLI: "
                    "--trust-checkpoint), or re-save it as a state_dict or safetensors") from None
            obj = _load_trusted(f, where)
        except RuntimeError as e:
            if "TorchScript" in str(e):  # a zip torch's reader sees as TorchScript where Python's zipfile did not
                if not trust:
                    raise _refuse_torchscript(where) from None
                f.seek(0)
                return torch.jit.load(f, map_location="cpu")
            if "legacy .tar format" not in str(e):
                raise
            if not trust:
                raise FeatvisError(
                    f"refusing to load {where}: it is (or looks like) a tar archive, torch's pre-1.0 format, which "
                    "only full unpickling reads and that runs code; if you trust its source pass "
                    "trust_checkpoint=True (CLI: --trust-checkpoint), or re-save it as a state_dict") from None
            obj = _load_trusted(f, where)
    if isinstance(obj, nn.Module):
        return obj
    return _as_state_dict(obj, where)


def _load_trusted(f: BinaryIO, where: str) -> object:
    f.seek(0)
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:  # the class of a pickled module is not importable here
        raise FeatvisError(f"cannot load {where}: it needs a class that is not importable here ({_detail(e)}); "
                           "import the module that defines the model first, or save its state_dict and load "
                           "that into a named architecture") from None


def _refuse_torchscript(where: str) -> FeatvisError:
    return FeatvisError(
        f"refusing to load {where}: it is a TorchScript archive, which runs code from the file when "
        "loaded (it can read and write files); if you trust its source pass trust_checkpoint=True "
        "(CLI: --trust-checkpoint), or save its weights as a state_dict or safetensors file and load them "
        "into a named architecture (--model ARCH --weights FILE)")


def _needs_full_unpickling(path: Path, e: pickle.UnpicklingError) -> str | None:
    """Why a file torch's weights-only reader stopped at needs full unpickling ("... it imports os.system"), or None
    if it is damaged instead: its pickle does not parse, or it imports nothing beyond what weights need and
    torch stopped for another reason."""
    said = re.findall(r"GLOBAL (\S+)", str(e))[:1]
    torch_refused = any(m in str(e) for m in _NEEDS_CODE)  # torch parsed up to something it will not build
    found = _pickle_globals(path)
    foreign = [g for g in found or [] if not g.startswith(_WEIGHTS_GLOBALS)]
    if foreign or said:
        return f"it is a pickle that runs code when loaded (it imports {_printable(', '.join(foreign[:3] or said))})"
    if torch_refused:
        return "it is a pickle that runs code when loaded (it builds objects a weights-only load does not allow)"
    if found is not None and "Unsupported operand" in str(e):  # well-formed, in a protocol torch's reader lacks
        return ("it is a pickle in a protocol torch's weights-only reader does not read, and full unpickling runs "
                "any code it holds")
    return None


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals the pickle(s) of a torch file import (read without executing them); None if they do not parse.

    A legacy torch.save file is five pickles in a row (magic number, protocol, system info, the object, its
    storage keys) before raw tensor bytes; a zip holds one in `data.pkl`; a raw pickle is one.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                data = zf.read(names[0])
                return _globals(io.BytesIO(data), len(data), 1)
        # A map, not a file: a damaged length makes genops ask for that many bytes, which a map answers with
        # what is there, and a file would first try to allocate.
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            legacy = mapped[:len(_LEGACY_MAGIC)] == _LEGACY_MAGIC
            return _globals(mapped, len(mapped), _LEGACY_PICKLES if legacy else 1)
    except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, struct.error, KeyError,
            IndexError, NotImplementedError):  # damaged bytes (ValueError includes UnicodeDecodeError)
        return None


def _globals(f: BinaryIO | mmap.mmap, size: int, pickles: int) -> list[str] | None:
    found: list[str] = []
    for _ in range(pickles):
        strings: list[str] = []
        for n, (op, arg, pos) in enumerate(pickletools.genops(f)):
            if op.name == "FRAME" and int(arg) > size - pos:
                return None  # a frame longer than the file: CPython's unpickler would try to allocate it
            if op.name in {"GLOBAL", "INST"}:
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name in {"PUT", "BINPUT", "LONG_BINPUT"} and int(arg) > n:
                return None  # picklers number memo slots in order; a larger one is a damaged length field
            elif isinstance(arg, str):
                strings.append(arg)
    return sorted(dict.fromkeys(found), key=lambda g: g.startswith(_WEIGHTS_GLOBALS))


def _as_state_dict(obj: object, where: str, depth: int = 0) -> StateDict:
    """Find the tensor dict inside common checkpoint layouts ({'state_dict': ...}, Lightning, etc.)."""
    if isinstance(obj, dict) and depth < _MAX_NESTING:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k).removeprefix("module."): v for k, v in obj.items()}
        for key in _STATE_DICT_KEYS:
            if key in obj:
                return _as_state_dict(obj[key], where, depth + 1)
    raise FeatvisError(
        f"checkpoint {where} holds a {type(obj).__name__}, not a state_dict or module; expected a dict of "
        "tensors (optionally under 'state_dict' or 'model')"
    )


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]], nan_only: bool = False) -> list[str]:
    """The names of the floating-point tensors holding NaN or ±inf (only NaN with `nan_only`), in order."""
    bad = []
    for name, t in named:
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        t = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()
        # NaN and inf survive a sum, so a finite sum means a finite tensor: one cheap reduction per tensor (a
        # model's worth in milliseconds); the exact test runs only where the sum is not finite (or overflowed).
        if math.isfinite(float(t.sum())):
            continue
        if bool(t.isnan().any() if nan_only else ~torch.isfinite(t).all()):
            bad.append(name)
    return bad


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _detail(e: BaseException) -> str:
    """A reader's message as a short printable fragment: the line that says what went wrong, and its type where the
    text is terse. torch wraps the weights-only unpickler's reason in paragraphs about its defaults, and miniz's in
    a request to report it: both are cut away."""
    text = str(e)
    if _WEIGHTS_ONLY_REASON in text:
        text = text.split(_WEIGHTS_ONLY_REASON, 1)[1]
    text = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for tail in _BOILERPLATE:
        text = text.split(tail)[0]
    text = _printable(text)
    if len(text) > _DETAIL_CHARS:
        text = text[:_DETAIL_CHARS] + "…"
    if isinstance(e, RuntimeError) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
