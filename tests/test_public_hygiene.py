"""Every public function leaves the model as it found it (issue 12, item 9).

A model in train mode with BatchNorm goes through each entry point of the public API; afterwards its BatchNorm
running statistics, parameters, train/eval flags, requires_grad flags and .grad are unchanged and no hook is
left, after success and after the model raises. (tests/test_hygiene.py does the same per registry entry on a
model without BatchNorm.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import featvis as fv
from featvis.adversarial import ATTACKS
from featvis.attribution import ATTRIBUTIONS
from featvis.attribution.sanity import sanity_check
from featvis.models.classifier import frozen

from _models import TinyBNNet

SIDE = 32
FAST = {"smoothgrad": {"samples": 2}, "smoothgrad-sq": {"samples": 2}, "vargrad": {"samples": 2},
        "integrated-gradients": {"steps": 4}, "expected-gradients": {"samples": 2}, "rise": {"masks": 8},
        "lime": {"samples": 8}, "kernel-shap": {"samples": 8},
        "sobol": {"cells": 4, "designs": 4}, "hsic": {"designs": 16},
        "occlusion": {"window": 8, "stride": 8}}
ATTACK_FAST = {"ascent": {"max_steps": 2}, "lab": {"max_steps": 2}, "pgd": {"steps": 2}, "mifgsm": {"steps": 2},
               "cw": {"steps": 2, "search_steps": 1}, "deepfool": {"steps": 2, "candidates": 3},
               "fab": {"steps": 2}, "fab-t": {"steps": 2, "target_classes": 2}, "square": {"queries": 10}}


def _capture(clf: fv.Classifier, x: torch.Tensor) -> None:
    with frozen(clf), fv.capture(clf, "conv2", grads=True) as cap:  # what the caller runs inside is theirs
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(clf(xg)[:, 0].sum(), xg)
    assert cap.act().shape == (2, 8, SIDE // 2, SIDE // 2) and cap.grad().abs().sum() > 0


CALLS: dict[str, Callable[[fv.Classifier, torch.Tensor], object]] = {
    **{f"saliency-{m}": (lambda clf, x, m=m: fv.saliency(clf, x, [0, 1], method=m, **FAST.get(m, {})))
       for m in ATTRIBUTIONS.names()},
    "explain": lambda clf, x: fv.explain(clf, x, [0, 1], methods=("gradient", "gradcam")),
    **{f"fool-{a}": (lambda clf, x, a=a: fv.fool(clf, x, None, method=a, **ATTACK_FAST.get(a, {})))
       for a in ATTACKS.names()},
    "robustness": lambda clf, x: fv.robustness(clf, x, eps=[1 / 255, 8 / 255], steps=2),
    "predict": lambda clf, x: clf.predict(x, k=2),
    "class_visualization": lambda clf, x: fv.class_visualization(clf, [0, 1], steps=2, size=SIDE),
    "feature_visualization": lambda clf, x: fv.feature_visualization(clf, "conv2", [0, 1], steps=2, size=SIDE),
    "render": lambda clf, x: fv.render(clf, fv.objectives.channel("conv2", 0), steps=2, size=SIDE),
    "list_layers": lambda clf, x: fv.list_layers(clf),
    "forward_until": lambda clf, x: fv.forward_until(clf, x, "conv2"),
    "capture": _capture,
    "sanity_check": lambda clf, x: sanity_check(clf, x, [0, 1], method="gradient"),
}


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in net.modules())


def _snapshot(net: nn.Module) -> dict[str, object]:
    return {
        "hooks": _hooks(net),
        "swapped forward": sum("forward" in m.__dict__ for m in net.modules()),
        "fused_attn": [getattr(m, "fused_attn", None) for m in net.modules()],
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grad is None": [p.grad is None for p in net.parameters()],
        "buffers": {k: b.clone() for k, b in net.named_buffers()},  # BN running_mean/var, num_batches_tracked
        "parameters": {k: p.detach().clone() for k, p in net.named_parameters()},
    }


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    for key in ("hooks", "swapped forward", "fused_attn", "training", "requires_grad", "grad is None"):
        assert after[key] == before[key], key
    for key in ("buffers", "parameters"):
        changed = [k for k, t in before[key].items() if not torch.equal(t, after[key][k])]
        assert not changed, f"{key} changed: {changed}"


def _needs_attention(name: str) -> bool:
    method = name.removeprefix("saliency-")
    return name.startswith("saliency-") and ATTRIBUTIONS.get(method).info.get("needs") == "attention"


def _model(name: str) -> tuple[fv.Classifier, nn.Module, nn.Module]:
    """A train-mode classifier for the call, its network, and a module every pass of the call runs."""
    if _needs_attention(name):  # attention maps need a transformer (LayerNorm: no running statistics)
        from _vit import Block, TinyAttnViT

        net = TinyAttnViT(classes=4, size=SIDE, attention="timm").train()  # timm's fused_attn flag is switched
        net.blocks[1] = Block(16, 2, "torch").train()  # nn.MultiheadAttention's forward is swapped
        net.patch_embed.proj.weight.requires_grad_(False)
        probe = net.blocks[1]
    else:
        net = TinyBNNet().train()
        net.conv1.weight.requires_grad_(False)  # a mix of flags, each must come back as it was
        probe = net.conv2
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=SIDE)
    clf.train()
    return clf, net, probe


@pytest.mark.parametrize("name", list(CALLS))
def test_public_function_leaves_the_model_as_found(name):
    clf, net, _ = _model(name)
    x = fv.quantize(torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)))
    copy = x.clone()
    before = _snapshot(net)
    CALLS[name](clf, x)
    _assert_same(before, _snapshot(net))
    assert clf.training  # the wrapper too
    assert torch.equal(x, copy) and not x.requires_grad and x.grad is None


def _count_probe_calls(name: str) -> int:
    """How many times a successful run calls the probe module (every entry point reaches it; not all reach fc)."""
    clf, _, probe = _model(name)
    calls = {"n": 0}
    probe.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    CALLS[name](clf, torch.rand(2, 3, SIDE, SIDE))
    return calls["n"]


@pytest.mark.parametrize("when", ["first", "last"])
@pytest.mark.parametrize("name", list(CALLS))
def test_public_function_restores_the_model_after_an_exception(name, when, monkeypatch):
    fail_at = 1 if when == "first" else _count_probe_calls(name)
    clf, net, probe = _model(name)
    x = fv.quantize(torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)))
    before = _snapshot(net)
    calls = {"n": 0}
    probe_forward = probe.forward

    def fail(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("model failed")
        return probe_forward(*args, **kwargs)

    monkeypatch.setattr(probe, "forward", fail)
    with pytest.raises(RuntimeError, match="model failed"):
        CALLS[name](clf, x)
    monkeypatch.undo()
    _assert_same(before, _snapshot(net))
