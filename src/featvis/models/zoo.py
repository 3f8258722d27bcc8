"""Where classifiers come from: a registry of model sources — the shipped EfficientNet-Lites, `torchvision:NAME`,
`timm:NAME` and a local file — `load_model` over it, and `rebuild` from a recorded `ModelSource`.

Every source honours the same overrides: `weights=` (a local state_dict/safetensors file, read safely), `mean`,
`std`, `labels` and `input_size`, or refuses them with a one-line error. `load_model` records what it was given on
the classifier (`clf.source`), so a worker process can make the same classifier again with `rebuild`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from featvis.errors import FeatvisError, closest, display_path
from featvis.models import from_timm, from_torchvision, lite  # noqa: F401  (they register their model sources)
from featvis.models.checkpoint import load_checkpoint, nonfinite_tensors
from featvis.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, Preprocess
from featvis.models.labels import Labels
from featvis.models.source import MODELS, SOURCES, ModelSource, Request, Source, label_names, model_source
from featvis.models.weights import StateDict, WeightsError, listed, load_strict

DEFAULT_MODEL = "efficientnet-lite0"
FILE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".ts", ".jit"}

def _build_file(req: Request) -> Classifier:
    path = Path(req.arch)
    loaded = load_checkpoint(path, trust=req.trust_checkpoint)
    if not isinstance(loaded, nn.Module):
        raise FeatvisError(
            f"{str(path)!r} holds only weights (a state_dict); say which architecture they belong to, e.g. "
            f"load_model('efficientnet-lite0', weights={str(path)!r}) or --model efficientnet-lite0 --weights FILE"
        )
    if req.weights is not None:
        load_strict(loaded, req.weights, f"file:{path.name}")
    else:  # buffers may hold -inf on purpose (attention masks); NaN is never meant
        bad = [*nonfinite_tensors(loaded.named_parameters()), *nonfinite_tensors(loaded.named_buffers(), nan_only=True)]
        if bad:
            raise FeatvisError(f"model file '{display_path(path)}' holds NaN or inf in {listed(bad)}; every "
                               "prediction would be NaN: use a checkpoint saved before training diverged")
    size = req.input_size or 224
    return Classifier(loaded, preprocess=Preprocess(size, 1.0), name=f"file:{path.name}",
                      num_classes=_count_outputs(loaded, size, path))


model_source("file", "PATH", "", "core", "a local file: safetensors/state_dict weights (with a named "
             "architecture), or a TorchScript or pickled model (--trust-checkpoint: it runs code when loaded); set "
             "--mean/--std/--labels/--input-size for it", kind="path")(_build_file)


def _count_outputs(net: nn.Module, size: int, path: Path) -> int:
    """How many classes a whole-model file predicts: one forward pass on a grey image of the input size."""
    from featvis.models.classifier import frozen

    try:
        with torch.no_grad(), frozen(net):
            out = net(torch.full((1, 3, size, size), 0.0))
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeatvisError(f"model file {str(path)!r} does not run on a 1×3×{size}×{size} image ({first}); pass the "
                           "input size it takes (input_size=, CLI --input-size)") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FeatvisError(f"model file {str(path)!r} returns {shape}, not logits [B, classes]; wrap it so that "
                           "forward returns logits")
    return int(out.shape[1])


def resolve(name: str | Path) -> tuple[str, Source, str]:
    """(source key, source, arch) for a model name or path; unknown names fail with a did-you-mean."""
    text = str(name).strip()
    path = Path(text).expanduser()
    if isinstance(name, Path) or path.suffix.lower() in FILE_SUFFIXES or _is_file(path):
        return "file", SOURCES.get("file"), str(_absolute(path))
    prefixed = [k for k in SOURCES if SOURCES.get(k).kind == "prefix"]
    if ":" in text:
        prefix, arch = (part.strip() for part in text.split(":", 1))
        if prefix.lower() not in prefixed:
            near = ", ".join(f"'{p}:'" for p in closest(prefix, prefixed))
            raise FeatvisError(f"unknown model source {prefix + ':'!r} in {text!r}; use {near} or a file path")
        if not arch:
            raise FeatvisError(f"model {text!r} names no {prefix} model; write {prefix.lower()}:NAME, e.g. "
                               f"{SOURCES.get(prefix).pattern.replace('NAME', 'resnet50')}")
        return prefix.lower(), SOURCES.get(prefix), arch
    named = [k for k in SOURCES if SOURCES.get(k).kind == "named"]
    if text in SOURCES and SOURCES.canonical(text) in named:
        key = SOURCES.canonical(text)
        return key, SOURCES.get(key), key
    choices = [*named, *(a for k in named for a in SOURCES.aliases(k))]
    near = ", ".join(repr(c) for c in closest(text, choices))
    raise FeatvisError(f"unknown model {text!r}; did you mean {near}? Or torchvision:NAME, timm:NAME or a file path "
                       "(featvis models lists them)")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file; load_checkpoint says why
        return False


def _absolute(path: Path) -> Path:
    """`path` with symlinks resolved, or just made absolute where it cannot be (a loop: load_checkpoint says so)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop (RuntimeError before Python 3.13), a NUL byte
        return path.absolute()


def is_installed(module: str) -> bool:
    if not module:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_models() -> list[dict[str, object]]:
    """Every model source featvis knows, whether it is installed here, and the extra that installs it."""
    return [{"name": s.pattern, "installed": is_installed(s.module), "extra": s.extra, "description": s.description,
             "source": key} for key, s in ((k, SOURCES.get(k)) for k in SOURCES.names())]


def _require(module: str, extra: str, what: str) -> None:
    if not is_installed(module):
        hint = f"pip install 'featvis[{extra}]'" if extra != "core" else "reinstall featvis"
        raise FeatvisError(f"{what} is not installed (needs the Python package {module!r}); run: {hint}")


def load_model(
    name: str | Path = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | Labels | None = None,
    input_size: int | None = None,
) -> Classifier:
    """Load a classifier by name, or from a local file.

    Args:
        name: `efficientnet-lite0` (default, shipped), `efficientnet-lite1/2` (`[models]` extra),
            `torchvision:NAME` (`[torchvision]`), `timm:NAME` (`[timm]`), or a path to a safetensors/state_dict
            file (with `weights=` semantics: name the architecture) or a TorchScript/pickled model.
        device: where to put the model; default CPU (the CLI picks CUDA when available).
        weights: a local state_dict/safetensors file to load into the named architecture (fine-tuned weights;
            a different number of classes is read from the file). Always used when given: nothing is downloaded.
        trust_checkpoint: allow a local file that runs code when loaded: a TorchScript archive (its compiled
            `__setstate__` runs and can read and write files) or a pickle that needs full unpickling. Trusted files
            only; without it both are refused before any of their code runs.
        mean: the per-channel mean of the normalization the network expects (default: the source's metadata).
        std: the per-channel std of that normalization (default: the source's metadata).
        labels: class names, one per class (or a `Labels`); their count must match the model's outputs.
        input_size: the image side; a fixed-size architecture (ViT) is built for it, its position embedding
            resampled from the weights' size.

    Returns:
        A `Classifier` in eval mode, with `source` recording these arguments (see `rebuild`).

    Example:
        >>> clf = load_model("torchvision:resnet50", weights="finetuned.pt", labels=["cat", "dog"])
        >>> clf.labels[1]
        'dog'
    """
    key, source, arch = resolve(name)
    _require(source.module, source.extra, f"model {str(name)!r}")
    if key.startswith("efficientnet-lite"):
        _require("efficientnet_lite_pytorch", "core", "the EfficientNet-Lite architecture")
    if input_size is not None and (isinstance(input_size, bool) or int(input_size) != input_size or input_size < 1):
        raise FeatvisError(f"input_size must be a positive whole number of pixels, got {input_size!r}")
    weights_path = _absolute(Path(weights).expanduser()) if weights is not None else None
    state = _read_weights(weights_path, trust_checkpoint) if weights_path is not None else None
    try:
        clf = source.build(Request(arch, state, None if input_size is None else int(input_size), trust_checkpoint))
    except WeightsError as e:
        if weights_path is None:
            raise
        raise FeatvisError(f"{e} (weights file '{display_path(weights_path)}')") from None
    clf = _override(clf, mean, std, labels, input_size)
    clf.source = ModelSource(
        name=arch if source.kind == "path" else (f"{key}:{arch}" if source.kind == "prefix" else key),
        weights=None if weights_path is None else str(weights_path), trust_checkpoint=bool(trust_checkpoint),
        mean=None if mean is None else tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=None if std is None else tuple(float(v) for v in std),  # type: ignore[arg-type]
        labels=None if labels is None else label_names(labels),
        input_size=None if input_size is None else int(input_size))
    if device is not None:
        clf = clf.to(torch.device(device))
    return clf.eval()


def rebuild(source: ModelSource | Mapping[str, object] | None, device: str | torch.device | None = None, *,
            expected_hash: str | None = None) -> Classifier:
    """Make again the classifier a `ModelSource` (or its `to_dict()`) describes, e.g. in a worker process.

    Args:
        source: `clf.source` or `clf.source.to_dict()` of the original classifier.
        device: where to put it.
        expected_hash: the original's `weights_hash` (or its first 12+ hex digits); a different rebuilt model
            (a weights file changed on disk, another library version's weights) raises instead of running.

    Example:
        >>> clf2 = rebuild(clf.source.to_dict(), "cpu", expected_hash=clf.weights_hash)
    """
    if source is None:
        raise FeatvisError("this classifier has no source to rebuild it from (it was made with Classifier.wrap); "
                           "save it with torch.jit.script(net).save('model.pt') or its weights as safetensors, and "
                           "load it by path with load_model")
    src = source if isinstance(source, ModelSource) else ModelSource.from_dict(source)
    clf = load_model(**src.load_kwargs(), device=device)
    if expected_hash is not None:
        expected = str(expected_hash).lower()
        if len(expected) < 12 or not clf.weights_hash.startswith(expected):
            raise FeatvisError(f"rebuilt model {src.name!r} has weights {clf.weights_hash[:12]}, expected "
                               f"{expected[:12]}; its weights changed since (file edited, other library version)")
    return clf


def _read_weights(path: Path, trust: bool) -> StateDict:
    loaded = load_checkpoint(path, trust=trust)
    if isinstance(loaded, nn.Module):
        raise FeatvisError(f"--weights '{display_path(path)}' is a whole model; pass it as the model (--model FILE) "
                           "instead")
    return loaded


def _override(clf: Classifier, mean, std, labels, input_size) -> Classifier:
    if mean is None and std is None and labels is None and input_size is None:
        return clf
    if labels is not None:
        names = label_names(labels)
        if len(names) != len(clf.labels):
            raise FeatvisError(f"labels: {len(names)} names given but {clf.name} has {len(clf.labels)} classes; "
                               "give one name per class, in the order of its outputs")
        labels = labels if isinstance(labels, Labels) else names
    pre = clf.preprocess
    out = Classifier(clf.net, mean=tuple(mean) if mean is not None else tuple(clf.mean.flatten().tolist()),
                     std=tuple(std) if std is not None else tuple(clf.std.flatten().tolist()),
                     labels=labels if labels is not None else clf.labels,
                     preprocess=Preprocess(int(input_size) if input_size else pre.size, pre.crop_fraction,
                                           pre.interpolation),
                     name=clf.name)
    return out


__all__ = ["DEFAULT_MODEL", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "SOURCES", "Request", "Source",
           "WeightsError", "available_models", "load_model", "load_strict", "rebuild", "resolve"]
