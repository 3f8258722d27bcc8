"""Corrupt and foreign files end in one FeatvisError line naming the file, and never run code (issue 22, item 3).

A seeded corpus: real checkpoints (torch.save zip, legacy torch.save, raw pickle, safetensors, TorchScript, and
pickles whose loading would create a file) mutated by truncation, bit flips, insertions, deletions and overwrites;
random bytes with and without a format's magic; and ordinary files that are not checkpoints at all (a PNG, text,
zips with the wrong members, a directory, symlinks, a FIFO). Every file goes through `load_checkpoint`,
`load_model(path)` and `load_model("efficientnet-lite0", weights=path)`, untrusted; the benign ones also trusted.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

import featvis as fv
from featvis.errors import display_path
from featvis.models import load_checkpoint

from _models import ScriptedNet

SEED = 22  # the number; any seed must pass
MUTANTS_PER_BASE = 32  # 11 bases x 32 mutants + 32 random + 37 others: 421 files, a second or two
SENTINEL = "RAN_AT_LOAD"  # what a payload creates in the working directory if its code runs


class _Opener:
    """Unpickling this calls builtins.open(SENTINEL, "w"): the file appears iff the pickle's code ran."""

    def __reduce__(self):
        return (open, (SENTINEL, "w"))


def _tiny_state() -> dict[str, torch.Tensor]:
    """A few tensors of several dtypes and ranks: small files, so most mutations hit structure, not data."""
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(2, 3, 3, 3, generator=g), "conv.bias": torch.randn(2, generator=g),
            "fc.weight": torch.randn(4, 2, generator=g).half(), "bn.num_batches_tracked": torch.tensor(7)}


def _saved(obj: object, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def _bases() -> dict[str, tuple[bytes, str, bool]]:
    """name: (bytes, suffix, benign) — benign ones may also be loaded trusted (their code, if any, is harmless)."""
    sd = _tiny_state()
    ts, plain_ts = io.BytesIO(), io.BytesIO()
    torch.jit.save(torch.jit.script(ScriptedNet(SENTINEL)), ts)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())), plain_ts)
    return {
        "zip": (_saved(sd), ".pt", True),
        "zip-nested": (_saved({"state_dict": sd, "epoch": 3, "lr": [0.1, 0.01]}), ".pth", True),
        "legacy": (_saved(sd, _use_new_zipfile_serialization=False), ".pt", True),
        "pickle": (pickle.dumps({"epoch": 3, "lr": [0.1, 0.01], "name": "run"}, protocol=4), ".pkl", True),
        "safetensors": (save_safetensors({k: v.contiguous() for k, v in sd.items()}), ".safetensors", True),
        "pickle-code": (pickle.dumps({"weights": _Opener()}, protocol=2), ".pt", False),
        "pickle-code-4": (pickle.dumps({"weights": _Opener()}, protocol=4), ".pkl", False),  # Python's default
        "zip-code": (_saved({"weights": _Opener(), "conv.bias": sd["conv.bias"]}), ".pt", False),
        "legacy-code": (_saved({"weights": _Opener()}, _use_new_zipfile_serialization=False), ".pt", False),
        "torchscript": (ts.getvalue(), ".pt", False),
        "torchscript-plain": (plain_ts.getvalue(), ".pt", True),  # trusted, a damaged archive must still be one line
    }


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random corruption; offsets biased to the ends, where headers and zip directories live."""
    n = len(data)
    where = rng.choice(("start", "end", "anywhere"))
    lo, hi = {"start": (0, min(n, 64)), "end": (max(0, n - 256), n), "anywhere": (0, n)}[where]
    i = rng.randrange(lo, max(lo + 1, hi))
    op = rng.choice(("truncate", "flip", "insert", "delete", "overwrite"))
    if op == "truncate":
        return op, data[:max(1, i)]
    if op == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            j = min(n - 1, max(0, i + rng.randint(-32, 32)))
            b[j] ^= 1 << rng.randrange(8)
        return op, bytes(b)
    if op == "insert":
        return op, data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    if op == "delete":
        return op, data[:i] + data[i + rng.randint(1, 64):]
    chunk = rng.randbytes(rng.randint(1, 32))
    return op, data[:i] + chunk + data[i + len(chunk):]


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)  # 2x2 RGB, 8 bits
    pixels = zlib.compress(b"\x00" + b"\xff\x00\x00" * 2 + b"\x00" + b"\x00\xff\x00" * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return buf.getvalue()


def _safetensors_header(header: dict[str, object], pad: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + pad


def _foreign(bases: dict[str, tuple[bytes, str, bool]]) -> dict[str, bytes]:
    """Ordinary files and hand-made near-checkpoints, by file name."""
    zip_bytes = bases["zip"][0]
    return {
        "photo.png": _png(), "photo-named.pt": _png(), "notes.txt": b"just some notes\n",
        "readme.pt": b"weights: see the wiki\n", "latin1.pt": "caf\xe9 na\xefve".encode("latin-1"),
        "config.json": json.dumps({"arch": "resnet50"}).encode(), "model.py": b"import torch\nnet = None\n",
        "empty.zip": _zip({}), "wrong-members.pt": _zip({"a.txt": b"hello", "b/c.bin": b"\x00" * 10}),
        "data-not-pickle.pt": _zip({"archive/data.pkl": b"not a pickle", "archive/version": b"3\n"}),
        "data-missing-storage.pt": _zip({n: b for n, b in _members(zip_bytes).items() if "/data/" not in n}),
        "zip-prefixed.pt": b"junk" + zip_bytes, "gzip.pt": gzip.compress(zip_bytes),
        "zip-as.safetensors": zip_bytes, "safetensors-as.pt": bases["safetensors"][0],
        "st-huge-header.safetensors": struct.pack("<Q", 2**63) + b"{}",
        "st-header-longer-than-file.safetensors": struct.pack("<Q", 4096) + b'{"a": 1}',
        "st-huge-tensor.safetensors": _safetensors_header(
            {"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 2**64 - 8]}}),
        "st-offsets-past-end.safetensors": _safetensors_header(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8),
        "st-bad-dtype.safetensors": _safetensors_header(
            {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
        "st-not-json.safetensors": struct.pack("<Q", 6) + b"{bogus",
        "st-not-utf8.safetensors": struct.pack("<Q", 4) + b'{"\xff"',
        "st-metadata-only.safetensors": _safetensors_header({"__metadata__": {"format": "pt"}}),
        "pickle-int.pt": pickle.dumps(3), "pickle-list.pt": pickle.dumps([1, 2, 3]),
        "torch-tensor.pt": _saved(torch.zeros(3)), "torch-empty-dict.pt": _saved({}),
        "torch-mixed-dict.pt": _saved({"w": torch.zeros(1), "note": "text"}),
        "torch-self-nested.pt": _saved(_self_nested()),
        "random.pt": random.Random(SEED).randbytes(1000), "zeros.pt": b"\x00" * 4096,
    }


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _self_nested() -> dict[str, object]:
    d: dict[str, object] = {}
    d["state_dict"] = d  # a cycle: the layout search must not recurse forever
    return d


def _special(root: Path) -> list[Path]:
    """Paths that are not regular files: a directory, symlink loop, dangling link, /dev/zero, a FIFO."""
    out = []
    (root / "folder.pt").mkdir()
    out.append(root / "folder.pt")
    (root / "loop.pt").symlink_to(root / "loop.pt")
    out.append(root / "loop.pt")
    (root / "dangling.pt").symlink_to(root / "nowhere.pt")
    out.append(root / "dangling.pt")
    (root / "zero.pt").symlink_to("/dev/zero")
    out.append(root / "zero.pt")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.pt")
        out.append(root / "fifo.pt")
    out.append(root / "missing.pt")
    return out


def corpus(root: Path, mutants_per_base: int, seed: int = SEED) -> list[tuple[str, Path, bool]]:
    """Write the corpus under `root`: (kind, path, benign) per file."""
    rng = random.Random(seed)
    bases = _bases()
    files: list[tuple[str, Path, bool]] = []

    def write(kind: str, name: str, data: bytes, benign: bool) -> None:
        path = root / name
        path.write_bytes(data)
        files.append((kind, path, benign))

    for base, (data, suffix, benign) in bases.items():
        for i in range(mutants_per_base):
            op, mutated = _mutate(data, rng)
            write(f"{base}:{op}", f"{base}-{i}-{op}{suffix}", mutated, benign)
    magics = {"none": b"", "zip": b"PK\x03\x04", "pickle": b"\x80\x02", "safetensors": struct.pack("<Q", 40) + b"{"}
    for i in range(max(4, mutants_per_base)):
        magic = rng.choice(list(magics))
        suffix = rng.choice((".pt", ".safetensors", ".bin"))
        write(f"random:{magic}", f"random-{i}{suffix}", magics[magic] + rng.randbytes(rng.randint(1, 2048)), True)
    for name, data in _foreign(bases).items():
        write("foreign", name, data, True)
    files += [("special", p, True) for p in _special(root)]
    return files


def _check_error(e: fv.FeatvisError, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.isprintable(), msg
    names = {display_path(path.name), display_path(Path(os.path.realpath(path)).name)}
    assert any(n in msg for n in names), f"{msg!r} does not name {path.name!r}"


def _load_all(files: list[tuple[str, Path, bool]], trust: bool) -> Counter[str]:
    """Every entry point on every file; only FeatvisError may escape. Returns how `load_checkpoint` ended."""
    outcomes: Counter[str] = Counter()
    built = 0
    for kind, path, _ in files:
        try:
            loaded = load_checkpoint(path, trust=trust)
        except fv.FeatvisError as e:
            _check_error(e, path)
            outcomes["refused or unreadable"] += 1
            loaded = None
        else:  # untrusted: weights only, never a module
            assert isinstance(loaded, (dict, nn.Module) if trust else dict), (kind, type(loaded))
            assert isinstance(loaded, nn.Module) or all(isinstance(v, torch.Tensor) for v in loaded.values()), kind
            outcomes["read"] += 1
        if not isinstance(loaded, nn.Module):  # weights alone, refused or unreadable: never a model
            with pytest.raises(fv.FeatvisError) as e:
                fv.load_model(path, trust_checkpoint=trust)
            _check_error(e.value, path)
        if loaded is None or built < 2:  # building the real net for every readable file would take a minute
            built += loaded is not None
            with pytest.raises(fv.FeatvisError) as e:
                fv.load_model("efficientnet-lite0", weights=path, trust_checkpoint=trust)
            _check_error(e.value, path)
    return outcomes


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutants: int, seed: int) -> int:
    sandbox = tmp_path / "cwd"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)  # a payload that ran would leave SENTINEL here
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    files = corpus(files_dir, mutants, seed)
    outcomes = _load_all(files, trust=False)  # everything untrusted first: nothing may run
    assert list(sandbox.iterdir()) == [], "a refused file ran code"
    assert outcomes["refused or unreadable"] > len(files) // 2, outcomes
    _load_all([f for f in files if f[2]], trust=True)  # then the benign ones trusted
    return len(files)


def test_corrupt_files(tmp_path, monkeypatch):
    assert _run(tmp_path, monkeypatch, MUTANTS_PER_BASE, SEED) >= 300


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_corrupt_files_more_seeds(tmp_path, monkeypatch, seed):
    assert _run(tmp_path, monkeypatch, MUTANTS_PER_BASE, seed) >= 300
