"""Tiny models for the CRAFT tests: a non-negative layer followed by a known head."""

from __future__ import annotations

import torch
from torch import nn

import featvis as fv
from featvis.concepts import Concepts

CLASSES = 3


class PoolNet(nn.Module):
    """conv → ReLU (the split) → global average pool → linear: h is linear in the activations' spatial mean, so
    the class logit of (m ⊙ u) W is b + Σ_j m_j mean(u_j) (W_j · w): additive in the concepts."""

    def __init__(self, channels: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, 3, padding=1, stride=4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, CLASSES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class Untraceable(PoolNet):
    """PoolNet with data-dependent control flow that torch.fx cannot trace: the split falls back to hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        if float(y.sum()) >= 0:  # always true; fx cannot know
            y = self.pool(y)
        return self.fc(y.flatten(1))


class Skip(PoolNet):
    """A skip connection around conv2: the rest of the network reads more than conv2's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(6, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        return self.fc(self.pool(self.relu(self.conv2(y)) + y).flatten(1))


def wrap(net: nn.Module) -> fv.Classifier:
    return fv.Classifier.wrap(net, labels=[f"c{i}" for i in range(CLASSES)], input_size=32)


def bank(W: torch.Tensor, layer: str = "relu") -> Concepts:
    """A Concepts with a given W (only W, layer and call matter to importance, maps and deletion)."""
    k = W.shape[0]
    return Concepts(W=W, U=torch.zeros(1, k), boxes=torch.zeros(1, 4, dtype=torch.long),
                    logits=torch.zeros(1, CLASSES), crops=None, layer=layer, call=0, seed=0, images=0,
                    reconstruction_error=0.0)


def photos(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
