"""The fast path's gate (models/fast/gate.py): fallbacks said once at WARNING, one build under threads, modules
recognised by type, and the fold by PyTorch's own helper bit-identical to featvis's formula."""

from __future__ import annotations

import logging
import threading

import torch
from test_fast import ConvBNStack, _wrap
from torch import nn

import featvis as fv
from featvis.models import fast
from featvis.models.fast import fold, known, plan

from _models import TinyConvNet


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "fast path" in r.getMessage()]


def test_a_probe_that_disagrees_is_a_warning_once_per_network_and_the_users_network_runs(monkeypatch, caplog):
    monkeypatch.setattr(plan, "PROBE_RTOL", -1.0)  # every folded copy "disagrees" with its network
    first, second = _wrap(ConvBNStack(seed=1)), _wrap(ConvBNStack(seed=2))
    x = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="featvis.models.fast"), torch.no_grad():
        for _ in range(3):
            for clf in (first, second):
                assert torch.equal(clf(x), clf.net(clf.normalize(x)))
    lines = _warnings(caplog)
    assert len(lines) == 2 and all("ConvBNStack" in s and "changes its logits" in s for s in lines)
    assert not fast.status(first)["active"]
    assert fast._CACHE[first.net][fast.FastOptions()].builds == 1  # not probed again while the network is the same


def test_a_network_that_keeps_changing_runs_as_it_is_after_max_builds_with_one_warning(caplog):
    clf = _wrap(ConvBNStack())
    x = torch.rand(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="featvis.models.fast"), torch.no_grad():
        for _ in range(fast.MAX_BUILDS + 3):
            clf.net.bn0.running_var.mul_(1.01)  # an in-place edit: the copy is stale at every call
            torch.testing.assert_close(clf(x), clf.net(clf.normalize(x)), rtol=1e-5, atol=1e-6)
    lines = _warnings(caplog)
    assert len(lines) == 1 and f"changed {fast.MAX_BUILDS} times" in lines[0]
    assert not fast.status(clf)["active"]


def test_tiny_networks_are_not_rebuilt_at_every_call_and_say_nothing(caplog):
    tiny = fv.Classifier.wrap(TinyConvNet().eval(), labels=list("abcd"), input_size=16)
    with caplog.at_level(logging.INFO, logger="featvis.models.fast"), torch.no_grad():
        for _ in range(fast.MAX_BUILDS + 2):
            tiny(torch.rand(1, 3, 16, 16))
    assert fast._CACHE[tiny.net][fast.FastOptions()].builds == 1 and not _warnings(caplog)


def test_threads_share_one_copy_built_once():
    clf = _wrap(ConvBNStack())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        want = clf.net(clf.normalize(x))
    start = threading.Barrier(4)
    got: list[torch.Tensor] = []

    def work():
        start.wait()
        with torch.no_grad():
            for _ in range(3):
                got.append(clf(x))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and fast._CACHE[clf.net][fast.FastOptions()].builds == 1
    for out in got:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_same_padding_convs_are_recognised_by_class_not_by_name(clf):
    from efficientnet_lite_pytorch import utils

    class Conv2dDynamicSamePadding(nn.Conv2d):  # the same name, another class: not folded as "same" padding
        pass

    assert isinstance(clf.net._conv_stem, utils.Conv2dDynamicSamePadding) and known.is_dynamic_same(clf.net._conv_stem)
    assert not known.is_same_padding(Conv2dDynamicSamePadding(3, 3, 3))

    class Changed(utils.Conv2dDynamicSamePadding):  # a subclass with its own forward computes something else
        def forward(self, x):
            return super().forward(x) * 2

    assert not known.is_same_padding(Changed(3, 3, 3)) and not known.is_bn_act(nn.BatchNorm2d(3))


def _featvis_fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The fold featvis computed before using torch's helper (issue 17): float64 γ/√(σ² + ε), then the conv's dtype."""
    w = conv.weight.double()
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return ((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype),
            (beta + (bias - bn.running_mean.double()) * scale).to(conv.weight.dtype))


def test_torchs_fold_helper_gives_featvis_own_weights_bit_for_bit(clf):
    nets = [clf.net, ConvBNStack(seed=3).eval()]
    odd = ConvBNStack(seed=4).eval()  # a conv with a bias, a BatchNorm without affine parameters
    odd.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
    odd.bn0 = nn.BatchNorm2d(8, affine=False).eval()
    odd.bn0.running_var.uniform_(0.5, 2.0)
    nets.append(odd)
    compared = 0
    for net in nets:
        mods = dict(net.named_modules())
        size = 64 if net is clf.net else 32
        for conv_name, bn_name in plan.plan(net, torch.rand(1, 3, size, size)).pairs:
            got = fold.fold(mods[conv_name], mods[bn_name], channels_last=False)
            want_w, want_b = _featvis_fold(mods[conv_name], mods[bn_name])
            assert torch.equal(got.weight, want_w) and torch.equal(got.bias, want_b), conv_name
            compared += 1
    assert compared == 49 + 9 + 9
