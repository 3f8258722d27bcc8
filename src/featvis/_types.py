"""Shared type aliases and the base result type."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Images = torch.Tensor
"""RGB images in [0, 1], shape [B, 3, H, W], on the classifier's device."""

Target = int | str | Sequence[int | str] | torch.Tensor | None
"""A class index or name, one per image as a list/tensor, or None for the predicted class."""
