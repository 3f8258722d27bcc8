"""The private PyTorch APIs behind the fast path (models/fast/_compat.py), one by one.

Each test names the API it checks; a missing one fails with a line naming it, what featvis uses it for and the
torch version, so a torch upgrade that drops or changes one is found here, not as a slower or wrong fast path.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F
from torch import nn

import featvis as fv
from featvis.models.fast import _compat, gate


def _require(name: str) -> object:
    got = _compat.get(name)
    if got is None:
        pytest.fail(_compat.missing_message(name), pytrace=False)
    return got


@pytest.mark.parametrize("name", [api.name for api in _compat.APIS])
def test_private_torch_api_is_present(name):
    _require(name)


def test_the_message_for_a_missing_api_names_it_the_torch_version_and_the_tested_range():
    msg = _compat.missing_message("torch.ops.mkldnn._convolution_pointwise")
    assert "torch.ops.mkldnn._convolution_pointwise" in msg and torch.__version__ in msg
    assert _compat.TESTED_TORCH in msg and "\n" not in msg


def test_the_tested_torch_range_is_pinned_in_pyproject_and_holds_this_torch():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert f"torch{_compat.TESTED_TORCH}" in pyproject["project"]["dependencies"]
    low, high = (tuple(map(int, v.split("."))) for v in re.findall(r"[\d.]+", _compat.TESTED_TORCH))
    here = tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert low <= here < high, f"torch {torch.__version__} is outside the tested range {_compat.TESTED_TORCH}"


def test_fused_convolution_is_the_convolution_then_the_clamp():
    _require("torch.ops.mkldnn._convolution_pointwise")
    assert _compat.fused_conv_available()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 9, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 3, generator=g).contiguous(memory_format=torch.channels_last) * 3
    b = torch.randn(8, generator=g)
    got = _compat.conv_hardtanh(x, w, b, [1, 1], [1, 1], [1, 1], 8, 0.0, 6.0)
    want = F.hardtanh(F.conv2d(x, w, b, 1, 1, 1, 8), 0.0, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert 0 < float((got == 6).float().mean()) < 1 and 0 < float((got == 0).float().mean()) < 1  # both clamps hit


def test_hardtanh_backward_masks_and_writes_in_place_when_asked():
    y = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0])
    grad = torch.ones(5)
    out = _compat.hardtanh_backward(grad.clone(), y, 0.0, 6.0, in_place=False)
    assert out.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    inplace = _compat.hardtanh_backward(grad, y, 0.0, 6.0, in_place=True)
    assert inplace.data_ptr() == grad.data_ptr() and grad.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_convolution_input_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 7, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g)
    y = F.conv2d(x, w, None, 2, 1, 1, 2)
    gy = torch.randn(y.shape, generator=g)
    want = torch.autograd.grad(y, x, gy)[0]
    got = _compat.conv_input_grad(gy, x.detach(), w, [2, 2], [1, 1], [1, 1], 2)
    torch.testing.assert_close(got, want)


def test_version_counter_counts_in_place_edits_but_not_data_edits():
    t = torch.zeros(3)
    v = _compat.version(t)
    t.add_(1)
    assert _compat.version(t) == v + 1
    t.data.add_(1)
    assert _compat.version(t) == v + 1  # why refresh() exists


def test_global_module_hooks_are_seen():
    assert not _compat.global_module_hooks()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert _compat.global_module_hooks()
    finally:
        handle.remove()
    assert not _compat.global_module_hooks()


def test_functorch_wrapped_tensors_are_seen_under_vmap():
    seen = []
    torch.func.vmap(lambda t: seen.append(_compat.is_functorch_wrapped(t)) or t)(torch.zeros(2, 3))
    assert seen == [True] and not _compat.is_functorch_wrapped(torch.zeros(2))


def test_plain_cpu_dispatch_key_tells_batched_gradients_apart():
    x = torch.rand(3, requires_grad=True)
    y = x * 2
    seen = []
    y.register_hook(lambda g: seen.append(_compat.is_plain_cpu(g)))
    torch.autograd.grad(y, x, torch.eye(3), is_grads_batched=True, retain_graph=True)  # vmap over the backward
    torch.autograd.grad(y, x, torch.ones(3))
    assert seen == [False, True]


def test_module_internals_hooks_children_and_shallow_copies():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    assert _compat.plain_children(net.eval()) == list(net) and _compat.child_names(net) == ["0", "1"]
    handle = net[0].register_forward_hook(lambda *a: None)
    try:
        assert _compat.plain_children(net[0]) is None  # a hook that is not ours
        assert _compat.plain_children(net[0], frozenset({handle.id})) == []  # one an offered request owns
        copy = _compat.shallow_copy(net)
        assert copy is not net and copy._modules is not net._modules and copy[0] is net[0]
        _compat.set_child(copy, "1", nn.Identity())
        assert isinstance(copy[1], nn.Identity) and isinstance(net[1], nn.ReLU)
        conv = _compat.shallow_copy(net[0])
        assert not conv._forward_hooks and net[0]._forward_hooks  # the user's hooks stay the user's
        _compat.set_parameter(conv, "bias", nn.Parameter(torch.ones(1)))
        assert conv.bias.detach().tolist() == [1.0] and net[0].bias is not conv.bias
        assert [t for _, _, t in _compat.tensor_slots(conv)] == [conv.weight, conv.bias]
    finally:
        handle.remove()
    assert _compat.plain_children(net.train()) is None
    net.eval()[1].forward = lambda x: x
    assert _compat.plain_children(net[1]) is None  # a swapped forward


def test_batchnorm_base_class_and_its_forward():
    for bn in (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2)):
        assert _compat.is_batchnorm(bn)
    assert not _compat.is_batchnorm(nn.LayerNorm(2)) and not _compat.is_batchnorm(nn.InstanceNorm2d(2))
    assert nn.BatchNorm2d.forward is _compat.batchnorm_forward()


def test_autograd_node_types_of_convolution_and_padding():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    conv = F.conv2d(x, torch.ones(1, 1, 3, 3))
    pad = F.pad(x, [1, 1, 1, 1])
    assert _compat.is_conv_backward(conv.grad_fn) and not _compat.is_conv_backward(pad.grad_fn)
    assert _compat.is_pad_backward(pad.grad_fn) and not _compat.is_pad_backward((x * 2).grad_fn)


def test_cpu_bf16_probe_answers():
    _require("torch.ops.mkldnn._is_mkldnn_bf16_supported")
    assert _compat.cpu_bf16_supported() in (True, False)


def test_a_missing_essential_api_runs_the_users_network_and_says_so_once(monkeypatch, caplog):
    layers = [m for _ in range(8) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    clf = fv.Classifier.wrap(net.eval(), labels=list("abcde"), input_size=32)
    monkeypatch.setattr(_compat, "ready", lambda: False)
    monkeypatch.setattr(_compat, "missing", lambda: ("torch._C._functorch.is_functorch_wrapped_tensor",))
    monkeypatch.setattr(gate, "_MISSING_LOGGED", [])
    x = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="featvis.models.fast"), torch.no_grad():
        for _ in range(3):
            assert torch.equal(clf(x), clf.net(clf.normalize(x)))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "is_functorch_wrapped_tensor" in lines[0] and torch.__version__ in lines[0]
    assert not fv.models.fast.status(clf)["active"]


def test_nothing_is_probed_at_import():
    """Issue 23: no device or kernel probe at import (the MKLDNN check was `_FUSABLE = ...` at module level)."""
    code = ("import featvis, featvis.layers; from featvis.models.fast import _compat; "
            "print(_compat.get.cache_info().currsize, _compat.ready.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]
