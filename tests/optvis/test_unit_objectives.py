"""Channel and neuron objectives on layers without a spatial map (issue 12, item 10: `featvis features --layer
_fc` raised IndexError): a [B, C] output is C units, and a channel of it is that unit."""

import pytest
import torch

import featvis as fv
from featvis.optvis import objectives as obj

from _models import TinyConvNet


def _context(acts: torch.Tensor) -> obj.Context:
    return obj.Context(images=torch.rand(acts.shape[0], 3, 8, 8), acts={"fc": acts})


def test_channel_and_neuron_of_a_2d_output_are_its_units():
    acts = torch.randn(3, 5)
    torch.testing.assert_close(obj.channel("fc", [4, 0, 2])(_context(acts)), acts[[0, 1, 2], [4, 0, 2]])
    torch.testing.assert_close(obj.neuron("fc", 1)(_context(acts)), acts[:, 1])
    torch.testing.assert_close(obj.direction("fc", torch.tensor([1.0, 0, 0, 0, -2]))(_context(acts)),
                               acts[:, 0] - 2 * acts[:, 4])
    with pytest.raises(fv.FeatvisError, match=r"channel 5 is out of range for layer 'fc' with 5 channels"):
        obj.channel("fc", 5)(_context(acts))


def test_other_shapes_are_refused_in_one_line():
    with pytest.raises(fv.FeatvisError, match=r"layer 'fc' outputs \[7, 6\] per image.*\[C, H, W\]") as e:
        obj.channel("fc", 0)(_context(torch.randn(2, 7, 6)))
    assert "\n" not in str(e.value)
    with pytest.raises(fv.FeatvisError, match=r"layer 'fc' outputs \[7, 6\] per image"):
        obj.neuron("fc", 0)(_context(torch.randn(2, 7, 6)))


def test_feature_visualization_of_a_linear_layer_raises_its_unit():
    clf = fv.Classifier.wrap(TinyConvNet().eval(), labels=list("abcd"), input_size=32)
    for neuron in (False, True):
        res = fv.feature_visualization(clf, "fc", [0, 3], neuron=neuron, steps=8, size=32, preset="pixel",
                                       snapshots=[0])
        with torch.no_grad():
            start, end = clf(res.snapshots[0]), clf(res.images)  # the fc output is the logits
        assert end[0, 0] > start[0, 0] + 0.1 and end[1, 3] > start[1, 3] + 0.1  # each image's own unit went up
        torch.testing.assert_close(res.scores, end[[0, 1], [0, 3]])


@pytest.mark.slow
def test_feature_visualization_of_the_real_classifier_layer(clf):
    res = fv.feature_visualization(clf, "_fc", 281, steps=2, size=64, preset="pixel")  # features --layer _fc
    assert res.images.shape == (1, 3, 64, 64) and torch.isfinite(res.scores).all()


def test_direction_takes_one_row_per_image_and_repeats_it_per_view():
    acts = torch.randn(6, 5, 2, 2)  # 3 images x 2 views, view-major
    bank = torch.randn(3, 5)
    ctx = obj.Context(images=torch.rand(6, 3, 8, 8), acts={"fc": acts}, views=2)
    want = (acts * bank.repeat(2, 1)[:, :, None, None]).sum(1).mean((1, 2))
    torch.testing.assert_close(obj.direction("fc", bank)(ctx), want)
    for i in range(3):  # each image's value is that of its own row alone
        torch.testing.assert_close(obj.direction("fc", bank[i])(ctx)[[i, i + 3]], want[[i, i + 3]])
    with pytest.raises(fv.FeatvisError, match=r"4 directions for a batch of 3; give one, or one per image"):
        obj.direction("fc", torch.randn(4, 5))(ctx)
