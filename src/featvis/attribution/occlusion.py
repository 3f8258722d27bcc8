"""Occlusion (Zeiler & Fergus 2014): how much the score drops when a window of the image is replaced."""

from __future__ import annotations

import torch

from featvis import _progress
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.attribution.integrated import make_baseline
from featvis.errors import FeatvisError
from featvis.models.classifier import frozen


@ATTRIBUTIONS.register("occlusion")
def occlusion(clf, images: torch.Tensor, target=None, *, window: Count = 16, stride: Count = 8, baseline="mean",
              score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """Slide a window over the image, fill it with `baseline`, and record the score drop; each pixel gets the
    mean drop over the windows that cover it (Captum's `Occlusion` definition).

    Args:
        window: window side in pixels.
        stride: step between windows; all windows of an image go through the model in batches (no gradients).
        baseline: what fills the window: "mean" colour (default), "black", "blur", "noise" or a tensor.

    Returns:
        [B, H, W]; positive where covering the pixel lowers the score.
    """
    images, targets = prepare_inputs(clf, images, target)
    b, _, h, w = images.shape
    if not 1 <= window <= min(h, w) or stride < 1:
        raise FeatvisError(f"occlusion window {window} / stride {stride} do not fit a {h}×{w} image")
    fill = make_baseline(clf, images, baseline)
    tops = list(range(0, h - window + 1, stride))
    lefts = list(range(0, w - window + 1, stride))
    if tops[-1] != h - window:  # cover the border too
        tops.append(h - window)
    if lefts[-1] != w - window:
        lefts.append(w - window)
    masks = torch.zeros(len(tops) * len(lefts), 1, h, w, device=images.device, dtype=images.dtype)
    for i, (t, left) in enumerate((t, left) for t in tops for left in lefts):
        masks[i, :, t:t + window, left:left + window] = 1
    fn = score_fn(score)
    chunk = batch_size or default_chunk(clf, images, backward=False)
    out = torch.empty(b, h, w, device=images.device, dtype=images.dtype)
    coverage = masks.sum(0)[0]
    with torch.no_grad(), frozen(clf):
        base_scores = fn(clf(images), targets)
        for j in range(b):
            drops = []
            for start in range(0, masks.shape[0], chunk):
                m = masks[start:start + chunk]
                x = images[j:j + 1] * (1 - m) + fill[j:j + 1] * m
                drops.append(base_scores[j] - fn(clf(x), targets[j].repeat(m.shape[0])))
                _progress.update("occlusion windows", j * masks.shape[0] + start + m.shape[0], b * masks.shape[0])
            d = torch.cat(drops)
            out[j] = (d.view(-1, 1, 1) * masks[:, 0]).sum(0) / coverage.clamp_min(1)
    return out
