"""Unit targets: every registered method explains a channel, a neuron or a direction of a layer, computed by running
the network only up to that layer; checked against autograd on the activation itself and integrated gradients'
completeness; the task and the CLI take `--target layer:NAME:C`; bad units fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import featvis as fv
from featvis.attribution import ATTRIBUTIONS, saliency
from featvis.attribution.units import parse_unit, unit, unit_classifier
from featvis.cli import main

from _models import TinyConvNet

SIZE = 16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return fv.Classifier.wrap(TinyConvNet().eval(), labels=list("abcd"), input_size=SIZE)


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def conv1_relu(clf, images):
    """conv1's output after its ReLU is what a hook on `act` sees first; the unit here reads conv1 itself."""
    return clf.net.conv1(clf.normalize(images))


@pytest.mark.parametrize("target, value", [
    ("layer:conv1:4", lambda a: a[:, 4].mean((1, 2))),
    ("layer:conv1:4@3,5", lambda a: a[:, 4, 5, 3]),
    (unit("conv1", direction=torch.arange(6.0) - 2.5), lambda a: (a * (torch.arange(6.0) - 2.5)[:, None, None]).sum(1)
     .mean((1, 2))),
])
def test_gradient_of_a_unit_is_autograd_on_the_activation(tiny, x, target, value):
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(value(conv1_relu(tiny, xr)).sum(), xr)
    got = saliency(tiny, x, target, method="gradient", reduce="none")
    assert torch.allclose(got, expected, atol=1e-6)


def test_integrated_gradients_of_a_unit_are_complete(tiny, x):
    uclf = unit_classifier(tiny, "layer:conv2:3")
    maps, delta = ATTRIBUTIONS.get("integrated-gradients")(tiny, x, "layer:conv2:3", steps=256, reduce="sum",
                                                          baseline="black", return_delta=True)
    with torch.no_grad():
        gap = uclf(x)[:, 0] - uclf(torch.zeros_like(x))[:, 0]
    # 1 %: the ReLU kinks' Riemann error at 256 steps, as large as for a class logit of the same net (measured)
    assert torch.allclose(maps.flatten(1).sum(1), gap, atol=0.01 * float(gap.abs().max()))
    assert float(delta.abs().max()) < 0.01 * float(gap.abs().max()) and float(gap.abs().min()) > 0.5


def test_the_layers_after_the_unit_never_run(tiny, x):
    net = tiny.net
    before = dict(net.calls)
    saliency(tiny, x, "layer:conv1:0", method="occlusion", window=8, stride=8)
    assert net.calls["fc"] == before["fc"] and net.calls["conv2"] == before["conv2"]
    assert net.calls["conv1"] > before["conv1"]


def test_occlusion_of_a_unit_is_the_drop_of_the_unit(tiny, x):
    """A window over the whole image: every pixel gets unit(x) - unit(baseline)."""
    uclf = unit_classifier(tiny, "layer:conv2:1")
    got = saliency(tiny, x, "layer:conv2:1", method="occlusion", window=SIZE, stride=SIZE, baseline="black")
    with torch.no_grad():
        drop = uclf(x)[:, 0] - uclf(torch.zeros_like(x))[:, 0]
    assert torch.allclose(got[:, 0, 0], drop, atol=1e-5) and torch.allclose(got, got[:, :1, :1].expand_as(got))


@pytest.mark.slow  # the embedded model
def test_gradcam_of_a_channel_at_its_own_layer_is_where_the_channel_fires(clf, photos):
    """Grad-CAM defaults to the unit's layer; for a channel's mean its weights are one-hot: the map is ReLU(A_c)."""
    from featvis.layers import forward_until

    img = photos["coffee"].reshape(1, 3, 224, 224)
    cam = saliency(clf, img, "layer:blocks.8:17", method="gradcam")
    with torch.no_grad():
        a = forward_until(clf, img, "blocks.8")[0, 17].clamp_min(0)
    small = torch.nn.functional.adaptive_avg_pool2d(cam[None], a.shape)[0, 0]
    # 0.97 measured: Grad-CAM's bilinear upsampling to 224 px, pooled back to 14×14, smooths the map a little
    assert np.corrcoef(small.flatten().numpy(), a.flatten().numpy())[0, 1] > 0.95


def test_bad_units_fail_in_one_line(tiny, x):
    with pytest.raises(fv.FeatvisError, match="unknown layer 'conv9'; near names"):
        saliency(tiny, x, "layer:conv9:1")
    with pytest.raises(fv.FeatvisError, match="channel 6 is out of range for layer 'conv1' with 6 channels"):
        saliency(tiny, x, "layer:conv1:6")
    with pytest.raises(fv.FeatvisError, match=r"neuron position \(16, 0\) is outside the 16×16 map"):
        saliency(tiny, x, "layer:conv1:0@16,0")
    with pytest.raises(fv.FeatvisError, match="'x' is not a channel number"):
        parse_unit("layer:conv1:x")
    with pytest.raises(fv.FeatvisError, match="use score=logit"):
        saliency(tiny, x, "layer:conv1:0", score="prob")
    with pytest.raises(fv.FeatvisError, match="one unit target for the whole batch"):
        saliency(tiny, x, ["layer:conv1:0", "a", "b"])
    with pytest.raises(fv.FeatvisError, match="the direction has 3 numbers; layer 'conv1' has 6 channels"):
        saliency(tiny, x, unit("conv1", direction=[1.0, 2.0, 3.0]))


@pytest.mark.slow  # two CLI runs on the embedded model
def test_cli_saliency_of_a_unit(tmp_path, capsys, clf, photos):
    from featvis.layers import forward_until

    out = tmp_path / "run"
    code = main(["saliency", str(fv.samples.path("coffee")), "--target", "layer:blocks.8:17@6,7", "--method",
                 "gradient,gradcam", "-o", str(out), "--json"])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)["items"][0]
    assert rec["target_name"] == "blocks.8:17@6,7" and rec["prob"] is None
    with torch.no_grad():
        value = float(forward_until(clf, photos["coffee"].reshape(1, 3, 224, 224), "blocks.8")[0, 17, 7, 6])
    assert rec["unit_value"] == pytest.approx(value, abs=1e-4)
    grad = np.load(out / rec["maps"]["gradient"])
    expected = saliency(clf, photos["coffee"].reshape(1, 3, 224, 224), "layer:blocks.8:17@6,7")[0].numpy()
    assert np.allclose(grad, expected, atol=1e-5 * float(np.abs(expected).max()))
    assert main(["saliency", str(fv.samples.path("coffee")), "--target", "layer:blocks.8:17", "--metrics",
                 "-o", str(tmp_path / "m")]) == 2
    assert "drop --metrics for a unit target" in capsys.readouterr().err
