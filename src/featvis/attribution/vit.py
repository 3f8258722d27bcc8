"""Vision-transformer explanations from attention: attention rollout (Abnar & Zuidema 2020) and gradient-weighted
attention relevance (Chefer, Gur, Wolf 2021). Attention probabilities are recorded by `featvis.layers`
(`capture_attention`: timm's Attention and torch's MultiheadAttention, i.e. timm and torchvision ViTs).

Both read the relevance of the patch tokens from the rows of the tokens the classifier head reads — the class
token (DeiT-distilled: class and distillation tokens, averaged), or, for a mean-pooled head, all patch tokens —
drop every prefix token (class, distillation, registers), lay the patches out as the model's grid and upsample the
grid bilinearly to the image, as both papers' code does.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from featvis._registry import Range
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, score_fn
from featvis.errors import FeatvisError
from featvis.images import check_images
from featvis.layers import TokenLayout, capture_attention, to_spatial, token_layout
from featvis.models.classifier import frozen

HEAD_FUSIONS = ("mean", "max", "min")


def _fuse(probs: torch.Tensor, how: str) -> torch.Tensor:
    """[B, heads, N, N] -> [B, N, N]."""
    if how == "mean":
        return probs.mean(1)
    if how == "max":
        return probs.amax(1)
    if how == "min":
        return probs.amin(1)
    raise FeatvisError(f"unknown head_fusion {how!r}; use one of {', '.join(HEAD_FUSIONS)}")


def _layout(clf, n_tokens: int) -> TokenLayout:
    layout = token_layout(clf)
    if layout is not None:
        return layout
    side = int(n_tokens ** 0.5)
    prefix = n_tokens - side * side  # no metadata: a class token (and registers) before a square grid
    return TokenLayout(prefix, None, (0,) if prefix else ())


def _to_map(relevance: torch.Tensor, layout: TokenLayout, size: tuple[int, int]) -> torch.Tensor:
    """Token-by-token relevance [B, N, N] -> the readout rows' relevance of the patch tokens, upsampled [B, H, W]."""
    rows = list(layout.readout) or list(range(layout.prefix, relevance.shape[1]))
    per_token = relevance[:, rows, :].mean(1)  # [B, N]: what the head's tokens draw from each token
    grid = to_spatial(per_token[:, :, None], layout)  # [B, 1, h, w]; prefix tokens dropped
    if grid.ndim != 4:
        raise FeatvisError(f"cannot lay out {per_token.shape[1]} tokens as a patch grid; feed a square image of the "
                           "model's input size")
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def _attention(clf, x: torch.Tensor, grads_of: torch.Tensor | None = None, score=None):
    """Every layer's attention probabilities for `x` (and, with a target, d score / d probabilities)."""
    with capture_attention(clf) as cap:
        if grads_of is None:
            with torch.no_grad():
                clf(x)
            probs, grads = [p.detach() for p in cap.probs], None
        else:
            with torch.enable_grad():
                s = score(clf(x.requires_grad_(True)), grads_of)
                found = torch.autograd.grad(s.sum(), cap.probs, allow_unused=True) if cap.probs else ()
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(cap.probs, found, strict=True)]
            probs = [p.detach() for p in cap.probs]
    if not probs:
        raise FeatvisError("the model ran none of its attention layers through a path featvis can record (e.g. "
                           "nn.TransformerEncoderLayer's fused fast path); attention maps support timm and torchvision "
                           "ViTs")
    return probs, grads


@ATTRIBUTIONS.register("attention-rollout", aliases=("rollout",), needs="attention")
def attention_rollout(clf, images: torch.Tensor, target=None, *, head_fusion: str = "mean",
                      discard_ratio: Annotated[float, Range(0, 0.99)] = 0.0,
                      batch_size: int | None = None) -> torch.Tensor:
    """Attention rollout: how much the head's tokens draw from each patch through all layers, residuals included.

    Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers" (ACL): per layer Â = ½(A + I) with A the
    heads' fused attention, rows renormalized; rollout = Â_L ⋯ Â_1. Class-agnostic: `target` does not change it.
    Vision transformers only (timm, torchvision); other models are refused.

    Args:
        head_fusion: how heads are combined: "mean" (the paper), "max" or "min" (jacobgil/vit-explain).
        discard_ratio: share of each layer's lowest fused attentions set to zero before rollout (vit-explain's
            noise filter, which keeps the first token's attention to itself); 0 = the paper.

    Returns:
        [B, H, W] at the input resolution.

    Example:
        >>> maps = attention_rollout(clf, x)
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise FeatvisError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    images = check_images(images).to(clf.device)
    out = []
    chunk = batch_size or default_chunk(clf, images, backward=False)
    with frozen(clf):
        for start in range(0, images.shape[0], chunk):
            probs, _ = _attention(clf, images[start:start + chunk].detach())
            n = probs[0].shape[-1]
            eye = torch.eye(n, device=images.device, dtype=probs[0].dtype)
            rollout = eye.expand(probs[0].shape[0], n, n)
            for p in probs:
                fused = _fuse(p, head_fusion)
                if discard_ratio > 0:
                    fused = _discard(fused, discard_ratio)
                a = 0.5 * fused + 0.5 * eye
                a = a / a.sum(-1, keepdim=True)
                rollout = a @ rollout
            out.append(_to_map(rollout, _layout(clf, n), tuple(images.shape[-2:])))
    return torch.cat(out)


def _discard(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the lowest `ratio` of each image's fused attentions, except entry [0, 0] (jacobgil/vit-explain)."""
    flat = fused.flatten(1).clone()  # [B, N*N]
    k = int(flat.shape[1] * ratio)
    if k == 0:
        return fused
    lowest = flat.topk(k, dim=1, largest=False).indices
    flat.scatter_(1, lowest, torch.where(lowest == 0, flat.gather(1, lowest), 0.0))
    return flat.view_as(fused)


@ATTRIBUTIONS.register("chefer", aliases=("gradient-attention", "transformer-attribution"), needs="attention")
def chefer(clf, images: torch.Tensor, target=None, *, score: str = "logit",
           batch_size: int | None = None) -> torch.Tensor:
    """Gradient-weighted attention relevance of each patch for the target class.

    Chefer, Gur, Wolf 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers" (ICCV), self-attention rules: R = I; for each layer in order R ← R + Ē·R with
    Ē = mean over heads of ReLU(∇A ⊙ A), ∇A = d score / d A. Class-specific. Vision transformers only.

    Returns:
        [B, H, W] at the input resolution.

    Example:
        >>> maps = chefer(clf, x, "tabby")
    """
    images, targets = prepare_inputs(clf, images, target)
    fn = score_fn(score)
    out = []
    chunk = batch_size or default_chunk(clf, images)
    with frozen(clf):
        for start in range(0, images.shape[0], chunk):
            x = images[start:start + chunk].detach().clone()
            probs, grads = _attention(clf, x, targets[start:start + chunk], fn)
            b, _, n, _ = probs[0].shape
            relevance = torch.eye(n, device=images.device, dtype=probs[0].dtype).repeat(b, 1, 1)
            for p, g in zip(probs, grads, strict=True):
                weighted = (g * p).clamp(min=0).mean(1)  # [B, N, N]
                relevance = relevance + weighted @ relevance
            out.append(_to_map(relevance, _layout(clf, n), tuple(images.shape[-2:])))
    return torch.cat(out)
