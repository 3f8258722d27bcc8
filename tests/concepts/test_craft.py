"""CRAFT's factorization: NMF recovers known factors, the torch transform is scikit-learn's, crops are exact and
seeded, and bad input fails in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featvis.concepts import factorize, fit_concepts, fit_concepts_streamed, random_crops, split_at, transform
from featvis.errors import FeatvisError

from _craft_models import PoolNet, photos, wrap
from _models import TinyConvNet


def _known_factors(n: int = 200, k: int = 4, c: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """U [n, k] with pure rows (one concept alone in some crops) and W [k, c] with disjoint supports: separable,
    so the factorization is unique up to order and scale."""
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.5)
    U[:k] = torch.eye(k) * 2
    W = torch.zeros(k, c)
    for j in range(k):
        W[j, j * (c // k):(j + 1) * (c // k)] = torch.rand(c // k, generator=g) + 0.5
    return U, W


def test_nmf_recovers_known_nonnegative_factors():
    U0, W0 = _known_factors()
    U, W, err = factorize(U0 @ W0, 4, seed=0, max_iter=600)
    assert err < 1e-3
    cos = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(W0, dim=1).T  # [k, k]
    best = cos.max(1)
    assert sorted(best.indices.tolist()) == [0, 1, 2, 3]  # each recovered concept is a different true one
    assert float(best.values.min()) > 0.999
    torch.testing.assert_close(U @ W, U0 @ W0, atol=2e-3, rtol=0)


def test_nmf_is_seeded():
    U0, W0 = _known_factors(seed=1)
    A = U0 @ W0 + 0.05 * torch.rand(U0.shape[0], W0.shape[1], generator=torch.Generator().manual_seed(2))
    assert torch.equal(factorize(A, 3, seed=5)[1], factorize(A, 3, seed=5)[1])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_torch_transform_agrees_with_scikit_learn():
    from sklearn.decomposition import NMF

    g = torch.Generator().manual_seed(0)
    A = torch.rand(60, 16, generator=g)
    model = NMF(n_components=5, init="nndsvda", random_state=0, max_iter=1000, tol=1e-10).fit(A.numpy())
    new = torch.rand(40, 16, generator=g)
    want = model.transform(new.numpy())
    got = transform(torch.from_numpy(model.components_.astype(np.float32)), new)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4 * want.max(), rtol=0)


def test_transform_of_maps_is_the_transform_of_each_location():
    g = torch.Generator().manual_seed(1)
    W = torch.rand(3, 8, generator=g)
    acts = torch.rand(2, 8, 4, 5, generator=g)
    maps = transform(W, acts)
    rows = transform(W, acts.permute(0, 2, 3, 1).reshape(-1, 8))
    assert maps.shape == (2, 3, 4, 5)
    torch.testing.assert_close(maps.permute(0, 2, 3, 1).reshape(-1, 3), rows)
    exact = torch.rand(3, 2, 4, 5, generator=g)  # activations that are exact combinations come back exactly
    torch.testing.assert_close(transform(W, torch.einsum("kbhw,kc->bchw", exact, W)), exact.permute(1, 0, 2, 3),
                               atol=1e-4, rtol=1e-4)


def test_random_crops_are_exact_slices_seeded_and_in_bounds():
    images = photos(3)
    resized, crops, boxes = random_crops(images, 10, 4, torch.Generator().manual_seed(0), out=20)
    assert resized.shape == (12, 3, 20, 20) and crops.shape == (12, 3, 10, 10)
    for n, (i, top, left, side) in enumerate(boxes.tolist()):
        assert i == n // 4 and side == 10 and 0 <= top <= 22 and 0 <= left <= 22
        assert torch.equal(crops[n], images[i, :, top:top + 10, left:left + 10])
    again = random_crops(images, 10, 4, torch.Generator().manual_seed(0), out=20)
    assert torch.equal(again[2], boxes) and torch.equal(again[0], resized)


def test_fit_is_the_same_in_any_chunking_and_factorizes_the_crops():
    split = split_at(wrap(PoolNet()), "relu")
    images = photos(5)
    whole = fit_concepts(split, images, 3, crops=4, seed=3)
    streamed = fit_concepts_streamed(split, [images[:2], images[2:3], images[3:]], 3, crops=4, seed=3)
    assert torch.equal(whole.boxes, streamed.boxes) and torch.equal(whole.W, streamed.W)
    assert whole.U.shape == (20, 3) and whole.W.shape == (3, 6) and whole.crops.shape[0] == 20
    assert streamed.crops is None and whole.images == 5 and whole.k == 3
    assert float(whole.W.min()) >= 0 and float(whole.U.min()) >= 0
    resized, _, _ = random_crops(images, 13, 4, torch.Generator().manual_seed(3), out=32)
    with torch.no_grad():
        A = split.latent(resized).mean((2, 3))
        torch.testing.assert_close(whole.logits, split.clf(resized))
    rel = float(torch.linalg.vector_norm(A - whole.U @ whole.W) / torch.linalg.vector_norm(A))
    assert rel == pytest.approx(whole.reconstruction_error, rel=1e-3)


def test_negative_layer_is_a_one_line_error_naming_it_and_a_nonnegative_one():
    split = split_at(wrap(TinyConvNet(classes=3)), "conv2")
    with pytest.raises(FeatvisError) as e:
        fit_concepts(split, photos(3), 2, crops=2)
    msg = str(e.value)
    assert "\n" not in msg and "'conv2'" in msg and "minimum -" in msg and "non-negative" in msg
    assert "'act' (call=1)" in msg  # the reused in-place ReLU right after it


def test_too_few_images_or_crops_are_one_line_errors():
    split = split_at(wrap(PoolNet()), "relu")
    with pytest.raises(FeatvisError, match="at least 2") as e:
        fit_concepts(split, photos(1), 2, crops=4)
    assert "\n" not in str(e.value)
    with pytest.raises(FeatvisError, match="at least k crops") as e:
        fit_concepts(split, photos(2), 5, crops=2)
    assert "\n" not in str(e.value)
