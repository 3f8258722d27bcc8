import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis as fv
from featvis.layers import capture, find_layer, forward_until, list_layers, to_spatial

from _models import TinyConvNet, TinyViT


def _reference(net, x, c):
    """Manual forward of TinyConvNet keeping the pre-activation tensors as leaves of their own."""
    z1 = net.conv1(x)
    z1_ = z1.detach().requires_grad_(True)
    z2 = net.conv2(F.relu(z1_))
    z2_ = z2.detach().requires_grad_(True)
    a2 = F.relu(z2_)
    logit = net.fc(a2.mean((2, 3)))[:, c].sum()
    g2, = torch.autograd.grad(logit, z2_)
    g1, = torch.autograd.grad(z2, z1_, grad_outputs=g2)
    return z1.detach(), z2.detach(), a2.detach(), g1, g2


def _hooks(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


def test_capture_with_inplace_and_reused_relu():
    net = TinyConvNet().eval()
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abcd"), input_size=16)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with capture(clf, ["conv1", "conv2", "act"], grads=True) as cap:
        clf(x)[:, 1].sum().backward()
    z1, z2, a2, g1, g2 = _reference(net, x.detach(), 1)
    torch.testing.assert_close(cap.act("conv1"), z1)  # not overwritten by the in-place ReLU after it
    torch.testing.assert_close(cap.act("conv2"), z2)
    torch.testing.assert_close(cap.grad("conv1"), g1)
    torch.testing.assert_close(cap.grad("conv2"), g2)
    assert len(cap.calls["act"]) == 2  # the reused module: both calls recorded, the last one by default
    torch.testing.assert_close(cap.act("act"), a2)
    assert _hooks(net) == 0


def test_forward_until_stops_early_and_matches_full_forward():
    net = TinyConvNet().eval()
    x = torch.rand(3, 3, 16, 16)
    with capture(net, "conv1", detach=True) as cap:
        net(x)
    before = dict(net.calls)
    act = forward_until(net, x, "conv1")
    torch.testing.assert_close(act, cap.act("conv1"))
    assert net.calls["conv1"] == before["conv1"] + 1
    assert net.calls["conv2"] == before["conv2"] and net.calls["fc"] == before["fc"]  # later layers never ran
    both = forward_until(net, x, ["conv1", "conv2"])
    assert set(both) == {"conv1", "conv2"} and net.calls["fc"] == before["fc"]
    assert _hooks(net) == 0


def test_forward_until_on_real_model_matches_capture(clf, photos):
    x = photos["chelsea"]
    with torch.no_grad(), capture(clf, "blocks.5", detach=True) as cap:
        clf(x)
    with torch.no_grad():
        early = forward_until(clf, x, "blocks.5")
    torch.testing.assert_close(early, cap.act())
    assert early.shape == (1, 80, 14, 14) and len(cap.calls["_blocks.5"]) == 1


def test_real_model_gradient_at_head_is_exact(clf, photos):
    x = photos["coffee"].clone().requires_grad_(True)
    c = 967
    with capture(clf, "_bn1", grads=True) as cap:
        logits = clf(x)
        torch.autograd.grad(logits[0, c], x)
    bn1 = cap.act()
    h, w = bn1.shape[-2:]
    weight = clf.net._fc.weight[c].view(1, -1, 1, 1) / (h * w)
    expected = weight * ((bn1 > 0) & (bn1 < 6)).float()  # ReLU6 passes gradient strictly inside (0, 6)
    torch.testing.assert_close(cap.grad(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_no_hooks_or_memory_left_after_many_calls():
    net = TinyConvNet().eval()
    x = torch.rand(4, 3, 16, 16)

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    def once():
        xi = x.clone().requires_grad_(True)
        with capture(net, ["conv1", "act"], grads=True) as cap:
            net(xi)[:, 0].sum().backward()
        return cap.grad("conv1").sum().item()

    once()
    baseline = live_tensors()
    for _ in range(100):
        once()
        forward_until(net, x, "conv2")
    assert _hooks(net) == 0
    assert live_tensors() <= baseline


def test_hooks_removed_after_exception():
    net = TinyConvNet()
    with pytest.raises(ZeroDivisionError), capture(net, ["conv1", "conv2"], grads=True):
        net(torch.rand(1, 3, 16, 16))
        _ = 1 / 0
    assert _hooks(net) == 0
    with pytest.raises(fv.FeatvisError):
        forward_until(net, torch.rand(1, 3, 16, 16), "nope")
    assert _hooks(net) == 0


def test_vit_tokens_become_feature_maps():
    vit = TinyViT(size=32)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    with capture(vit, "block", grads=True) as cap:
        vit(x)[:, 0].sum().backward()
    assert cap.act().shape == (2, 16, 4, 4) and cap.grad().shape == (2, 16, 4, 4)
    tokens = cap.calls["block"][-1]
    torch.testing.assert_close(cap.act()[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # CLS dropped, row-major grid
    assert forward_until(vit, x, "norm").shape == (2, 16, 4, 4)
    assert to_spatial(torch.zeros(1, 16, 7)).shape == (1, 7, 4, 4)  # no CLS token
    assert fv.default_layer(vit) in {"norm", "block"}


def test_find_layer_names_and_errors(clf):
    assert find_layer(clf, "blocks.3")[0] == "_blocks.3"
    assert find_layer(clf, "_blocks.3.bn1")[0] == "_blocks.3._bn1"
    with pytest.raises(fv.FeatvisError, match=r"unknown layer 'blocks.30'.*near names: blocks.3, ") as e:
        find_layer(clf, "blocks.30")
    assert "featvis layers" in str(e.value)


def test_list_layers_and_default(clf):
    infos = {i.name: i for i in list_layers(clf)}
    assert infos["_conv_stem"].shape == (32, 112, 112)
    assert infos["_blocks.15"].shape == (320, 7, 7)
    assert infos["_swish"].calls == 2  # the stem/head ReLU6 is one module used twice
    assert fv.default_layer(clf) == "_bn1"
    tiny = TinyConvNet()
    assert fv.default_layer(tiny) == "conv2"


def test_token_layouts_with_any_number_of_prefix_tokens():
    from featvis.layers import TokenLayout, token_layout

    from _vit import TinyAttnViT

    tokens = torch.arange(2 * 21 * 3, dtype=torch.float32).view(2, 21, 3)  # 5 prefix tokens + a 4 × 4 grid
    grid = to_spatial(tokens, TokenLayout(5, (4, 4)))
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 5 + 1 * 4 + 2])  # prefix dropped, row-major grid
    torch.testing.assert_close(to_spatial(tokens), grid)  # no metadata: the largest square, 5 tokens before it
    assert to_spatial(tokens[:, 5:], TokenLayout(5, (4, 4))).shape == (2, 3, 4, 4)  # a patch embedding's output
    assert to_spatial(torch.zeros(1, 2 + 8, 3), TokenLayout(2, (2, 4))).shape == (1, 3, 2, 4)  # non-square grid
    assert to_spatial(torch.zeros(1, 25 + 9, 3)).shape == (1, 34, 3)  # 9 > MAX_GUESSED_PREFIX: left alone
    vit = TinyAttnViT(registers=4)
    assert token_layout(vit) == TokenLayout(5, (4, 4), (0,))
    assert token_layout(TinyAttnViT(global_pool="avg")).readout == ()
    x = torch.rand(2, 3, 32, 32)
    with capture(vit, "blocks.1.norm1", detach=True) as cap:
        vit(x)
    assert cap.act().shape == (2, 16, 4, 4)
    torch.testing.assert_close(cap.act()[:, :, 3, 0], cap.calls["blocks.1.norm1"][-1][:, 5 + 12])


def test_vit_default_layer_is_the_last_attention_input():
    """After the last attention each token is processed alone and the head reads the class token: the patch
    tokens of the final norm get no gradient at all, so Grad-CAM there is zero. The last block's norm1 is not."""
    from _vit import TinyAttnViT

    for attention in ("timm", "torch"):
        clf = fv.Classifier.wrap(TinyAttnViT(attention=attention), labels=list("abcde"), input_size=32)
        assert fv.default_layer(clf) == "blocks.1.norm1"
        x = torch.rand(2, 3, 32, 32)
        at_default = fv.saliency(clf, x, 0, method="gradcam", relu=False)
        at_norm = fv.saliency(clf, x, 0, method="gradcam", relu=False, layer="norm")
        assert at_default.abs().amax() > 1e-4 and at_norm.abs().amax() == 0


def test_one_layer_name_is_shown_everywhere(clf):
    """Issue 22: the README and CLI say `blocks.8`; tables, reports, atlas tiles and error hints said `_blocks.8`."""
    from featvis.layers import layer_label

    assert layer_label(clf, "_blocks.8") == "blocks.8" and layer_label(clf, "_blocks.3._bn1") == "blocks.3.bn1"
    assert find_layer(clf, layer_label(clf, "_blocks.3._bn1"))[0] == "_blocks.3._bn1"  # the label finds the layer
    with pytest.raises(fv.FeatvisError, match=r"near names: blocks\.8, "):
        find_layer(clf, "blocks.88")
    res = fv.feature_visualization(clf, "_blocks.2", [1], steps=0, size=32)
    assert res.titles == ["blocks.2:1"]
    clash = nn.Sequential()
    clash.add_module("blocks", nn.Identity())
    clash.add_module("_blocks", nn.Identity())
    assert layer_label(clash, "_blocks") == "_blocks" and layer_label(clash, "blocks") == "blocks"


def _copies(clf):
    from featvis.models import fast

    return [e.net for e in fast._CACHE.get(clf.net, {}).values() if e.net is not None and e.net is not clf.net]


def test_capture_on_the_fast_copy_records_once_and_leaves_no_hooks_after_an_error(clf, photos):
    """Issue 23: capture runs on the fast copy; its hooks (on the copy's modules for each forward, on the user's
    for the block) are all gone afterwards, also after an exception, and each layer call is recorded once."""
    x = F.interpolate(photos["chelsea"], size=64, mode="bilinear", antialias=True)
    with torch.no_grad():
        clf(x)
    with pytest.raises(ZeroDivisionError), capture(clf, ["blocks.3", "_swish"], grads=True) as cap:
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(clf(xx)[0, 281], xx)
        _ = 1 / 0
    assert len(cap.calls["_blocks.3"]) == 1 and len(cap.calls["_swish"]) == 2  # the stem's and the head's ReLU6
    assert len(cap.grad_calls["_blocks.3"]) == 1 and cap.grad("_blocks.3").is_contiguous()
    assert _copies(clf) and all(_hooks(c) == 0 for c in _copies(clf)) and _hooks(clf.net) == 0
    with pytest.raises(fv.FeatvisError), capture(clf, "blocks.3"):
        forward_until(clf, x, "nope")
    assert _hooks(clf.net) == 0


def test_forward_until_on_the_fast_copy_gives_gradients_to_the_image(clf, photos):
    """A layer objective differentiates forward_until's output: on the copy, the gradient reaches the pixels in
    their layout and matches the user's network's (mean relative 1e-3, the fast path's tolerance)."""
    x = F.interpolate(photos["coffee"], size=96, mode="bilinear", antialias=True)

    def grad():
        xx = x.clone().requires_grad_(True)
        acts = forward_until(clf, xx, "blocks.4")
        return torch.autograd.grad(acts[:, 5].mean(), xx)[0]

    got = grad()
    clf.fast = False
    try:
        want = grad()
    finally:
        clf.fast = True
    assert got.is_contiguous() and float((got - want).abs().sum() / want.abs().sum()) <= 1e-3
