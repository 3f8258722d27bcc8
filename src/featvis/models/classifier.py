"""Classifier: a network that takes RGB in [0, 1] and owns its normalization, input size, labels and id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.models.fast import FastOptions, fast_logits, user_logits
from featvis.models.freeze import frozen  # also importable from here, where it lived before (issue 23)
from featvis.models.labels import Labels, imagenet_labels
from featvis.models.source import ModelSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    index: int
    name: str
    prob: float


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input: resize the short side to size / crop_fraction, center-crop."""

    size: int = 224
    crop_fraction: float = 1.0
    interpolation: str = "bicubic"


class Classifier(nn.Module):
    """An image classifier on RGB images in [0, 1], shape [B, 3, H, W], returning logits [B, K].

    Every featvis algorithm takes one. It normalizes inside `forward`, so clamping, L∞ budgets and saved PNGs
    all live in the same [0, 1] pixel space.

    Example:
        >>> clf = Classifier.wrap(my_net, labels=["cat", "dog"], input_size=64)
        >>> clf.predict(torch.rand(1, 3, 64, 64), k=1)
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        labels: Labels | Sequence[str] | None = None,
        preprocess: Preprocess = Preprocess(),
        name: str = "custom",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise FeatvisError(f"mean/std must be 3 numbers each with std > 0, got mean={mean}, std={std}")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if labels is None:
            labels = imagenet_labels() if num_classes in (None, 1000) else Labels.generic(num_classes)
        elif not isinstance(labels, Labels):
            labels = Labels([(str(n),) if isinstance(n, str) else tuple(map(str, n)) for n in labels])
        self.labels: Labels = labels
        self.preprocess = preprocess
        self.name = name
        # How `load_model` made it (None for `wrap`): what a worker process needs to rebuild it (models.rebuild).
        self.source: ModelSource | None = None
        self._weights_hash: str | None = None
        # Run a fast inference copy of `net` (BatchNorm folded, channels-last) when nothing can tell the difference;
        # False: always the user's network. A `FastOptions` opts into more (models/fast/, issue 17).
        self.fast: bool | FastOptions = True
        self.eval()

    @classmethod
    def wrap(
        cls,
        net: nn.Module,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        labels: Labels | Sequence[str] | None = None,
        input_size: int = 224,
        crop_fraction: float = 1.0,
        name: str = "custom",
    ) -> Classifier:
        """Turn any network that maps normalized [B, 3, H, W] images to logits into a Classifier.

        The result has no `source` (None): it cannot be rebuilt in another process. To run it on workers, save
        it (TorchScript, or its weights for a named architecture) and load it by path with `load_model`.
        """
        if isinstance(net, Classifier):
            return net
        if not isinstance(net, nn.Module):
            raise FeatvisError(f"Classifier.wrap needs a torch.nn.Module, got {type(net).__name__}")
        return cls(net, mean=mean, std=std, labels=labels, name=name,
                   preprocess=Preprocess(input_size, crop_fraction))

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    @property
    def device(self) -> torch.device:
        first = next(self.net.parameters(), None)
        return first.device if first is not None else self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype the network computes in (its first float parameter's; float32 if it has none)."""
        return next((p.dtype for p in self.net.parameters() if p.is_floating_point()), torch.float32)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        normalized = self.normalize(images)
        logits = fast_logits(self, normalized)  # None: hooks, train mode, weight gradients or tiny nets: run net
        return user_logits(self, normalized) if logits is None else logits

    @property
    def weights_hash(self) -> str:
        """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes); computed once, then cached."""
        if self._weights_hash is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.net.state_dict().items()):
                t = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    @property
    def id(self) -> str:
        """A stable id: the model's name and the first 12 hex digits of its weights hash."""
        return f"{self.name}@{self.weights_hash[:12]}"

    @torch.no_grad()
    def predict(self, images: torch.Tensor, k: int = 5, batch_size: int = 32) -> list[list[Prediction]]:
        """The top-k classes of each image, with names and softmax probabilities."""
        from featvis.images import check_images

        images = check_images(images, dtype=self.dtype)
        k = max(1, min(int(k), len(self.labels)))
        out = []
        with frozen(self):
            for chunk in images.split(batch_size):
                logits = self(chunk.to(self.device))
                if not bool(torch.isfinite(logits).all()):  # softmax would print prob=nan (issue 22)
                    raise _nonfinite_logits(self, logits)
                if logits.dim() != 2 or logits.shape[-1] != len(self.labels):
                    raise FeatvisError(
                        f"model {self.name!r} returns {tuple(logits.shape[1:])} scores per image but has "
                        f"{len(self.labels)} class names; give its labels (Classifier.wrap(net, labels=[...]), CLI "
                        "--labels) or check that its last layer outputs one score per class")
                probs = logits.softmax(-1)
                top = probs.topk(k, dim=-1)
                for p_row, i_row in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    out.append([Prediction(i, self.labels[i], p) for i, p in zip(i_row, p_row, strict=True)])
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, classes={len(self.labels)}"


def _nonfinite_logits(clf: Classifier, logits: torch.Tensor) -> FeatvisError:
    """Why a prediction came out NaN: the weights holding NaN/inf by name, or else an overflow in the network."""
    from featvis.models.checkpoint import nonfinite_tensors

    rows = int((~torch.isfinite(logits)).any(-1).sum())
    bad = [*nonfinite_tensors(clf.net.named_parameters()), *nonfinite_tensors(clf.net.named_buffers(), nan_only=True)]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        cause = f"its weights hold NaN or inf ({', '.join(bad[:3])}{more}): load or train finite weights"
    else:  # the images were checked finite by check_images
        cause = ("its weights and the images are finite, so a value overflowed inside the network (float16? huge "
                 "weights?): check its activations with torch.isfinite")
    return FeatvisError(f"model {clf.name!r} produced non-finite logits (NaN or inf) for {rows} of {len(logits)} "
                        f"images; {cause}")
