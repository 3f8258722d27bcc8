import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import featvis as fv
from featvis.models import load_checkpoint

from _models import PickledNet, ScriptedNet, TinyConvNet


def test_torchscript_file_loads_and_predicts(tmp_path):
    net = TinyConvNet().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    clf = fv.load_model(str(path), trust_checkpoint=True, labels=["a", "b", "c", "d"], input_size=32)
    x = torch.rand(2, 3, 32, 32)
    ref = net(clf.normalize(x))
    torch.testing.assert_close(clf(x), ref)
    assert clf.predict(x, k=1)[0][0].name in {"a", "b", "c", "d"}


def test_safetensors_weights_into_named_architecture(tmp_path, clf):
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, str(path))
    again = fv.load_model("efficientnet-lite0", weights=path)
    assert again.weights_hash == clf.weights_hash


def test_state_dict_pt_loads_with_weights_only(tmp_path, clf):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clf.net.state_dict().items()}, "epoch": 3}, path)
    assert fv.load_model("efficientnet-lite0", weights=path).weights_hash == clf.weights_hash


def test_state_dict_alone_asks_for_architecture(tmp_path, clf):
    path = tmp_path / "w.pt"
    torch.save(clf.net.state_dict(), path)
    with pytest.raises(fv.FeatvisError, match="holds only weights.*architecture"):
        fv.load_model(str(path))


def test_wrong_architecture_is_one_line(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(TinyConvNet().state_dict(), path)
    with pytest.raises(fv.FeatvisError, match="weights do not fit efficientnet-lite0"):
        fv.load_model("efficientnet-lite0", weights=path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weights": _Evil()}, f)
    with pytest.raises(fv.FeatvisError, match=r"refusing to load .*runs code.*--trust-checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "EVIL_RAN").exists()


def test_whole_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(PickledNet(), path)
    with pytest.raises(fv.FeatvisError, match="refusing"):
        fv.load_model(str(path))
    clf = fv.load_model(str(path), trust_checkpoint=True, labels=["x", "y"], input_size=16)
    assert len(clf.predict(torch.rand(1, 3, 16, 16), k=2)[0]) == 2


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"not a checkpoint at all", "cannot read")])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(fv.FeatvisError, match=match):
        load_checkpoint(path)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bogus}!")
    with pytest.raises(fv.FeatvisError, match="safetensors"):
        load_checkpoint(bad_st)


def test_torchscript_runs_code_so_it_needs_trust(tmp_path):
    target = tmp_path / "WRITTEN_AT_LOAD"
    path = tmp_path / "ts.pt"
    torch.jit.script(ScriptedNet(str(target))).save(str(path))
    assert not target.exists()
    for load in (lambda: load_checkpoint(path), lambda: fv.load_model(str(path), labels=["x", "y"], input_size=16),
                 lambda: fv.load_model("efficientnet-lite0", weights=path)):
        with pytest.raises(fv.FeatvisError, match=r"refusing to load .*TorchScript.*runs code.*--trust-checkpoint"
                                                  r".*state_dict") as e:
            load()
        assert "\n" not in str(e.value)
        assert not target.exists()
    clf = fv.load_model(str(path), trust_checkpoint=True, labels=["x", "y"], input_size=16)
    assert target.read_bytes() == b"BBBB"  # trusted: its code ran, as the user allowed
    assert len(clf.predict(torch.rand(1, 3, 16, 16), k=2)[0]) == 2


# Probes beyond the fuzz (issue 22): each path that is not a readable checkpoint ends in one line naming it.


def _refused(load, *fragments: str) -> str:
    with pytest.raises(fv.FeatvisError) as e:
        load()
    msg = str(e.value)
    assert "\n" not in msg and msg.isprintable(), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def _not_files(tmp_path):
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "loop.pt").symlink_to(tmp_path / "loop.pt")
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.pt")
    return {"folder.pt": "is a folder, not a file", "loop.pt": "a symbolic link loop",
            "zero.pt": "is not a regular file", "fifo.pt": "is not a regular file",
            "missing.pt": "does not exist", "x" * 300 + ".pt": "the name is too long", "nul\0.pt": "NUL byte"}


def test_paths_that_are_not_files_are_one_line_through_every_entry_point(tmp_path):
    """A symlink loop through load_model was a RuntimeError, an over-long name an OSError, before."""
    for name, problem in _not_files(tmp_path).items():
        path = tmp_path / name
        shown = "nul\\x00.pt" if "\0" in name else name
        _refused(lambda p=path: load_checkpoint(p), shown, problem)
        loads = [lambda p=path: fv.load_model("efficientnet-lite0", weights=p)]
        if "\0" not in name:  # a NUL byte is no model name either: resolve() calls it an unknown model
            loads.append(lambda p=path: fv.load_model(p))
        for load in loads:  # load_model resolves links first (clf.source records the target): either name
            msg = _refused(load, problem)
            assert shown in msg or Path(os.path.realpath(path)).name in msg, msg


def test_unprintable_names_are_escaped(tmp_path):
    for raw, shown in ((b"w\xff.pt", "w\\xff.pt"), (b"new\nline.pt", "new\\nline.pt")):
        path = tmp_path / os.fsdecode(raw)
        path.write_bytes(b"\x80\x02garbage")
        _refused(lambda p=path: load_checkpoint(p), shown, "cannot read checkpoint")
        torch.save({"w": torch.ones(1)}, path)
        assert torch.equal(load_checkpoint(path)["w"], torch.ones(1))
        save_file({"w": torch.ones(1)}, str(tmp_path / "ok.safetensors"))
        os.replace(tmp_path / "ok.safetensors", path)  # safetensors itself opens only UTF-8 names
        assert torch.equal(load_checkpoint(path)["w"], torch.ones(1))


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    torch.save({"w": torch.ones(1)}, path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    from featvis.models import checkpoint

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)  # root reads anything: chmod cannot show it
    _refused(lambda: load_checkpoint(path), "locked.pt", "permission denied; fix its permissions")


def test_format_is_read_from_the_bytes_not_the_name(tmp_path, clf):
    """A safetensors file saved as .bin and a torch.save zip named .safetensors both load; a misnamed file was
    'not a torch checkpoint' before."""
    small = {"w": torch.arange(4.0)}
    as_bin, as_st = tmp_path / "model.bin", tmp_path / "model.safetensors"
    save_file(small, str(as_bin))
    torch.save(small, as_st)
    assert torch.equal(load_checkpoint(as_bin)["w"], small["w"])
    assert torch.equal(load_checkpoint(as_st)["w"], small["w"])


@pytest.mark.parametrize("content,fragments", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", ("Git LFS pointer", "git lfs pull")),
    (b"<!DOCTYPE html><html>403 Forbidden</html>", ("an HTML page",)),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, ("a PNG image",)),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 32, ("gzip data",)),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00{bogus}!", ("a safetensors file", "invalid JSON")),
    (b"\xff\xff\xff\xff\xff\xff\xff\x7f{}", ("a safetensors file", "header too large")),
])
def test_foreign_and_damaged_files_say_what_they_are(tmp_path, content, fragments):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    _refused(lambda: load_checkpoint(path), "weights.pt", *fragments)


def test_self_referencing_layout_is_one_line(tmp_path):
    """{'state_dict': <itself>} was a RecursionError."""
    d: dict = {}
    d["state_dict"] = d
    path = tmp_path / "cycle.pt"
    torch.save(d, path)
    _refused(lambda: load_checkpoint(path), "cycle.pt", "holds a dict, not a state_dict")


def test_damaged_lengths_do_not_allocate_when_trusted(tmp_path):
    """A flipped byte in a pickle's frame length or memo index made CPython's unpickler ask for gigabytes (a raw
    MemoryError, or 20 s and 5 GB): trusted files are read weights-only first, and their pickle checked before
    full unpickling."""
    frame = b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"}."
    memo = b"\x80\x04\x95" + (8).to_bytes(8, "little") + b"}r\xff\xff\xff\x0f." + b"\x00"
    for name, data in (("frame.pkl", frame), ("memo.pkl", memo)):
        path = tmp_path / name
        path.write_bytes(data)
        _refused(lambda p=path: load_checkpoint(p, trust=True), name, "cannot read checkpoint", "; the file is damaged")


def test_protocol_4_pickles_need_trust(tmp_path):
    """torch's weights-only reader lacks protocol 4; such a file is refused, saying so, and loads when trusted."""
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    _refused(lambda: load_checkpoint(path), "refusing to load", "p4.pt", "in a protocol torch's weights-only reader",
             "--trust-checkpoint")
    assert torch.equal(load_checkpoint(path, trust=True)["w"], torch.ones(2))


def test_trusted_module_whose_class_is_gone(tmp_path, monkeypatch):
    import _models

    path = tmp_path / "whole.pt"
    torch.save(PickledNet(), path)
    monkeypatch.delattr(_models, "PickledNet")
    _refused(lambda: load_checkpoint(path, trust=True), "whole.pt", "needs a class that is not importable here",
             "PickledNet")
