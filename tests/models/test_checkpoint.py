import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import featvis as fv
from featvis.models import load_checkpoint

from _models import PickledNet, TinyConvNet


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


class _FileWriter(nn.Module):
    """A scripted submodule whose compiled __setstate__ maps a file (creating it) and writes into it on load."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.written = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        mapped = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(66)
        self.written = int(mapped.sum())  # used, so the write is not optimized away


class _ScriptedNet(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.payload = _FileWriter(target)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.payload(x).mean((2, 3)))


def test_torchscript_runs_code_so_it_needs_trust(tmp_path):
    target = tmp_path / "WRITTEN_AT_LOAD"
    path = tmp_path / "ts.pt"
    torch.jit.script(_ScriptedNet(str(target))).save(str(path))
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
