"""`torchvision:NAME`: any torchvision classification model.

Preprocessing (mean, std, resize and crop, interpolation) and class names come from the model's default weights
enum — `Weights.transforms()` and `Weights.meta` — which torchvision ships as metadata: reading them downloads
nothing. The weights themselves are a `weights=` file when given (always used, nothing is downloaded), else
torchvision's default weights (downloaded once into TORCH_HOME; offline, a one-line error names `--weights`).
"""

from __future__ import annotations

import torch

from featvis.errors import FeatvisError, did_you_mean
from featvis.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, Preprocess
from featvis.models.source import Request, model_source
from featvis.models.weights import StateDict, head_classes, imagenet_or, load_strict

DEFAULT_CLASSES = 1000  # torchvision's classification builders default to ImageNet-1k


@model_source("torchvision", "torchvision:NAME", "torchvision", "torchvision",
              "any torchvision classification model: its default weights (downloaded once) or --weights FILE; "
              "preprocessing and class names from its weights' metadata", kind="prefix")
def build(req: Request) -> Classifier:
    from torchvision import models

    name = req.arch
    known = models.list_models(module=models)  # classification models only (not detection, video, ...)
    if name not in known:
        raise did_you_mean("torchvision classification model", name, known,
                           hint="torchvision.models.list_models() lists them")
    weights = _default_weights(name)
    native = int(weights.transforms().crop_size[0]) if weights is not None else 224
    size_kwargs = _size_kwargs(name, req.input_size, native)
    label = f"torchvision:{name}"
    if req.weights is None and weights is None:
        raise FeatvisError(f"{label} has no pretrained weights in torchvision; pass your own with --weights FILE "
                           "(load_model(..., weights=FILE))")
    if req.weights is None and not size_kwargs:
        net = _download(label, lambda: models.get_model(name, weights=weights))  # torchvision's own loading path
        num_classes = len(weights.meta["categories"])
    else:
        state = req.weights if req.weights is not None else _download(label, lambda: weights.get_state_dict(
            progress=False, check_hash=True))
        with torch.device("meta"):  # shapes only: no memory, no initialization
            probe = models.get_model(name, weights=None, **size_kwargs)
        shapes = {k: v.shape for k, v in probe.state_dict().items()}
        num_classes = head_classes(shapes, state, DEFAULT_CLASSES)
        state = _fit_position_embedding(probe, state)
        net = models.get_model(name, weights=None, num_classes=num_classes, **size_kwargs)
        load_strict(net, state, label)
    return _classifier(net, weights, label, num_classes, req.input_size)


def _default_weights(name: str):
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):  # a builder without a weights enum
        return None


def _size_kwargs(name: str, input_size: int | None, native: int) -> dict[str, int]:
    """ViTs embed positions for one image size: build them for `input_size` (other torchvision models take any)."""
    if input_size is None or input_size == native or not name.startswith("vit_"):
        return {}
    return {"image_size": input_size}


def _download(label: str, fetch):
    try:
        return fetch()
    except OSError as e:  # URLError, HTTPError, a full disk: torchvision's download failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeatvisError(f"cannot download the weights of {label} ({first}); offline, pass a local weights file "
                           "with --weights FILE (load_model(..., weights=FILE))") from None


def _fit_position_embedding(probe, state: StateDict) -> StateDict:
    """A ViT's position embedding resampled to the size the model is built for (torchvision's own
    `interpolate_embeddings`, used for its fine-tuning recipes), when the weights were trained at another size."""
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    key = "encoder.pos_embedding"
    if not isinstance(probe, VisionTransformer) or key not in state:
        return state
    if tuple(state[key].shape) == tuple(probe.encoder.pos_embedding.shape):
        return state
    return interpolate_embeddings(probe.image_size, probe.patch_size, dict(state))


def _classifier(net, weights, label: str, num_classes: int, input_size: int | None) -> Classifier:
    if weights is None:  # no metadata: ImageNet statistics, 224 with torchvision's usual 256 resize
        mean, std, crop, resize, interp, cats = IMAGENET_MEAN, IMAGENET_STD, 224, 256, "bilinear", None
    else:
        tf = weights.transforms()
        mean, std = tuple(tf.mean), tuple(tf.std)
        crop, resize = int(tf.crop_size[0]), int(tf.resize_size[0])
        interp, cats = tf.interpolation.value, weights.meta.get("categories")
    labels = imagenet_or(cats, num_classes)
    return Classifier(net, mean=mean, std=std, labels=labels, name=label, num_classes=num_classes,
                      preprocess=Preprocess(input_size or crop, crop / resize, interp))
