"""The architectures the integration tests cover, and how a test checkpoint is made for each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    """One architecture as a user names it, and what the tests expect of it."""

    id: str
    name: str  # featvis model name
    size: int  # the side the tests feed (small: a few minutes for the whole table on 2 cores)
    vit: bool = False
    relu_only: bool = False  # guided backprop applies (otherwise it must refuse in one line)
    head: int | None = None  # build the test checkpoint with this many classes (DINOv2 ships no head)


CASES = [
    Case("resnet50", "torchvision:resnet50", 64, relu_only=True),
    Case("mobilenet_v3_large", "torchvision:mobilenet_v3_large", 64),  # Hardswish
    Case("convnext_tiny", "torchvision:convnext_tiny", 64),  # GELU
    Case("vit_b_16", "torchvision:vit_b_16", 64, vit=True),  # 1 class token, 4 × 4 patches of 16
    Case("vit_small_patch16_224", "timm:vit_small_patch16_224", 64, vit=True),
    Case("deit_small_patch16_224", "timm:deit_small_patch16_224", 64, vit=True),
    Case("deit_small_distilled_patch16_224", "timm:deit_small_distilled_patch16_224", 64, vit=True),  # 2 prefix
    Case("efficientnet_b0", "timm:efficientnet_b0", 64),  # SiLU
    Case("vit_small_patch14_reg4_dinov2", "timm:vit_small_patch14_reg4_dinov2", 56, vit=True, head=1000),  # 5 prefix
]


def architecture(case: Case, **kwargs) -> torch.nn.Module:
    """The bare architecture, built by its library (native size unless kwargs say otherwise), random weights."""
    library, arch = case.name.split(":", 1)
    torch.manual_seed(0)
    if library == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **kwargs)
    import timm

    if case.head is not None:
        kwargs.setdefault("num_classes", case.head)
    return timm.create_model(arch, pretrained=False, **kwargs)


ZERO_INIT_STD = 0.02  # timm's trunc_normal std for ViT weights


def calibrate(net: torch.nn.Module, size: int) -> torch.nn.Module:
    """Random weights that behave like a trained network's in scale: weight matrices a library initializes to zero
    (torchvision's ViT head: constant logits, zero gradients everywhere) drawn at std 0.02, and BatchNorm running
    statistics estimated on noise images (cumulative average), so logits and gradients are neither zero nor huge."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * ZERO_INIT_STD)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        with torch.no_grad():
            for _ in range(2):
                net(torch.rand(8, 3, size, size, generator=gen) * 4 - 2)
        for m in bns:
            m.momentum = 0.1
    return net.eval()


@dataclass
class Built:
    """A case loaded through featvis from a weights file the test wrote."""

    case: Case
    clf: Any  # featvis.Classifier at the test size
    weights: Path  # the native-size checkpoint
    seconds: float
