"""Every registered method leaves the model as it found it: no hooks, same mode, same requires_grad, no .grad."""

import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS
from featvis.attribution import ATTRIBUTIONS

from _models import TinyConvNet
from _vit import TinyAttnViT

FAST = {"smoothgrad": {"samples": 2}, "smoothgrad-sq": {"samples": 2}, "vargrad": {"samples": 2},
        "integrated-gradients": {"steps": 4}, "occlusion": {"window": 8, "stride": 8}, "rise": {"masks": 8},
        "lime": {"samples": 8}, "kernel-shap": {"samples": 8},
        "sobol": {"cells": 4, "designs": 4}, "hsic": {"designs": 16},
        "expected-gradients": {"samples": 2, "references": torch.rand(2, 3, 32, 32)}}


def _state(net):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
    swapped = sum("forward" in m.__dict__ for m in net.modules())
    return hooks, swapped, [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()], \
        [p.grad is None for p in net.parameters()]


def _net(name):
    """A tiny model the method applies to: methods that need attention layers get a tiny ViT."""
    needs = ATTRIBUTIONS.get(name).info.get("needs")
    return TinyAttnViT(classes=4, size=32) if needs == "attention" else TinyConvNet()


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_method_leaves_no_trace(name):
    net = _net(name).train()
    next(net.parameters()).requires_grad_(False)
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    clf.train()
    before = _state(net)
    x = torch.rand(2, 3, 32, 32)
    maps = ATTRIBUTIONS.get(name)(clf, x, [0, 1], **FAST.get(name, {}))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert _state(net) == before
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", ATTRIBUTIONS.names())
def test_method_cleans_up_after_an_exception(name, monkeypatch):
    net = _net(name).eval()
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    fv.list_layers(clf)  # probe before the failure is armed

    def boom(_x):
        raise RuntimeError("model failed")

    before = _state(net)
    monkeypatch.setattr(net.fc if hasattr(net, "fc") else net.head, "forward", boom)
    with pytest.raises(RuntimeError, match="model failed"):
        ATTRIBUTIONS.get(name)(clf, torch.rand(1, 3, 32, 32), 0, **FAST.get(name, {}))
    monkeypatch.undo()
    assert _state(net) == before


ATTACK_FAST = {"ascent": {"max_steps": 3}, "lab": {"max_steps": 3}, "pgd": {"steps": 3}, "mifgsm": {"steps": 3},
               "cw": {"steps": 3, "search_steps": 2}, "deepfool": {"steps": 3, "candidates": 3},
               "fab": {"steps": 3}, "fab-t": {"steps": 3, "target_classes": 2}, "square": {"queries": 20}}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_leaves_no_trace(name):
    """Every attack: model mode, requires_grad and .grad as found; the user's images untouched."""
    net = TinyConvNet().train()
    net.conv1.weight.requires_grad_(False)
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    clf.train()
    before = _state(net)
    x = fv.quantize(torch.rand(2, 3, 32, 32))
    copy = x.clone()
    res = ATTACKS.get(name)(clf, x, None, **ATTACK_FAST.get(name, {}))
    assert res.images.shape == x.shape and torch.isfinite(res.images).all()
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert _state(net) == before
    assert torch.equal(x, copy) and not x.requires_grad and x.grad is None
