"""Concept attribution maps: where in an image each concept of a bank is present.

CRAFT (Fel et al., CVPR 2023) locates a concept by its coefficient at every location of the layer's feature map:
the activations there, with the bank W fixed, decomposed into non-negative concept coefficients (`transform`),
then upsampled (bilinear) to the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featvis.concepts.craft import Concepts, transform
from featvis.concepts.split import Split
from featvis.images import check_images
from featvis.models.freeze import frozen


def concept_maps(split: Split, concepts: Concepts, images: torch.Tensor, *, size: tuple[int, int] | None = None
                 ) -> torch.Tensor:
    """Each concept's coefficient at every location of each image, upsampled to the image.

    Args:
        size: (H, W) of the maps (default: the images').

    Returns:
        [B, k, H, W], non-negative, in the units of the concept coefficients (comparable across images).

    Example:
        >>> maps = concept_maps(split, bank, images)
        >>> maps[0, 3]  # where concept 3 is in the first image
    """
    images = check_images(images).to(concepts.W.device)
    with torch.no_grad(), frozen(split.clf):
        u = transform(concepts, split.latent(images))  # [B, k, h, w]
    out = size or tuple(images.shape[-2:])
    return F.interpolate(u, size=out, mode="bilinear", align_corners=False).clamp_min(0)
