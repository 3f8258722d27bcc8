"""Expected Gradients (Erion, Janizek, Sturmfels, Lundberg, Lee 2021, "Improving performance of deep learning models
with axiomatic attribution priors and expected gradients", Nature Machine Intelligence; arXiv 1906.10670).

Integrated Gradients with the baseline drawn from the data: EG(x) = E_{x′∼D, α∼U(0,1)} [(x − x′) ⊙ ∇F(x′ + α(x − x′))],
estimated with one random reference and one random α per sample (the paper's single-sample estimator; Captum's
`GradientShap` with `stdevs=0` is the same estimator). LATEC (NeurIPS 2024) found it the best method overall.
"""

from __future__ import annotations

import torch

from featvis._ops import Seed, random_draw
from featvis._progress import update
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, input_gradients, prepare_inputs, reduce_channels
from featvis.errors import FeatvisError

SAMPLES = 32  # (reference, α) draws per image; the paper's attribution-prior training uses 1, evaluation more


def expected_gradients_from(clf, images: torch.Tensor, targets: torch.Tensor, pool: torch.Tensor,
                            which: torch.Tensor, alphas: torch.Tensor, *, score: str = "logit",
                            batch_size: int | None = None) -> torch.Tensor:
    """The estimator for given draws: mean over samples of (x − x′) ⊙ ∇F(x′ + α(x − x′)), [B, 3, H, W].

    pool: reference images [R, 3, H, W]; which: [S, B], the reference of sample s for image b; alphas: [S, B].
    """
    samples, b = alphas.shape
    chunk = batch_size or default_chunk(clf, images)
    per_call = max(1, chunk // b)
    total = torch.zeros_like(images)
    for start in range(0, samples, per_call):
        ref = pool[which[start:start + per_call]]  # [n, B, 3, H, W]
        a = alphas[start:start + per_call].to(images).view(-1, b, 1, 1, 1)
        diff = images[None] - ref
        path = (ref + a * diff).flatten(0, 1)  # [n·B, 3, H, W]
        grads = input_gradients(clf, path, targets.repeat(a.shape[0]), score=score, batch_size=chunk)
        total += (diff * grads.view(a.shape[0], *images.shape)).sum(0)
        update("expected-gradients", start + a.shape[0], samples)
    return total / samples


@ATTRIBUTIONS.register("expected-gradients", aliases=("eg", "expected"))
def expected_gradients(clf, images: torch.Tensor, target=None, *, references: torch.Tensor | None = None,
                       samples: Count = SAMPLES, seed: Seed = 0, score: str = "logit", reduce: str = "sum",
                       batch_size: int | None = None) -> torch.Tensor:
    """Expected Gradients: Integrated Gradients averaged over baselines drawn from the data and random α.

    Erion et al. 2021 (arXiv 1906.10670); LATEC's best method overall (Klein et al., NeurIPS 2024).

    Args:
        references: reference images [R, 3, H, W] in [0, 1] to draw baselines from (e.g. a sample of the data set);
            default: the other images of the batch (which then needs at least 2 images).
        samples: (reference, α) draws per image; all go through the model in chunks of `batch_size`.
        seed: seeds the draws: one int, or one per image (an image's draws then depend only on its seed).
        reduce: channel reduction; "sum" (default) keeps Σ map ≈ F(x) − E[F(x′)]; "none" for [B, 3, H, W].

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none").

    Example:
        >>> eg = expected_gradients(clf, x, "tabby", references=dataset_sample, samples=64)
    """
    images, targets = prepare_inputs(clf, images, target)
    b = images.shape[0]
    if samples < 1:
        raise FeatvisError(f"expected-gradients needs samples >= 1, got {samples}")
    if references is None:
        if b < 2:
            raise FeatvisError("expected-gradients needs reference images: pass references=[R, 3, H, W] "
                               "(e.g. drawn from the data set) or a batch of at least 2 images")
        pool, others = images, b - 1
    else:
        pool = references.to(images)
        if pool.ndim != 4 or pool.shape[1:] != images.shape[1:] or pool.shape[0] < 1:
            want = ", ".join(map(str, images.shape[1:]))
            raise FeatvisError(f"references have shape {tuple(pool.shape)}; expected [R, {want}] like the images")
        others = pool.shape[0]
    draws = random_draw("uniform", seed, (b, samples, 2), device=images.device,
                        dtype=torch.float64)  # [B, S, (which reference, α)]
    idx = (draws[..., 0] * others).long().clamp(max=others - 1)  # [B, S]
    if references is None:  # skip the image itself: 0..b-2 → the other images
        idx = idx + (idx >= torch.arange(b, device=images.device)[:, None]).long()
    alphas = draws[..., 1].t().contiguous()  # [S, B]
    attr = expected_gradients_from(clf, images, targets, pool, idx.t(), alphas, score=score, batch_size=batch_size)
    return reduce_channels(attr, reduce)
