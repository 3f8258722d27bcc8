"""Safe loading of local model files: safetensors and state_dicts (weights_only unpickling); TorchScript if trusted.

Two kinds of file run code from the file when loaded, and are refused unless the caller says they trust it:
a pickle that needs arbitrary code (a whole pickled `nn.Module`, or a malicious file), because
`torch.load(weights_only=False)` runs whatever it contains; and any TorchScript archive, because it is compiled
code too: `torch.jit.load` runs the `__setstate__` of its modules, which can open, map and write files
(`torch.from_file(..., shared=True)`). Weights alone (safetensors, or a state_dict read with `weights_only=True`)
load without trust.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path

import torch
from torch import nn

from featvis.errors import FeatvisError

StateDict = dict[str, torch.Tensor]
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")


def is_torchscript(path: Path) -> bool:
    """True if `path` is a TorchScript archive (a zip holding compiled `code/`), not a plain torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def load_checkpoint(path: str | Path, *, trust: bool = False) -> nn.Module | StateDict:
    """Load a local model file safely: a state_dict, or (only when trusted) a TorchScript or pickled module.

    Args:
        path: a `.pt`/`.pth`/`.ckpt` (torch.save'd state_dict, TorchScript archive or pickled module) or
            `.safetensors` file.
        trust: allow files that run code when loaded: TorchScript archives and full unpickling. Only for files
            from a trusted source; without it both are refused with a FeatvisError before any of their code runs.

    Returns:
        A flat `{name: tensor}` state_dict, or, when trusted, an `nn.Module` (TorchScript or a pickled module).
    """
    path = Path(path)
    if not path.is_file():
        raise FeatvisError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise FeatvisError(f"checkpoint {str(path)!r} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise FeatvisError(f"cannot read safetensors file {str(path)!r}: {e}") from None
    if is_torchscript(path):
        if not trust:
            raise FeatvisError(
                f"refusing to load {str(path)!r}: it is a TorchScript archive, which runs code from the file when "
                "loaded (it can read and write files); if you trust its source pass trust_checkpoint=True "
                "(CLI: --trust-checkpoint), or save its weights as a state_dict or safetensors file and load them "
                "into a named architecture (--model ARCH --weights FILE)"
            )
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FeatvisError(f"cannot load TorchScript file {str(path)!r}: {first}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        found = _pickle_globals(path)
        if found is None:
            raise FeatvisError(f"cannot read checkpoint {str(path)!r}: not a torch checkpoint (corrupt or another "
                               "format)") from None
        what = f" (it imports {', '.join(found[:3])})" if found else ""
        raise FeatvisError(
            f"refusing to load {str(path)!r}: it is a pickle that runs code when loaded{what}; if you trust its "
            "source pass trust_checkpoint=True (CLI: --trust-checkpoint), or re-save it as a state_dict or "
            "safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise FeatvisError(f"cannot read checkpoint {str(path)!r}: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None
    if isinstance(obj, nn.Module):
        return obj
    return _as_state_dict(obj, path)


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals a pickle imports (read without executing it), or None if it is not a readable pickle."""
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            data = zf.read(names[0])
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in {"GLOBAL", "INST"}:
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, pickle.UnpicklingError):
        return None
    return [g for g in dict.fromkeys(found) if not g.startswith(("torch.", "collections.OrderedDict"))]


def _as_state_dict(obj: object, path: Path) -> StateDict:
    """Find the tensor dict inside common checkpoint layouts ({'state_dict': ...}, Lightning, etc.)."""
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k).removeprefix("module."): v for k, v in obj.items()}
        for key in _STATE_DICT_KEYS:
            if key in obj:
                return _as_state_dict(obj[key], path)
    raise FeatvisError(
        f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict or module; expected a dict of "
        "tensors (optionally under 'state_dict' or 'model')"
    )
