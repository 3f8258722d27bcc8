"""Concept importance by total Sobol indices: how much of the class score's variance each concept drives.

CRAFT (Fel et al., CVPR 2023, Sec. 3.2): an image's concept coefficients u [k, h, w] are perturbed by random masks
m ∈ [0, 1]^k (one value per concept, at every location), the perturbed activations (m ⊙ u) W go through h, and
the total index of concept i is the share of the class score's variance that m_i explains, alone or with the
others. The masks are a quasi-Monte-Carlo design (Saltelli's A, B and the k matrices C_i = A with column i from B),
the estimator Jansen's (1999): S_Ti = Σ_n (f(A)_n − f(C_i)_n)² / (2 N Var f(A)). The reference (`craft-xai`)
draws its design from an unscrambled Halton sequence; the paper's is Sobol's, here scrambled and seeded
(`torch.quasirandom.SobolEngine`).
"""

from __future__ import annotations

import torch

from featvis.concepts.craft import Concepts, transform
from featvis.concepts.split import Split
from featvis.errors import FeatvisError
from featvis.images import check_images
from featvis.models.freeze import frozen

DESIGNS = 32  # points of each of A and B: the reference's nb_design
HEAD_BATCH = 256  # perturbed activations through h at once


def sobol_design(k: int, designs: int = DESIGNS, *, seed: int = 0, scramble: bool = True) -> torch.Tensor:
    """The masks of the replicated design: A, then B, then C_0 … C_{k-1} (C_i is A with column i from B).

    Args:
        k: dimensions (concepts).
        designs: points in each of A and B.
        seed: seeds the scrambling.
        scramble: Owen-scramble the Sobol sequence (False: its plain points, without the all-zero first one).

    Returns:
        Masks [designs · (k + 2), k] in [0, 1).
    """
    if k < 1 or designs < 2:
        raise FeatvisError(f"a Sobol design needs k >= 1 dimensions and >= 2 points, got k={k}, designs={designs}")
    engine = torch.quasirandom.SobolEngine(2 * k, scramble=scramble, seed=seed)
    if not scramble:
        engine.fast_forward(1)  # the unscrambled sequence starts at the origin, a point every mask would share
    ab = engine.draw(designs, dtype=torch.float32)  # [designs, 2k]
    a, b = ab[:, :k], ab[:, k:]
    c = a.repeat(k, 1, 1)  # [k, designs, k]
    idx = torch.arange(k)
    c[idx, :, idx] = b.T  # C_i[:, i] = B[:, i]
    return torch.cat([a, b, c.reshape(k * designs, k)])


def jansen_total(outputs: torch.Tensor, designs: int, k: int) -> torch.Tensor:
    """Jansen's estimator of the total Sobol indices from outputs [..., designs · (k + 2)] on `sobol_design`'s
    masks (in its order). Returns [..., k]; 0 where the output does not vary."""
    if outputs.shape[-1] != designs * (k + 2):
        raise FeatvisError(f"got {outputs.shape[-1]} outputs; a design of {designs} points for {k} concepts has "
                           f"{designs * (k + 2)}")
    out = outputs.double()
    fa = out[..., :designs]
    fc = out[..., 2 * designs:].reshape(*out.shape[:-1], k, designs)
    var = fa.var(-1, correction=1)  # unbiased, as the reference
    num = ((fa.unsqueeze(-2) - fc) ** 2).sum(-1)
    return torch.where(var[..., None] > 0, num / (2 * designs * var[..., None].clamp_min(1e-300)), 0.0)


def concept_importance_per_image(split: Split, concepts: Concepts, images: torch.Tensor, class_id: int, *,
                                 designs: int = DESIGNS, seed: int = 0, masks: torch.Tensor | None = None,
                                 batch_size: int = HEAD_BATCH) -> torch.Tensor:
    """Each image's total Sobol index of each concept for the class score (logit `class_id`).

    Args:
        designs: points in each of the design's A and B (masks = designs · (k + 2) per image).
        seed: seeds the scrambled Sobol sequence.
        masks: a design of your own [designs · (k + 2), k] in `sobol_design`'s order (overrides seed).
        batch_size: perturbed activations through h at once.

    Returns:
        [B, k].
    """
    images = check_images(images)
    k = concepts.k
    masks = sobol_design(k, designs, seed=seed) if masks is None else masks
    if masks.dim() != 2 or masks.shape[1] != k or masks.shape[0] % (k + 2):
        raise FeatvisError(f"masks have shape {tuple(masks.shape)}; expected [designs * (k + 2), k] with k={k}")
    designs = masks.shape[0] // (k + 2)
    scores = perturbed_scores(split, concepts, images, class_id, masks, batch_size=batch_size)  # [B, M]
    return jansen_total(scores, designs, k).float()


def concept_importance(split: Split, concepts: Concepts, images: torch.Tensor, class_id: int, *,
                       designs: int = DESIGNS, seed: int = 0, masks: torch.Tensor | None = None,
                       batch_size: int = HEAD_BATCH) -> torch.Tensor:
    """CRAFT's importance of each concept for a class: total Sobol indices averaged over the images.

    Args: as `concept_importance_per_image`.

    Returns:
        [k].

    Example:
        >>> importance = concept_importance(split, bank, cat_images, 281)
        >>> importance.argsort(descending=True)  # the concepts, most important first
    """
    return concept_importance_per_image(split, concepts, images, class_id, designs=designs, seed=seed,
                                        masks=masks, batch_size=batch_size).mean(0)


def perturbed_scores(split: Split, concepts: Concepts, images: torch.Tensor, class_id: int, masks: torch.Tensor,
                     *, batch_size: int = HEAD_BATCH) -> torch.Tensor:
    """The class logit of h((m ⊙ u) W) for every image and mask: [B, M]. All (image, mask) pairs go through h in
    batches of `batch_size`; nothing loops over masks."""
    with torch.no_grad(), frozen(split.clf):
        acts = split.latent(images.to(concepts.W.device))
        u = transform(concepts, acts)  # [B, k, h, w]
        return masked_scores(split, u, concepts.W, masks, class_id, batch_size=batch_size)


def masked_scores(split: Split, u: torch.Tensor, W: torch.Tensor, masks: torch.Tensor, class_id: int, *,
                  batch_size: int = HEAD_BATCH) -> torch.Tensor:
    """logit `class_id` of h(Σ_j m_j u_j W_j) for coefficients u [B, k, h, w] and masks [M, k] (per image and
    mask, the same mask at every location): [B, M]."""
    b, m = u.shape[0], masks.shape[0]
    masks = masks.to(device=u.device, dtype=u.dtype)
    W = W.to(device=u.device, dtype=u.dtype)
    pairs = torch.arange(b * m, device=u.device)
    out = []
    with torch.no_grad():
        for chunk in pairs.split(batch_size):
            um = u[chunk // m] * masks[chunk % m][:, :, None, None]  # [R, k, h, w]
            acts = torch.einsum("rkhw,kc->rchw", um, W)
            out.append(split.head(acts)[:, class_id].float())
    return torch.cat(out).view(b, m)
