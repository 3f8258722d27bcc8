"""Atomic writes, JSON conversion and version stamps: the base every layer may use (it imports nothing above it).

Nothing is lost: each file is written to a temporary file beside it, fsynced and renamed into place, so a crash
leaves either the old file or the new one — never half of one. Temporary files start with `.` and end in `.tmp`;
`clean_temporaries` removes the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from featvis.errors import FeatvisError, os_error_message

TMP_SUFFIX = ".tmp"


def os_error(e: OSError, path: str | os.PathLike) -> FeatvisError:
    """One line for a failed write: what, where, and what to do (see `featvis.errors.os_error_message`)."""
    return FeatvisError(os_error_message(e, path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    The file gets the permissions the umask gives a new file (mkstemp's 0600 would hide results from the group).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise os_error(e, target) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as e:
        raise os_error(e, target) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Strict JSON (NaN/inf become null) with tensors, arrays, paths and dataclasses converted."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, default=jsonable, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj))


def npy_bytes(array: Any) -> bytes:
    """A numpy array (or tensor) as the bytes of an .npy file."""
    import numpy as np

    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getvalue()


def jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove the `.NAME.XXXX.tmp` files a killed writer left under `folder`; returns how many."""
    n = 0
    for p in Path(folder).rglob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what `platform` knows)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def numerics() -> dict[str, Any]:
    """What the floats of a run depend on besides the code and the seed: the CPU, the kernel set torch dispatches to
    on it (oneDNN/MKL pick AVX2, AVX-512 or AMX code by CPU, and their sums round differently), torch's threads
    (a reduction split over more threads adds in another order) and the precision switches."""
    import torch

    out: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                           "interop_threads": torch.get_num_interop_threads(),
                           "mkldnn": bool(torch.backends.mkldnn.is_available()),
                           "float32_matmul_precision": torch.get_float32_matmul_precision(),
                           "deterministic": torch.are_deterministic_algorithms_enabled()}
    with contextlib.suppress(AttributeError, RuntimeError):
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
        out["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def clean_temporaries_of(path: str | os.PathLike) -> int:
    """Remove the temporary files a killed writer of `path` left beside it (`.NAME.XXXX.tmp`); returns how many.
    Called before a redone item writes `path`: each item is written by one worker at a time."""
    target = Path(path)
    n = 0
    with contextlib.suppress(OSError):
        for p in target.parent.glob(f".{glob.escape(target.name)}.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("featvis", "torch", "numpy", "pillow", "efficientnet-lite-pytorch", "torchvision", "timm", "ray"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out
