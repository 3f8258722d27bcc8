"""Faithfulness metrics: deletion and insertion curves and their AUC, following the RISE protocol exactly.

Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"; protocol of
their reference `evaluation.py`: the softmax probability of the class the model originally predicted, a fixed
number of pixels moved per step (the image side, i.e. 224 per step at 224²), the most salient pixels first.
Deletion replaces pixels with a substrate (zero in normalized space = the model's mean colour) — a faithful map
makes the probability fall fast (low AUC). Insertion starts from a strongly blurred image (kernel 11, σ 5) and
puts the original pixels back — a faithful map makes it rise fast (high AUC). AUC = trapezoid area / n steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featvis._ops import Seed, gaussian_blur, random_draw
from featvis._progress import update
from featvis._stats import auc
from featvis.attribution._base import default_chunk
from featvis.errors import FeatvisError
from featvis.images import check_images
from featvis.models.classifier import frozen

INSERTION_BLUR = (11, 5.0)  # kernel size, σ: the RISE reference substrate


@dataclass(frozen=True)
class Curve:
    """One metric for a batch: probabilities after each step and the normalized area under them."""

    kind: str  # "deletion" or "insertion"
    probs: torch.Tensor  # [B, steps + 1], from the start image to the fully deleted/inserted one
    auc: torch.Tensor  # [B], in [0, 1]
    classes: torch.Tensor  # [B], the originally predicted classes


def substrate(clf, images: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mean":
        return clf.mean.to(images).expand_as(images)
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "blur":
        size, sigma = INSERTION_BLUR
        return gaussian_blur(images, sigma, size)
    raise FeatvisError(f"unknown substrate {kind!r}; use 'mean', 'black' or 'blur'")


def _curve(clf, images: torch.Tensor, maps: torch.Tensor, kind: str, *, start: torch.Tensor, end: torch.Tensor,
           pixels_per_step: int | None, batch_size: int | None, targets: torch.Tensor | None = None) -> Curve:
    images = check_images(images, dtype=clf.dtype).to(clf.device)
    b, _, h, w = images.shape
    if maps.shape != (b, h, w):
        raise FeatvisError(f"maps have shape {tuple(maps.shape)}; expected {(b, h, w)} to match the images")
    step = pixels_per_step or w
    n = -(-h * w // step)  # ceil
    # rank[b, p] = position of pixel p in descending saliency (ties: lower index first)
    order = maps.reshape(b, -1).to(images.device).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    chunk = batch_size or default_chunk(clf, images, backward=False)
    probs = torch.empty(b * (n + 1), device=images.device)
    # One model call per chunk of (image, step) pairs, across images: every call is full whatever B and n are.
    image_of = torch.arange(b, device=images.device).repeat_interleave(n + 1)
    step_of = torch.arange(n + 1, device=images.device).repeat(b)
    with torch.no_grad(), frozen(clf):
        classes = clf(images).argmax(-1) if targets is None else targets.to(images.device)
        for s0 in range(0, b * (n + 1), chunk):
            j, k = image_of[s0:s0 + chunk], step_of[s0:s0 + chunk]
            moved = rank[j] < (k * step).view(-1, 1, 1, 1)  # [c, 1, H, W]: pixels deleted / inserted after k steps
            x = torch.where(moved, end[j], start[j])
            probs[s0:s0 + j.shape[0]] = clf(x).softmax(-1).gather(1, classes[j, None])[:, 0]
            update(kind, s0 + j.shape[0], b * (n + 1))
    probs = probs.view(b, n + 1)
    return Curve(kind, probs, auc(probs), classes)


def deletion(clf, images: torch.Tensor, maps: torch.Tensor, *, substrate_kind: str = "mean",
             pixels_per_step: int | None = None, batch_size: int | None = None,
             targets: torch.Tensor | None = None) -> Curve:
    """Deletion curve: remove the most salient pixels first; lower AUC is better.

    `targets`: the classes whose probability is tracked; default the originally predicted ones (the protocol).
    All (image, step) inputs of the batch go through the model in chunks of `batch_size`.
    """
    return _curve(clf, images, maps, "deletion", start=images.to(clf.device),
                  end=substrate(clf, images.to(clf.device), substrate_kind),
                  pixels_per_step=pixels_per_step, batch_size=batch_size, targets=targets)


def insertion(clf, images: torch.Tensor, maps: torch.Tensor, *, substrate_kind: str = "blur",
              pixels_per_step: int | None = None, batch_size: int | None = None,
              targets: torch.Tensor | None = None) -> Curve:
    """Insertion curve: reveal the most salient pixels first on a blurred image; higher AUC is better."""
    x = images.to(clf.device)
    return _curve(clf, images, maps, "insertion", start=substrate(clf, x, substrate_kind), end=x,
                  pixels_per_step=pixels_per_step, batch_size=batch_size, targets=targets)


def random_maps(images: torch.Tensor, seed: Seed = 0) -> torch.Tensor:
    """The uniform-random attribution baseline [B, H, W] every method should beat (one seed, or one per image)."""
    b, _, h, w = images.shape
    return random_draw("uniform", seed, (b, h, w), device=images.device)
