"""Every registered attribution method and attack, and class and feature visualization, on every architecture:
a real outcome each (finite maps of the image's shape that are not all zero; the 8-bit adversarial image fools the
model; the objective rises), and the model left as found (no hooks or swapped forwards, training flags,
requires_grad, .grad, timm's fused_attn).

Random weights: a map cannot be judged right or wrong here (that is what tests/integration/test_models.py's exact
comparisons and the tiny-model tests do), and untargeted attacks are what succeeds meaningfully — the predicted
class of a random network flips under a small budget, as a trained one's does. The options are reduced (steps,
samples, masks) to keep the table to minutes on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS
from featvis.attribution import ATTRIBUTIONS
from featvis.models import frozen

from _cases import Built

# Fewer samples/steps/masks: the same code paths, at a fraction of the time.
FAST_OPTIONS = {"samples": 4, "steps": 4, "masks": 64, "window": 16, "stride": 16, "designs": 4, "cells": 4}
FAST_ATTACK = {"ascent": {"max_steps": 30}, "lab": {"max_steps": 30}, "cw": {"steps": 30, "search_steps": 1, "lr": 0.05},
               "deepfool": {"candidates": 3, "steps": 10}, "pgd": {"steps": 10}, "mifgsm": {"steps": 10}}
EPS = 8 / 255  # for attacks whose budget has no default


def _state(net: torch.nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
    swapped = sum("forward" in m.__dict__ for m in net.modules())
    return (hooks, swapped, [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()],
            [p.grad is None for p in net.parameters()], [getattr(m, "fused_attn", None) for m in net.modules()])


def _expected_refusal(built: Built, method: str) -> str | None:
    """The one-line refusal a method must give on this architecture, or None if it applies."""
    if method in ("guided-backprop", "deconvnet", "guided-gradcam") and not built.case.relu_only:
        return rf"^{method} is defined for ReLU networks and this model uses (GELU|SiLU|Hardswish)"
    if method == "lrp" and built.case.vit:
        return r"^lrp has no rules for self-attention"
    if ATTRIBUTIONS.get(method).info.get("needs") == "attention" and not built.case.vit:
        return r"^this model \(\w+\) has no self-attention layers"
    return None


def _images(built: Built) -> torch.Tensor:
    return fv.quantize(torch.rand(2, 3, built.case.size, built.case.size, generator=torch.Generator().manual_seed(4)))


@pytest.fixture
def hygiene(built: Built):
    """The model in train mode with one frozen parameter; call the returned check after the feature ran."""
    net = built.clf.net
    first = next(net.parameters())
    built.clf.train()
    first.requires_grad_(False)
    before = _state(net)

    def unchanged() -> None:
        assert _state(net) == before

    try:
        yield unchanged
    finally:
        first.requires_grad_(True)
        built.clf.eval()


@pytest.mark.parametrize("method", ATTRIBUTIONS.names())
def test_attribution(built: Built, method, hygiene, record_property):
    spec = ATTRIBUTIONS.get(method)
    options = {k: v for k, v in FAST_OPTIONS.items() if k in spec.options}
    if "relu" in spec.options:  # a random net's CAM may be negative everywhere: check the signed map
        options["relu"] = False
    x = _images(built)
    refusal = _expected_refusal(built, method)
    if refusal is not None:
        with pytest.raises(fv.FeatvisError, match=refusal) as e:
            spec(built.clf, x, [1, 2], **options)
        assert "\n" not in str(e.value)
        hygiene()
        record_property("outcome", "refused")
        return
    if method == "scorecam":  # one forward per channel (2048 for ResNet-50): one image is enough here
        x = x[:1]
    maps = spec(built.clf, x, [1, 2][: x.shape[0]], **options)
    hygiene()
    assert maps.shape == (x.shape[0], built.case.size, built.case.size)
    assert torch.isfinite(maps).all() and maps.abs().amax() > 0


@pytest.mark.parametrize("attack", ATTACKS.names())
def test_attack(built: Built, attack, hygiene):
    spec = ATTACKS.get(attack)
    clf, x = built.clf, _images(built)
    with torch.no_grad():
        logits = clf.eval()(x)
    clf.train()
    original = logits.argmax(-1)
    untargeted = spec.info["untargeted"]
    target = None if untargeted else logits.topk(2, -1).indices[:, 1]  # the runner-up: the easiest target
    options = dict(FAST_ATTACK.get(attack, {}))
    if "eps" in spec.options and spec.options["eps"].default is None:
        options["eps"] = EPS
    res = spec(clf, x, target, **options)
    hygiene()
    assert torch.equal(res.images, fv.quantize(res.images)) and res.images.min() >= 0 and res.images.max() <= 1
    with torch.no_grad():
        now = clf.eval()(res.images).argmax(-1)
    clf.train()
    fooled = now != original if untargeted else now == target
    assert res.success.tolist() == fooled.tolist()  # what the result says is what the model does on the PNG
    if attack == "fgsm":  # one step: not bound to flip a random net; it must be exactly x + ε·sign(∇CE), 8-bit
        xg = x.clone().requires_grad_(True)
        with frozen(clf):  # as the attack runs it (frozen parameters: the same network, so the same rounding)
            loss = torch.nn.functional.cross_entropy(clf.eval()(xg), original, reduction="sum")
            step = torch.autograd.grad(loss, xg)[0].sign()
        clf.train()
        expected = fv.quantize((x + options.get("eps", spec.options["eps"].default) * step).clamp(0, 1))
        assert (res.images == expected).float().mean() > 0.999
    else:
        assert fooled.all(), (attack, res.steps.tolist())
    if "linf" in spec.info["norms"] and "eps" in spec.options:
        eps = options.get("eps", spec.options["eps"].default)
        assert float((res.images - x).abs().amax()) <= eps + 1 / 255 + 1e-6


def _rises(run, hygiene) -> tuple[float, float]:
    scores = []
    result = run(lambda state: scores.append(float(state.scores.mean())))
    hygiene()
    assert torch.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1
    return scores[0], scores[-1]


# The lab's recipe (normalized-gradient steps on pixels; the score includes its L2 penalty) climbs fast enough to
# show in 10 steps; Lucid's Fourier + Adam + jitter needs hundreds (its rise is within jitter noise at 10).
STEPS = 10


def test_class_visualization(built: Built, hygiene):
    clf, size = built.clf, built.case.size
    first, last = _rises(lambda cb: fv.class_visualization(clf, 5, preset="lab", steps=STEPS, size=size,
                                                           callback=cb), hygiene)
    assert last - first > 0.1 * (abs(first) + 1), (first, last)


def test_feature_visualization(built: Built, hygiene):
    clf, size = built.clf, built.case.size
    layer = fv.default_layer(clf)  # a ViT's: token activations laid out as the patch grid
    first, last = _rises(lambda cb: fv.feature_visualization(clf, layer, 3, preset="lab", steps=STEPS, size=size,
                                                             callback=cb), hygiene)
    assert last - first > 0.1 * (abs(first) + 1), (layer, first, last)


def test_default_presets_run(built: Built):
    """The defaults a user gets (class: lab; features: lucid) run on the model at its input size. Lucid's
    transforms pad the image (64 -> 76 px); a ViT with a fixed patch grid is shown it resized to its input size
    (before: the ViTs failed on the size)."""
    clf, size = built.clf, built.case.size
    for result in (fv.class_visualization(clf, 5, steps=2, size=size),
                   fv.feature_visualization(clf, fv.default_layer(clf), 3, steps=2, size=size),
                   fv.class_visualization(clf, 5, steps=2, size=64, preset="lucid")):
        assert torch.isfinite(result.images).all()
