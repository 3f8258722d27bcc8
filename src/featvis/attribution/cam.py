"""Class activation maps from a feature layer: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay
et al. 2018). One forward and one backward pass for the whole batch; the layer's gradients come from tensor hooks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare, score_fn
from featvis.layers import capture, default_layer, find_layer, to_spatial
from featvis.models.classifier import frozen


def layer_maps(clf, images: torch.Tensor, targets: torch.Tensor, layer: str, score: str,
               batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations A and gradients dS/dA of `layer`, each [B, C, h, w] (token outputs reshaped)."""
    fn = score_fn(score)
    acts, grads = [], []
    chunk = batch_size or default_chunk(clf, images)
    with frozen(clf):
        for start in range(0, images.shape[0], chunk):
            x = images[start:start + chunk].detach()
            with torch.enable_grad(), capture(clf, layer, as_leaf=True) as cap:  # no graph before the layer
                s = fn(clf(x), targets[start:start + chunk])
            act = cap.calls[layer][-1]
            # Differentiate to the layer only: the backward pass stops there instead of running to the pixels.
            grad = torch.autograd.grad(s.sum(), act)[0]
            acts.append(to_spatial(act.detach()))
            grads.append(to_spatial(grad))
    return torch.cat(acts), torch.cat(grads)


def _upsample(cam: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    kw = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(cam[:, None], size=size, mode=interpolation, **kw)[:, 0]


def _cam(kind: str):
    def method(clf, images: torch.Tensor, target=None, *, layer: str | None = None, score: str = "logit",
               relu: bool = True, interpolation: str = "bilinear", batch_size: int | None = None) -> torch.Tensor:
        images, targets = prepare(clf, images, target)
        name = find_layer(clf, layer)[0] if layer else default_layer(clf)
        acts, grads = layer_maps(clf, images, targets, name, score, batch_size)
        if kind == "gradcam":
            weights = grads.mean((2, 3), keepdim=True)
        else:  # Grad-CAM++ closed form for an exponential score (their eq. 19)
            g2, g3 = grads.pow(2), grads.pow(3)
            denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g3
            alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
            weights = (alpha * grads.clamp(min=0)).sum((2, 3), keepdim=True)
        cam = (weights * acts).sum(1)
        if relu:
            cam = cam.clamp(min=0)
        return _upsample(cam, tuple(images.shape[-2:]), interpolation)

    method.__name__ = kind.replace("+", "p")
    weighting = "the spatial mean of its gradients" if kind == "gradcam" else "positive gradients with pixel weights α"
    method.__doc__ = f"""{"Grad-CAM" if kind == "gradcam" else "Grad-CAM++"}: a coarse class map from a feature layer,
    weighted by {weighting}.

    Args:
        layer: a layer name (default: the last spatial feature layer, `featvis.default_layer`).
        relu: keep only positive evidence (the papers' ReLU).
        interpolation: how the layer-size map is upsampled to the image ("bilinear", "nearest", "bicubic").

    Returns:
        [B, H, W] at the input resolution.
    """
    return method


gradcam = ATTRIBUTIONS.register("gradcam", aliases=("grad-cam",))(_cam("gradcam"))
gradcam_pp = ATTRIBUTIONS.register("gradcam++", aliases=("gradcampp", "grad-cam++"))(_cam("gradcam++"))
