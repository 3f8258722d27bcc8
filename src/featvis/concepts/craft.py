"""CRAFT's concept bank: a non-negative factorization of the activations of random crops of a class's images.

Fel et al., "CRAFT: Concept Recursive Activation FacTorization for Explainability", CVPR 2023: random crops of the
images, resized to the model's input, go through g (the model up to a non-negative layer); their activations,
averaged over space, form A [N, C] ≈ U W with U [N, k] ≥ 0 (each crop's concept coefficients) and W [k, C] ≥ 0 (the
concept bank), by scikit-learn's NMF with the reference package's settings (`craft-xai`'s `NMF(n_components=k)`).
`transform` gives the coefficients of new activations with W fixed, per spatial location for feature maps, as a
batched non-negative least squares in torch (the same problem scikit-learn's `NMF.transform` solves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featvis._types import Result
from featvis.concepts.split import Split, nearest_nonnegative
from featvis.errors import FeatvisError
from featvis.images import check_images

MIN_IMAGES = 2  # crops of a single image are a single image's concepts: factorize at least two
CROPS_PER_IMAGE = 8
CROP_FRACTION = 0.4  # crop side / image side; the reference's patches are 64 px of 224 (0.29), the paper's ~0.3-0.5
NMF_INIT = "nndsvda"  # scikit-learn's default for n_components <= min(N, C) (since 1.1): the reference's too
NMF_MAX_ITER = 200  # scikit-learn's default: what `craft-xai` runs
NMF_TOL = 1e-4  # scikit-learn's default
NNLS_MAX_ITER = 500  # coordinate-descent sweeps of `transform` at most
NNLS_TOL = 1e-6  # stop when no coefficient moved by more than this share of the largest
BATCH = 64  # crops through g at once


@dataclass(frozen=True, repr=False)
class Concepts(Result):
    """A concept bank fitted on crops: `W` [k, C] (one non-negative direction per concept in the layer's channel
    space), `U` [N, k] (each crop's coefficients), `boxes` [N, 4] (image index, top, left, side of each crop in its
    image), `logits` [N, K] (the model's logits on each resized crop), and the crops themselves [N, 3, s, s] at
    their own size where they were kept (None for a streamed fit). `reconstruction_error` is ‖A − UW‖ / ‖A‖."""

    W: torch.Tensor
    U: torch.Tensor
    boxes: torch.Tensor
    logits: torch.Tensor
    crops: torch.Tensor | None
    layer: str
    call: int
    seed: int
    images: int
    reconstruction_error: float

    @property
    def k(self) -> int:
        return int(self.W.shape[0])


def random_crops(images: torch.Tensor, size: int, count: int, generator: torch.Generator, *,
                 out: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` random square crops of side `size` from each image, and each resized to `out` (bilinear).

    Args:
        size: crop side in pixels (at most the image's shorter side).
        count: crops per image.
        generator: where the crop positions come from (seeded by the caller).
        out: side the crops are resized to (default: the image's shorter side).

    Returns:
        (resized crops [B·count, 3, out, out], the crops at their own size [B·count, 3, size, size], boxes
        [B·count, 4]: image index, top, left, side), image-major.

    Example:
        >>> resized, crops, boxes = random_crops(images, 96, 8, torch.Generator().manual_seed(0), out=224)
    """
    b, _, h, w = images.shape
    if not 1 <= size <= min(h, w):
        raise FeatvisError(f"crop size {size} does not fit images of {h}×{w}; use 1..{min(h, w)} pixels")
    n = b * count
    # one draw of [N, 2] uniforms: the same generator gives the same crops for images passed in any chunking
    where = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    tops = (where[:, 0] * (h - size + 1)).long().clamp_max(h - size)
    lefts = (where[:, 1] * (w - size + 1)).long().clamp_max(w - size)
    owner = torch.arange(b).repeat_interleave(count)
    steps = torch.arange(size)
    rows = (tops[:, None] + steps).to(images.device)  # [N, s]
    cols = (lefts[:, None] + steps).to(images.device)
    idx = owner.to(images.device)
    crops = images[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [N, 3, s, s]
    side = out or min(h, w)
    resized = crops if side == size else F.interpolate(crops, size=(side, side), mode="bilinear",
                                                       align_corners=False, antialias=side < size)
    boxes = torch.stack([owner, tops, lefts, torch.full_like(tops, size)], 1)
    return resized, crops.contiguous(), boxes


def fit_concepts(split: Split, images: torch.Tensor, k: int = 10, *, crops: int = CROPS_PER_IMAGE,
                 crop_fraction: float = CROP_FRACTION, seed: int = 0, batch_size: int = BATCH,
                 max_iter: int = NMF_MAX_ITER) -> Concepts:
    """CRAFT's concept bank for one class: NMF of the spatially averaged activations of random crops.

    Args:
        split: the model cut at a non-negative layer (`split_at`).
        images: the class's images [B, 3, H, W] in [0, 1] (the CRAFT authors advise ~500).
        k: concepts to find.
        crops: random crops per image.
        crop_fraction: crop side as a fraction of the image's shorter side.
        seed: seeds the crop positions and the NMF.
        batch_size: crops through the model at once.
        max_iter: NMF iterations at most.

    Returns:
        The Concepts, crops kept.

    Example:
        >>> bank = fit_concepts(split_at(clf), cat_images, k=10)
        >>> bank.W.shape  # [10, C]
    """
    images = check_images(images)
    chunks = images.split(max(1, batch_size // max(crops, 1)))
    return fit_concepts_streamed(split, chunks, k, crops=crops, crop_fraction=crop_fraction, seed=seed,
                                 batch_size=batch_size, max_iter=max_iter, keep_crops=True)


def fit_concepts_streamed(split: Split, chunks: Iterable[torch.Tensor], k: int = 10, *,
                          crops: int = CROPS_PER_IMAGE, crop_fraction: float = CROP_FRACTION, seed: int = 0,
                          batch_size: int = BATCH, max_iter: int = NMF_MAX_ITER, keep_crops: bool = False,
                          on_chunk: Callable[[float], None] | None = None) -> Concepts:
    """`fit_concepts` on images that arrive in chunks (decoded a few at a time): memory holds one chunk and one
    row of pooled activations per crop. The same images in any chunking give the same concepts.

    Args:
        chunks: batches of images [b, 3, H, W] in [0, 1], all of one size.
        keep_crops: keep every crop (at its own size) in the result.
        on_chunk: called with the number of images done after each chunk (progress).
    """
    if k < 1:
        raise FeatvisError(f"k must be at least 1 concept, got {k}")
    gen = torch.Generator().manual_seed(seed)
    pooled, logits, boxes, kept = [], [], [], []
    done = 0
    for chunk in chunks:
        chunk = check_images(chunk).to(_device(split))
        side = min(chunk.shape[-2:])
        size = max(1, round(crop_fraction * side))
        resized, own, box = random_crops(chunk, size, crops, gen, out=_input_side(split, side))
        for j in range(0, len(resized), batch_size):
            acts, out = split.latent_and_logits(resized[j:j + batch_size])
            check_nonnegative(split, acts)
            pooled.append(acts.float().mean((2, 3)).cpu())  # CRAFT: the crop's activation averaged over space
            logits.append(out.float().cpu())
        box[:, 0] += done
        boxes.append(box)
        if keep_crops:
            kept.append(own.cpu())
        done += chunk.shape[0]
        if on_chunk is not None:
            on_chunk(done)
    if done < MIN_IMAGES:
        raise FeatvisError(f"CRAFT got {done} image(s); it needs at least {MIN_IMAGES} (its authors advise ~500 "
                           "per class): pass more images")
    A = torch.cat(pooled)  # [N, C]
    if A.shape[0] < k:
        raise FeatvisError(f"{A.shape[0]} crops for k={k} concepts; need at least k crops: raise crops per image "
                           "or lower k")
    U, W, err = factorize(A, k, seed=seed, max_iter=max_iter)
    return Concepts(W=W.to(_device(split)), U=U, boxes=torch.cat(boxes), logits=torch.cat(logits),
                    crops=torch.cat(kept) if keep_crops else None, layer=split.layer, call=split.call, seed=seed,
                    images=done, reconstruction_error=err)


def transform(concepts: Concepts | torch.Tensor, acts: torch.Tensor, *, max_iter: int = NNLS_MAX_ITER,
              tol: float = NNLS_TOL) -> torch.Tensor:
    """The concept coefficients of activations with the bank W fixed: argmin_{u ≥ 0} ‖a − u W‖², per row of acts
    [N, C] or per location of feature maps [B, C, h, w], by batched coordinate descent (float64).

    Args:
        concepts: a Concepts, or a bank W [k, C] itself.
        acts: activations of the bank's layer.
        max_iter: coordinate-descent sweeps at most.
        tol: stop when no coefficient moved by more than this share of the largest.

    Returns:
        U [N, k], or [B, k, h, w] for feature maps.

    Example:
        >>> u = transform(bank, split.latent(images))  # [B, k, h, w]
    """
    W = concepts.W if isinstance(concepts, Concepts) else concepts
    spatial = acts.dim() == 4
    if acts.shape[1 if spatial else -1] != W.shape[1]:
        raise FeatvisError(f"activations have {acts.shape[1 if spatial else -1]} channels; the concept bank has "
                           f"{W.shape[1]}: use activations of the layer the concepts were fitted on")
    rows = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]) if spatial else acts  # [B·h·w, C]
    Wd = W.to(device=acts.device, dtype=torch.float64)
    gram = Wd @ Wd.T  # [k, k]
    rhs = rows.to(torch.float64) @ Wd.T  # [M, k]
    diag = gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
    u = (rhs / diag).clamp_min(0)
    for _ in range(max_iter):
        moved = torch.zeros((), dtype=torch.float64, device=acts.device)
        for j in range(W.shape[0]):  # exact minimization along coordinate j, for every row at once
            new = (u[:, j] - (u @ gram[:, j] - rhs[:, j]) / diag[j]).clamp_min(0)
            moved = torch.maximum(moved, (new - u[:, j]).abs().max())
            u[:, j] = new
        if float(moved) <= tol * max(float(u.max()) if u.numel() else 0.0, 1e-12):
            break
    u = u.to(acts.dtype if acts.is_floating_point() else torch.float32)
    if spatial:
        b, _, h, w = acts.shape
        return u.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # [B, k, h, w]
    return u


def factorize(A: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = NMF_MAX_ITER
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A ≈ U W: scikit-learn's NMF of non-negative A [N, C] in float32, with the reference's settings and a seed
    (its nndsvda init runs a randomized SVD: unseeded, two runs differ by ~1 % in W).

    Returns:
        (U [N, k], W [k, C], ‖A − UW‖ / ‖A‖).
    """
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    data = A.detach().cpu().float().numpy()
    model = NMF(n_components=k, init=NMF_INIT, max_iter=max_iter, tol=NMF_TOL, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 200 iterations is the reference's budget too
        U = model.fit_transform(data)
    W = torch.from_numpy(model.components_.astype("float32"))
    U_t = torch.from_numpy(U.astype("float32"))
    norm = float(torch.linalg.vector_norm(A.float())) or 1.0
    return U_t, W, float(model.reconstruction_err_) / norm


def check_nonnegative(split: Split, acts: torch.Tensor) -> None:
    low = float(acts.min())
    if low >= 0:
        return
    near = nearest_nonnegative(split.clf, split.layer, split.call)
    where = f"e.g. {near}" if near else "after a ReLU"
    raise FeatvisError(f"layer {split.label!r} has negative activations (minimum {low:.4g}); CRAFT factorizes "
                       f"non-negative activations (after a ReLU/ReLU6): split at a non-negative layer, {where}")


def _device(split: Split) -> torch.device:
    first = next(split.clf.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _input_side(split: Split, side: int) -> int:
    return int(getattr(split.clf, "input_size", side))
