"""split_at: h(g(x)) is the classifier's logits, by the traced tail or by the replaced-output fallback."""

from __future__ import annotations

import pytest
import torch

from featvis.concepts import split_at
from featvis.errors import FeatvisError

from _craft_models import PoolNet, Skip, Untraceable, photos, wrap
from _models import TinyConvNet


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_efficientnet_default_split_is_the_head_relu6_and_reproduces_the_logits(clf, photos):
    split = split_at(clf)
    assert (split.layer, split.call, split.mode) == ("_swish", 1, "fx")  # _bn1 can be negative: its ReLU6 follows
    x = photos["chelsea"]
    with torch.no_grad():
        acts = split.latent(x)
        assert acts.shape == (1, 1280, 7, 7) and float(acts.min()) >= 0
        torch.testing.assert_close(split.head(acts), clf(x), rtol=1e-4, atol=1e-4)
    assert _hooks(clf) == 0


def test_tiny_model_with_reused_inplace_relu_splits_at_its_second_call():
    clf = wrap(TinyConvNet(classes=3))
    split = split_at(clf)
    assert (split.layer, split.call, split.mode) == ("act", 1, "fx")
    x = photos(3)
    with torch.no_grad():
        acts = split.latent(x)
        before = acts.clone()
        torch.testing.assert_close(split.head(acts), clf(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(acts, before)  # the in-place ReLU after the split did not write into the caller's tensor


def test_untraceable_model_falls_back_to_replacing_the_layer_output():
    clf = wrap(Untraceable())
    split = split_at(clf, "relu")
    assert split.mode == "hook"
    x = photos(4)
    with torch.no_grad():
        torch.testing.assert_close(split.head(split.latent(x)), clf(x), rtol=1e-5, atol=1e-5)
    assert _hooks(clf) == 0


def test_fx_and_hook_heads_agree():
    clf = wrap(PoolNet())
    split = split_at(clf, "relu")
    assert split.mode == "fx"
    hooked = type(split)(split.clf, split.layer, split.call, "hook", None)
    with torch.no_grad():
        acts = split.latent(photos(2)) * 1.5  # activations no image gave: h is a function of them alone
        torch.testing.assert_close(split.head(acts), hooked.head(acts), rtol=1e-5, atol=1e-6)


def test_a_layer_under_a_skip_connection_cannot_be_split_one_line():
    with pytest.raises(FeatvisError, match="skip connection") as e:
        split_at(wrap(Skip()), "conv2")
    assert "\n" not in str(e.value)


def test_forward_until_call_and_replace_output_on_a_reused_module():
    from featvis.layers import forward_until, replace_output, tap

    clf = wrap(TinyConvNet(classes=3))
    x = photos(2)
    with torch.no_grad():
        with tap(clf, "act") as seen:
            clf(x)
        torch.testing.assert_close(forward_until(clf, x, "act", call=1), seen[1])
        torch.testing.assert_close(forward_until(clf, x, "act"), seen[0])
        zeros = torch.zeros_like(seen[1])
        with replace_output(clf, "act", zeros, call=1):
            out = clf(x)
        torch.testing.assert_close(out, clf.net.fc.bias.detach().expand(2, -1))  # pooled zeros: the bias alone
        with pytest.raises(FeatvisError, match="replacement for layer"), replace_output(clf, "act", zeros[:1], call=1):
            clf(x)
    assert _hooks(clf) == 0
