"""Feature visualization of concepts: an image that climbs a concept's direction at the split's layer.

A concept of a bank is a direction W[j] in the channel space of one call of a layer (`Split`); its visualization
maximizes the activation along it, averaged over positions (Lucid's `direction`), through `featvis.optvis`. The
objective reads the split's own call (a module that runs twice, like Lite0's shared ReLU6, is read where the bank
was fitted, not at its first call).
"""

from __future__ import annotations

import torch

from featvis.concepts.craft import Concepts
from featvis.concepts.split import Split
from featvis.errors import FeatvisError


def concept_objective(split: Split, concepts: Concepts | torch.Tensor):
    """The optvis objective of a bank: image i of a batch of k climbs concept i (pass `W[j:j+1]` for one).

    Example:
        >>> res = fv.optvis.visualize(clf, concept_objective(split, bank), batch=bank.k, steps=256)
    """
    from featvis.optvis.objectives import Context, Objective, along

    W = concepts.W if isinstance(concepts, Concepts) else torch.as_tensor(concepts)
    if W.ndim != 2:
        raise FeatvisError(f"a concept bank is [k, C]; got a tensor of shape {list(W.shape)}")
    rows = W.float() / W.float().norm(dim=1, keepdim=True).clamp_min(1e-12)

    def fn(c: Context) -> torch.Tensor:
        if c.seen is None:
            raise FeatvisError("concept objectives need the images the model saw (featvis.optvis.render passes them)")
        a = split.latent(c.seen)
        if a.ndim != 4:
            raise FeatvisError(f"layer {split.label!r} gives {list(a.shape[1:])} per image; concepts live in "
                               "[C, H, W] maps: fit the bank at a convolutional layer")
        return along(a, rows, c.views, f"layer {split.label!r}")

    return Objective(fn, (), f"concepts({split.label})")
