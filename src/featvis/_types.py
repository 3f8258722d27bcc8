"""Shared type aliases and the base result type."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Images = torch.Tensor
"""RGB images in [0, 1], shape [B, 3, H, W], on the classifier's device."""

Target = int | str | Sequence[int | str] | torch.Tensor | None
"""A class index or name, one per image as a list/tensor, or None for the predicted class."""


class Result:
    """Base of the results featvis returns (maps, fooling, robustness, renders, sanity checks).

    A result draws itself in Jupyter through one door, `featvis.figures.draw`; no algorithm module imports
    figures. Its repr is short: tensors show their shape, not their values.
    """

    def figure(self, **options):
        """The result's matplotlib figure (see `featvis.figures.draw`)."""
        from featvis.figures import draw

        return draw(self, **options)

    def _repr_png_(self) -> bytes:
        from featvis.figures import draw, figure_png

        return figure_png(draw(self))

    def __repr__(self) -> str:
        fields = getattr(self, "__dataclass_fields__", {})
        parts = []
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                text = f"Tensor{list(value.shape)}"
            elif isinstance(value, dict):
                text = "{" + ", ".join(f"{k}: Tensor{list(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}: …"
                                       for k, v in list(value.items())[:6]) + "}"
            elif isinstance(value, (list, tuple)) and len(value) > 6:
                text = f"[{len(value)} items]"
            elif hasattr(value, "__len__") and hasattr(value, "lookup"):  # Labels
                text = f"<{len(value)} labels>"
            else:
                text = repr(value)
            parts.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"
