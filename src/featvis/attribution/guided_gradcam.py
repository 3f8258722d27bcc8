"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation's fine map gated by Grad-CAM's class region."""

from __future__ import annotations

import torch

from featvis.attribution._base import ATTRIBUTIONS, prepare_inputs, reduce_channels
from featvis.attribution.cam import gradcam
from featvis.attribution.gradient import modified_gradients


@ATTRIBUTIONS.register("guided-gradcam", aliases=("guided-grad-cam", "ggcam"))
def guided_gradcam(clf, images: torch.Tensor, target=None, *, layer: str | None = None, score: str = "logit",
                   interpolation: str = "bilinear", reduce: str = "max-abs",
                   batch_size: int | None = None) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop's gradients, per colour channel, times the upsampled Grad-CAM map.

    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
    section 3.1; as Captum's `GuidedGradCam`: Grad-CAM with its ReLU (on the true gradients), upsampled to the image,
    multiplies the guided-backprop attribution of each channel, and the product is then reduced. Two backward
    passes (Grad-CAM's and guided backprop's); the same ReLU-only rule and refusals as guided-backprop.

    Args:
        layer: Grad-CAM's layer (default: the last spatial feature layer, `featvis.default_layer`).
        interpolation: how the Grad-CAM map is upsampled ("bilinear", as the paper; "nearest" is Captum's default,
            "bicubic").
        reduce: channel reduction of the product ("max-abs" default; "none" for [B, 3, H, W], Captum's output).

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").

    Example:
        >>> ggc = guided_gradcam(clf, x, "tabby")
    """
    images, targets = prepare_inputs(clf, images, target)
    guided = modified_gradients(clf, images, targets, rule="guided", method="guided-gradcam", score=score,
                                batch_size=batch_size)  # first: a model it refuses costs no Grad-CAM pass
    cam = gradcam(clf, images, targets, layer=layer, score=score, relu=True, interpolation=interpolation,
                  batch_size=batch_size)  # [B, H, W] at the input resolution
    return reduce_channels(guided * cam[:, None], reduce)
