"""What every attribution method shares: targets, scores, batched input gradients, channel reduction, chunking."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from featvis import _progress
from featvis._registry import SpecRegistry
from featvis.attribution.units import with_units
from featvis.errors import FeatvisError
from featvis.images import check_images
from featvis.models.classifier import frozen

# Every method takes (clf, images, target) and `batch_size` (documented once, in featvis.attribution); the rest of
# its keyword-only parameters are its options, read from its signature and docstring by the registry.
# Every call through the registry also takes a unit target (layer:NAME:C; featvis.attribution.units).
ATTRIBUTIONS = SpecRegistry("attribution method", shared=("batch_size", "return_delta"), common_help={
    "score": 'what is explained: "logit" (default), "log-prob" or "prob" of the target class',
    "reduce": 'channel reduction: "max-abs", "abs-sum", "l2", "sum" (signed) or "none" ([B, 3, H, W])',
    "seed": "seeds the method's random draws (an int, or one per image); same seed, same map",
}, wrap=with_units)

SCORES = ("logit", "log-prob", "prob")
REDUCTIONS = ("max-abs", "abs-sum", "l2", "sum", "none")
MAX_CHUNK = 32  # beyond this a CPU gains nothing per image (benchmarks/floor.py) and memory only grows


def resolve_targets(clf, images: torch.Tensor, target) -> torch.Tensor:
    """Class indices [B] from a class (index or name), one per image (list/tensor), or None (predicted class)."""
    b = images.shape[0]
    if target is None:
        with torch.no_grad(), frozen(clf):
            return clf(images).argmax(-1)
    return torch.tensor(clf.labels.per_image(target, b), device=images.device, dtype=torch.long)


def score_fn(score: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(logits [B, K], targets [B]) -> the score [B] to explain: the logit (default), log-probability or prob."""
    if score == "logit":
        return lambda logits, t: logits.gather(1, t[:, None])[:, 0]
    if score == "log-prob":
        return lambda logits, t: logits.log_softmax(-1).gather(1, t[:, None])[:, 0]
    if score == "prob":
        return lambda logits, t: logits.softmax(-1).gather(1, t[:, None])[:, 0]
    raise FeatvisError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")


def reduce_channels(maps: torch.Tensor, how: str) -> torch.Tensor:
    """Per-channel attributions [B, 3, H, W] to one map [B, H, W] (or unchanged with "none")."""
    if how == "max-abs":
        return maps.abs().amax(1)
    if how == "abs-sum":
        return maps.abs().sum(1)
    if how == "l2":
        return maps.pow(2).sum(1).sqrt()
    if how == "sum":
        return maps.sum(1)
    if how == "none":
        return maps
    raise FeatvisError(f"unknown channel reduction {how!r}; use one of {', '.join(REDUCTIONS)}")


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 * 2**30


def default_chunk(clf, images: torch.Tensor, backward: bool = True) -> int:
    """How many images to push through at once: a quarter of free memory over the per-image activation cost
    (all layer outputs, kept for backward), capped at MAX_CHUNK."""
    from featvis.layers import list_layers

    side = max(images.shape[-2:])
    per_image = sum(4 * _numel(i.shape) for i in list_layers(clf, size=side) if i.shape) or 4 * images[0].numel()
    per_image *= 3 if backward else 1
    return max(1, min(chunk_cap(), _available_bytes(images.device) // 4 // max(per_image, 1)))


def chunk_cap() -> int:
    """The most images per model call: `FEATVIS_MAX_CHUNK`, else MAX_CHUNK (the runner records it: results of a
    method whose chunks interact, such as a batch-dependent kernel choice, depend on it)."""
    env = os.environ.get("FEATVIS_MAX_CHUNK", "").strip()
    if not env:
        return MAX_CHUNK
    try:
        cap = int(env)
    except ValueError:
        raise FeatvisError(f"FEATVIS_MAX_CHUNK={env!r} must be a whole number of images (e.g. 8)") from None
    if cap < 1:
        raise FeatvisError(f"FEATVIS_MAX_CHUNK={env!r} must be at least 1")
    return cap


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def input_gradients(clf, images: torch.Tensor, targets: torch.Tensor, *, score: str = "logit",
                    batch_size: int | None = None) -> torch.Tensor:
    """d score / d images, [B, 3, H, W], in chunks. Parameters' .grad is never touched (autograd.grad)."""
    fn = score_fn(score)
    chunk = batch_size or default_chunk(clf, images)
    out = torch.empty_like(images)
    with frozen(clf), torch.enable_grad():  # also inside a caller's no_grad (captum.metrics calls methods so)
        for start in range(0, images.shape[0], chunk):
            x = images[start:start + chunk].detach().requires_grad_(True)
            s = fn(clf(x), targets[start:start + chunk])
            out[start:start + chunk] = torch.autograd.grad(s.sum(), x)[0]
            _progress.update("gradients", min(start + chunk, images.shape[0]), images.shape[0])
    return out


def prepare_inputs(clf, images: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate images (moved to the classifier's device) and resolve the targets."""
    images = check_images(images, dtype=clf.dtype).to(clf.device)
    return images, resolve_targets(clf, images, target)
