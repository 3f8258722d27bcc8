"""Third-party module classes the fast copy knows how to fold, recognised by type.

Each class is looked up in `sys.modules` only: a network can hold an instance only once the class's module has been
imported, so nothing is imported here (timm alone takes seconds) and a package that is not installed costs nothing.
A match is by class, and a subclass counts only if it keeps the class's forward (one that changes it computes
something else). Copies of these classes pasted into a user's own code are not recognised: their names say nothing
about what their forward does, so they run unfolded (their BatchNorm still folds where the conv is a plain Conv2d).
"""

from __future__ import annotations

import sys

from torch import nn

# Conv2d subclasses that only pad ("same" padding, TensorFlow style) and then convolve with their own weight and
# bias: folding applies to them as to nn.Conv2d. (module, class): lukemelas' EfficientNet, its Lite port (featvis's
# shipped models) and timm's Conv2dSame (timm.models.layers re-exports the same class objects).
DYNAMIC_SAME = (("efficientnet_lite_pytorch.utils", "Conv2dDynamicSamePadding"),
                ("efficientnet_pytorch.utils", "Conv2dDynamicSamePadding"),
                ("timm.layers.conv2d_same", "Conv2dSame"))
STATIC_SAME = (("efficientnet_lite_pytorch.utils", "Conv2dStaticSamePadding"),
               ("efficientnet_pytorch.utils", "Conv2dStaticSamePadding"))
# timm's BatchNorm + activation in one module (ResNets, EfficientNets, MobileNets built by timm)
BN_ACT = (("timm.layers.norm_act", "BatchNormAct2d"),)


def _classes(where: tuple[tuple[str, str], ...]) -> list[type]:
    found = []
    for module, name in where:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return found


def _is(m: nn.Module, where: tuple[tuple[str, str], ...]) -> type | None:
    """The known class `m` is an instance of (keeping its forward), or None."""
    for cls in _classes(where):
        if isinstance(m, cls) and type(m).forward is cls.forward:
            return cls
    return None


def is_dynamic_same(m: nn.Module) -> bool:
    """A convolution that pads "same" for each input size, then runs F.conv2d with its own weight and bias."""
    return _is(m, DYNAMIC_SAME) is not None


def is_static_same(m: nn.Module) -> bool:
    """A convolution that applies its `static_padding` module, then runs F.conv2d with its own weight and bias."""
    return _is(m, STATIC_SAME) is not None


def is_same_padding(m: nn.Module) -> bool:
    return is_dynamic_same(m) or is_static_same(m)


def is_bn_act(m: nn.Module) -> bool:
    """timm's BatchNormAct2d: eval-mode BatchNorm, then `drop` (identity in eval), then `act`, in one module."""
    return _is(m, BN_ACT) is not None and isinstance(m, nn.BatchNorm2d) \
        and isinstance(getattr(m, "drop", None), (nn.Identity, nn.Dropout)) \
        and isinstance(getattr(m, "act", None), nn.Module)
