"""Total Sobol indices: the design, Jansen's estimator on analytic functions, and CRAFT's importance on a model
whose class logit is additive in the concepts."""

from __future__ import annotations

import pytest
import torch

from featvis.concepts import (
    concept_importance,
    concept_importance_per_image,
    jansen_total,
    sobol_design,
    split_at,
    transform,
)
from featvis.errors import FeatvisError

from _craft_models import PoolNet, bank, photos, wrap


def test_design_is_a_then_b_then_each_c_i_with_column_i_from_b():
    masks = sobol_design(3, 8, seed=1)
    a, b, c = masks[:8], masks[8:16], masks[16:].view(3, 8, 3)
    for i in range(3):
        assert torch.equal(c[i][:, i], b[:, i])
        keep = [j for j in range(3) if j != i]
        assert torch.equal(c[i][:, keep], a[:, keep])
    assert torch.equal(masks, sobol_design(3, 8, seed=1)) and not torch.equal(masks, sobol_design(3, 8, seed=2))
    assert float(masks.min()) >= 0 and float(masks.max()) < 1


def test_additive_function_total_indices_are_the_variance_shares():
    k, d = 4, 2048
    weights = torch.tensor([3.0, 2.0, 1.0, 0.0])
    masks = sobol_design(k, d, seed=0)
    sti = jansen_total(masks @ weights, d, k)  # f(m) = Σ a_i m_i, m_i ~ U(0, 1): S_Ti = a_i² / Σ a_j²
    torch.testing.assert_close(sti.float(), weights ** 2 / (weights ** 2).sum(), atol=0.02, rtol=0)
    assert float(sti[3]) == 0.0  # a dimension the function ignores: f(A) = f(C_3) exactly


def test_product_total_index_includes_the_interaction():
    d = 4096
    masks = sobol_design(2, d, seed=0)
    sti = jansen_total(masks[:, 0] * masks[:, 1], d, 2)
    # Var(m0 m1) = 1/9 − 1/16 = 7/144; E[Var(f | m1)] = E[m1²] Var(m0) = 1/36: S_T = 4/7 for each
    torch.testing.assert_close(sti.float(), torch.full((2,), 4 / 7), atol=0.02, rtol=0)


def test_constant_output_has_zero_indices_and_bad_sizes_fail():
    assert torch.equal(jansen_total(torch.ones(2, 8 * 5), 8, 3), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(FeatvisError, match="outputs"):
        jansen_total(torch.ones(7), 2, 2)


def test_importance_on_a_model_additive_in_the_concepts():
    clf = wrap(PoolNet())
    split = split_at(clf, "relu")
    g = torch.Generator().manual_seed(0)
    W = torch.rand(3, 6, generator=g)
    w_cls = clf.net.fc.weight[1].detach()
    pos, neg = int(w_cls.argmax()), int(w_cls.argmin())
    assert w_cls[pos] > 0 > w_cls[neg]
    W[2] = 0  # concept 2: non-negative and orthogonal to the class weights, so it cannot move the logit
    W[2, pos], W[2, neg] = -w_cls[neg], w_cls[pos]
    concepts = bank(W)
    images = photos(3, seed=1)
    with torch.no_grad():
        u = transform(concepts, split.latent(images))  # [B, 3, h, w]
    # logit of (m ⊙ u) W = b + Σ_j m_j c_j with c_j = mean(u_j) (W_j · w): S_Tj = c_j² / Σ c²
    c = u.mean((2, 3)) * (W @ w_cls)  # [B, 3]
    want = c ** 2 / (c ** 2).sum(1, keepdim=True)
    got = concept_importance_per_image(split, concepts, images, 1, designs=1024, seed=0)
    torch.testing.assert_close(got, want, atol=0.01, rtol=0)
    assert float(got[:, 2].abs().max()) < 1e-4 and float(got[:, :2].min()) > 1e-3
    mean = concept_importance(split, concepts, images, 1, designs=1024, seed=0)
    torch.testing.assert_close(mean, got.mean(0))
    assert got.shape == (3, 3)


def test_importance_with_given_masks_matches_the_estimator_on_them():
    clf = wrap(PoolNet())
    split = split_at(clf, "relu")
    concepts = bank(torch.rand(2, 6, generator=torch.Generator().manual_seed(3)))
    masks = sobol_design(2, 16, seed=7)
    assert torch.equal(concept_importance_per_image(split, concepts, photos(2), 0, masks=masks),
                       concept_importance_per_image(split, concepts, photos(2), 0, designs=16, seed=7))
    with pytest.raises(FeatvisError, match="masks have shape"):
        concept_importance_per_image(split, concepts, photos(2), 0, masks=masks[:, :1])
