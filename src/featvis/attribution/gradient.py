"""Gradient-based maps: the lab's saliency (Simonyan et al. 2013), gradient × input, guided backprop, deconvnet."""

from __future__ import annotations

import torch
from torch import nn

from featvis.attribution._base import ATTRIBUTIONS, input_gradients, prepare_inputs, reduce_channels
from featvis.errors import FeatvisError
from featvis.layers import swapped_forward


@ATTRIBUTIONS.register("gradient", aliases=("saliency", "vanilla"))
def gradient(clf, images: torch.Tensor, target=None, *, score: str = "logit", reduce: str = "max-abs",
             batch_size: int | None = None) -> torch.Tensor:
    """How much each pixel moves the class score: |d score / d x|, max over colour channels (the lab's map).

    Simonyan, Vedaldi, Zisserman 2013, "Deep Inside Convolutional Networks" (arXiv 1312.6034).

    Args:
        score: "logit" (default), "log-prob" (the lab's loss −log p, negated) or "prob".
        reduce: channel reduction: "max-abs" (the lab), "abs-sum", "l2", "sum" (signed) or "none" ([B, 3, H, W]).

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").

    Example:
        >>> sal = gradient(clf, x, "tabby")
    """
    images, targets = prepare_inputs(clf, images, target)
    return reduce_channels(input_gradients(clf, images, targets, score=score, batch_size=batch_size), reduce)


@ATTRIBUTIONS.register("input-x-gradient", aliases=("ixg", "gradient-x-input"))
def input_x_gradient(clf, images: torch.Tensor, target=None, *, score: str = "logit", reduce: str = "sum",
                     batch_size: int | None = None) -> torch.Tensor:
    """Gradient times input, a first-order Taylor attribution (Shrikumar et al. 2016). Signed by default.

    Returns:
        [B, H, W], summed over channels (reduce="none" for [B, 3, H, W]).
    """
    images, targets = prepare_inputs(clf, images, target)
    grads = input_gradients(clf, images, targets, score=score, batch_size=batch_size)
    return reduce_channels(grads * images, reduce)


class _ModifiedReLU(torch.autograd.Function):
    """ReLU / ReLU6 forward; a backward rule of the modified-gradient methods instead of the gate.

    "guided" (Springenberg et al. 2015): only positive gradients, and only through units the forward pass let
    through (0 < x, and x < 6 for ReLU6). "deconvnet" (Zeiler & Fergus 2014): only positive gradients, whatever the
    forward pass did: the deconvnet's "rectification" of the reconstruction ignores the forward mask, ReLU6's
    saturation included (Captum's Deconvolution: relu of the output gradient).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, rule: str) -> torch.Tensor:
        out = x.clamp(min=0) if upper is None else x.clamp(0, upper)
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward((out > 0) if upper is None else (out > 0) & (out < upper))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        (mask,) = ctx.saved_tensors
        return grad.clamp(min=0) * mask, None, None


# Activations whose backward guided backprop has no rule for (it is defined on ReLU's gate, Springenberg et al.
# 2015). Swapping only the ReLUs of a model that also has these would give a map of neither method.
_NON_RELU = ("GELU", "SiLU", "Swish", "Hardswish", "HardSwish", "Mish", "ELU", "SELU", "CELU", "Softplus",
             "QuickGELU", "GELUTanh", "HardMish")
RULES = ("guided", "deconvnet")


def _non_relu_activations(clf) -> dict[str, int]:
    from featvis.layers import root

    found: dict[str, int] = {}
    for m in root(clf).modules():
        kind = type(m).__name__
        if kind in _NON_RELU:
            found[kind] = found.get(kind, 0) + 1
    return found


def modified_gradients(clf, images: torch.Tensor, targets: torch.Tensor, *, rule: str, method: str,
                       score: str = "logit", batch_size: int | None = None) -> torch.Tensor:
    """d score / d images [B, 3, H, W] with every nn.ReLU / nn.ReLU6 module's backward replaced by `rule`
    ("guided" or "deconvnet"); the forward passes are unchanged. `method` names the caller in errors.

    The rule applies to every call of a reused or in-place module (`swapped_forward`); functional relus inside a
    custom forward are not seen. A model with other activation modules is refused: the rules are defined on ReLU.
    """
    other = _non_relu_activations(clf)
    if other:
        kinds = ", ".join(f"{k} ({n}×)" for k, n in other.items())
        raise FeatvisError(f"{method} is defined for ReLU networks and this model uses {kinds}; use gradient, "
                           "integrated-gradients or gradcam")

    def make_forward(module: nn.Module):
        upper = 6.0 if isinstance(module, nn.ReLU6) else None
        return lambda x: _ModifiedReLU.apply(x, upper, rule)

    with swapped_forward(clf, (nn.ReLU, nn.ReLU6), make_forward) as n:
        if n == 0:
            raise FeatvisError(f"{method} needs nn.ReLU/nn.ReLU6 modules and this model has none")
        return input_gradients(clf, images, targets, score=score, batch_size=batch_size)


@ATTRIBUTIONS.register("guided-backprop", aliases=("gbp", "guided"))
def guided_backprop(clf, images: torch.Tensor, target=None, *, score: str = "logit", reduce: str = "max-abs",
                    batch_size: int | None = None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU, only positive gradients pass back.

    Applies to `nn.ReLU` and `nn.ReLU6` modules (also reused or in-place ones; ReLU6 passes gradients only where
    0 < x < 6); functional relus inside a custom forward are not seen. A model with other activation modules (GELU,
    SiLU, Hardswish: ViTs, ConvNeXt, EfficientNet, MobileNetV3) is refused: the rule is not defined for them. Known
    to ignore the top layers' weights (Adebayo et al. 2018): see `sanity`.

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").
    """
    images, targets = prepare_inputs(clf, images, target)
    grads = modified_gradients(clf, images, targets, rule="guided", method="guided-backprop", score=score,
                               batch_size=batch_size)
    return reduce_channels(grads, reduce)


@ATTRIBUTIONS.register("deconvnet", aliases=("deconvolution", "deconv"))
def deconvnet(clf, images: torch.Tensor, target=None, *, score: str = "logit", reduce: str = "max-abs",
              batch_size: int | None = None) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): backpropagation where every ReLU passes back only positive signal.

    Unlike guided backprop the forward pass's mask is ignored: a ReLU (or ReLU6, saturation too) passes the positive
    part of the gradient whatever its input was, as Captum's `Deconvolution`. The same modules and refusals as
    guided-backprop.

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").
    """
    images, targets = prepare_inputs(clf, images, target)
    grads = modified_gradients(clf, images, targets, rule="deconvnet", method="deconvnet", score=score,
                               batch_size=batch_size)
    return reduce_channels(grads, reduce)
