"""Class activation maps from a feature layer: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al.
2018) and LayerCAM (Jiang et al. 2021): one forward and one backward pass for the whole batch, the layer's gradients
from tensor hooks. Score-CAM (Wang et al. 2020): no gradients, one forward per channel, batched over channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featvis._progress import update
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.layers import capture, default_layer, find_layer, forward_until, to_spatial
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
            acts.append(to_spatial(act.detach(), clf))
            grads.append(to_spatial(grad, clf))
    return torch.cat(acts), torch.cat(grads)


def _upsample(cam: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    kw = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(cam[:, None], size=size, mode=interpolation, **kw)[:, 0]


def _cam(kind: str):
    def method(clf, images: torch.Tensor, target=None, *, layer: str | None = None, score: str = "logit",
               relu: bool = True, interpolation: str = "bilinear", batch_size: int | None = None) -> torch.Tensor:
        images, targets = prepare_inputs(clf, images, target)
        name = find_layer(clf, layer)[0] if layer else default_layer(clf)
        acts, grads = layer_maps(clf, images, targets, name, score, batch_size)
        if kind == "gradcam":
            weights = grads.mean((2, 3), keepdim=True)
        elif kind == "layercam":  # a weight per position: the positive gradient there (Jiang et al. 2021, eq. 5)
            weights = grads.clamp(min=0)
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
    title, weighting, paper = {
        "gradcam": ("Grad-CAM", "the spatial mean of its gradients", "Selvaraju et al. 2017"),
        "gradcam++": ("Grad-CAM++", "positive gradients with pixel weights α", "Chattopadhay et al. 2018"),
        "layercam": ("LayerCAM", "its positive gradient at each position (ReLU(∂S/∂A) ⊙ A summed over channels)",
                     "Jiang et al. 2021, IEEE TIP"),
    }[kind]
    method.__doc__ = f"""{title}: a coarse class map from a feature layer, weighted by {weighting}.

    {paper}.

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
layercam = ATTRIBUTIONS.register("layercam", aliases=("layer-cam",))(_cam("layercam"))


@ATTRIBUTIONS.register("scorecam", aliases=("score-cam",))
def scorecam(clf, images: torch.Tensor, target=None, *, layer: str | None = None, interpolation: str = "bilinear",
             batch_size: int | None = None) -> torch.Tensor:
    """Score-CAM: each channel of a feature layer, as a mask on the image, is weighted by the class score it keeps.

    Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks" (CVPR-W).
    As torch-cam and pytorch-grad-cam compute it: each channel is min–max normalized to [0, 1] at the layer's
    resolution, upsampled bilinearly and laid over the image (masked-out pixels take the model's mean colour, i.e.
    the normalized input is multiplied by the mask); the weights are the softmax over channels of the target logit
    of the masked images; map = ReLU(Σₖ wₖ Aₖ). One forward per channel and image, no gradients.

    Args:
        layer: a layer name (default: the last spatial feature layer, `featvis.default_layer`).
        interpolation: how the layer-size map is upsampled to the image ("bilinear", "nearest", "bicubic").

    Returns:
        [B, H, W] at the input resolution.
    """
    images, targets = prepare_inputs(clf, images, target)
    name = find_layer(clf, layer)[0] if layer else default_layer(clf)
    b, _, h, w = images.shape
    fill = clf.mean.to(images).view(1, 3, 1, 1)
    chunk = batch_size or default_chunk(clf, images, backward=False)
    with torch.no_grad(), frozen(clf):
        acts = forward_until(clf, images, name).to(images.dtype)  # [B, C, h, w]
        c = acts.shape[1]
        lo, hi = acts.amin((2, 3), keepdim=True), acts.amax((2, 3), keepdim=True)
        unit = (acts - lo) / (hi - lo + 1e-8)  # torch-cam's normalization (eps 1e-8)
        logits = torch.empty(b * c, device=images.device, dtype=images.dtype)
        owner = torch.arange(b, device=images.device).repeat_interleave(c)  # image of each (image, channel) pair
        for start in range(0, b * c, chunk):
            sl = slice(start, min(start + chunk, b * c))
            m = F.interpolate(unit.flatten(0, 1)[sl, None], size=(h, w), mode="bilinear", align_corners=False)
            x = images[owner[sl]] * m + fill * (1 - m)
            logits[sl] = clf(x).gather(1, targets[owner[sl], None])[:, 0]
            update("scorecam", sl.stop, b * c)
        weights = logits.view(b, c).softmax(-1)[:, :, None, None]
        cam = (weights * acts).sum(1).clamp(min=0)
    return _upsample(cam, (h, w), interpolation)
