"""Tiny models with known answers, for exact tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def noise_photos(folder: Path, count: int) -> Path:
    """`count` seeded 40x48 noise PNGs (p0.png, p1.png, ...) in `folder`: a dataset for tiny-model task tests."""
    gen = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(gen.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


class TinyConvNet(nn.Module):
    """conv1 → ReLU(inplace) → conv2 → ReLU(inplace, the *same* module again) → pool → fc.

    The in-place ReLU and the reused activation module are the two cases that break module backward hooks.
    """

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.calls = {"conv1": 0, "conv2": 0, "fc": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["conv1"] += 1
        x = self.act(self.conv1(x))
        self.calls["conv2"] += 1
        x = self.act(self.conv2(x))
        self.calls["fc"] += 1
        return self.fc(self.pool(x).flatten(1))


class TinyViT(nn.Module):
    """Patch embedding + CLS token + one transformer layer: token outputs [B, 1 + HW, C]."""

    def __init__(self, classes: int = 5, patch: int = 8, dim: int = 16, size: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.block = nn.TransformerEncoderLayer(dim, 2, dim * 2, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.norm(self.block(t))
        return self.head(t[:, 0])


class LinearNet(nn.Module):
    """logits = W · flatten(x): saliency and gradients are known exactly."""

    def __init__(self, classes: int = 3, size: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * size * size, classes, bias=True)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class PickledNet(nn.Module):
    """A module saved whole with torch.save (needs full unpickling to load)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class TinyBNNet(nn.Module):
    """conv1 → BatchNorm → ReLU(inplace) → conv2 → BatchNorm → ReLU(inplace, reused) → pool → fc.

    In train mode every forward pass updates the BatchNorm running statistics: a function that runs the model
    outside eval mode leaves a visible trace (tests/test_public_hygiene.py).
    """

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("bn"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for bn in (self.bn1, self.bn2):  # non-trivial statistics, so eval and train mode differ
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class FileWriter(nn.Module):
    """A scripted submodule whose compiled __setstate__ maps a file (creating it) and writes into it on load."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.written = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        mapped = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(66)
        self.written = int(mapped.sum())  # used, so the write is not optimized away


class ScriptedNet(nn.Module):
    """`torch.jit.script(ScriptedNet(target))`: TorchScript that creates `target` when its archive loads."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.payload = FileWriter(target)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.payload(x).mean((2, 3)))


# --- a linear classifier whose minimal adversarial distances are known in closed form -------------------------
DUAL = {"l2": 2.0, "linf": 1.0, "l1": float("inf")}


def linear_case(classes: int = 5, images: int = 4, seed: int = 3):
    """(net, clf, x): a float64 linear model with small weights (boundaries a fraction of the image away)."""
    import featvis as fv

    net = LinearNet(classes=classes, size=16, seed=seed).double()
    with torch.no_grad():
        net.fc.weight.mul_(0.05)
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=[str(i) for i in range(classes)],
                             input_size=16).double()
    x = fv.quantize(torch.rand(images, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return net, clf, x


def min_distance(net, x: torch.Tensor, norm: str, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The smallest change in `norm` that reaches another class's boundary, [B]; for L2/L∞/L1 without the [0, 1]
    box (a lower bound that any image in the box must respect), for L0 with it (exact: the greedy choice of the
    coordinates that move the logit gap most is optimal for one boundary)."""
    w = net.fc.weight.detach()
    with torch.no_grad():
        f = net(x)
    orig = f.argmax(1)
    flat = x.flatten(1)
    out = []
    for i in range(x.shape[0]):
        others = [int(targets[i])] if targets is not None else [k for k in range(w.shape[0]) if k != orig[i]]
        best = float("inf")
        for k in others:
            gap = float(f[i, orig[i]] - f[i, k])  # what the change must overcome
            dw = w[k] - w[orig[i]]  # d(f_k − f_orig)/dx
            if norm == "l0":
                gain = torch.maximum(dw * (1 - flat[i]), -dw * flat[i])  # each value moved to the better bound
                reach = gain.sort(descending=True).values.cumsum(0)
                best = min(best, float(int((reach < gap).sum()) + 1))
            else:
                best = min(best, gap / float(dw.norm(p=DUAL[norm])))
        out.append(best)
    return torch.tensor(out, dtype=x.dtype)


def measured(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return {"l2": lambda: flat.norm(dim=1), "linf": lambda: flat.abs().amax(1), "l1": lambda: flat.abs().sum(1),
            "l0": lambda: (flat != 0).sum(1).to(delta.dtype)}[norm]()
