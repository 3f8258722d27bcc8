"""Concept deletion/insertion on a model whose class logit is a known linear function of the concept coefficients,
and concept maps."""

from __future__ import annotations

import pytest
import torch

from featvis._stats import auc
from featvis.concepts import concept_deletion, concept_insertion, concept_maps, split_at, transform
from featvis.concepts.faithfulness import order_masks
from featvis.errors import FeatvisError

from _craft_models import PoolNet, bank, photos, wrap


def _setup():
    clf = wrap(PoolNet())
    split = split_at(clf, "relu")
    concepts = bank(torch.rand(4, 6, generator=torch.Generator().manual_seed(5)))
    images = photos(5, seed=2)
    with torch.no_grad():
        u = transform(concepts, split.latent(images))
    fc = clf.net.fc
    contrib = u.mean((2, 3)) * (concepts.W @ fc.weight[1].detach())  # [B, k]: logit = b + Σ_j present_j c_j
    return split, concepts, images, contrib, float(fc.bias[1].detach())


def test_order_masks():
    order = torch.tensor([2, 0, 1])
    dele = order_masks(order, "deletion")
    assert dele.tolist() == [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert torch.equal(order_masks(order, "insertion"), 1 - dele)


def test_deletion_curve_is_the_known_linear_one():
    split, concepts, images, contrib, bias = _setup()
    order = torch.tensor([3, 1, 0, 2])
    res = concept_deletion(split, concepts, images, 1, order=order, orders=6, seed=0)
    removed = torch.cumsum(contrib[:, order], 1)  # [B, k]
    total = contrib.sum(1, keepdim=True)
    want = bias + torch.cat([total, total - removed], 1)  # [B, k+1]
    torch.testing.assert_close(res.curves, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.auc, auc(want.double()).float(), atol=1e-5, rtol=1e-5)
    assert res.curves[:, -1].sub(bias).abs().max() < 1e-5  # nothing left: the bias alone
    assert res.random_curves.shape == (6, 5, 5) and res.order.tolist() == order.tolist()
    assert res.auc_ci[0] <= res.auc_mean <= res.auc_ci[1]
    assert res.random_ci[0] <= res.random_auc_mean <= res.random_ci[1]


def test_deletion_by_the_true_ranking_beats_random_orders_and_insertion_mirrors_it():
    split, concepts, images, contrib, bias = _setup()
    best = torch.argsort(contrib.mean(0), descending=True)  # removing the largest contributions first
    dele = concept_deletion(split, concepts, images, 1, order=best, orders=20, seed=1)
    worst = concept_deletion(split, concepts, images, 1, order=best.flip(0), orders=20, seed=1)
    assert dele.auc_mean < dele.random_auc_mean < worst.auc_mean
    ins = concept_insertion(split, concepts, images, 1, order=best, orders=20, seed=1)
    torch.testing.assert_close(ins.curves[:, 0], torch.full((5,), bias), atol=1e-5, rtol=0)
    torch.testing.assert_close(ins.curves[:, -1], dele.curves[:, 0], atol=1e-5, rtol=0)
    rec = dele.to_record()
    assert set(rec) >= {"curve", "random_mean", "random_low", "random_high", "auc", "auc_ci", "random_auc",
                        "random_ci", "orders", "images"}
    assert len(rec["curve"]) == 5 and rec["orders"] == 20 and rec["images"] == 5
    assert all(lo <= hi for lo, hi in zip(rec["random_low"], rec["random_high"], strict=True))


def test_deletion_order_defaults_to_the_importance_and_bad_orders_fail():
    split, concepts, images, _, _ = _setup()
    res = concept_deletion(split, concepts, images, 1, orders=3, designs=16)
    assert sorted(res.order.tolist()) == [0, 1, 2, 3]
    with pytest.raises(FeatvisError, match="each of the 4 concepts once"):
        concept_deletion(split, concepts, images, 1, order=torch.tensor([0, 0, 1, 2]))


def test_concept_maps_are_the_upsampled_coefficients():
    split, concepts, images, _, _ = _setup()
    maps = concept_maps(split, concepts, images)
    assert maps.shape == (5, 4, 32, 32) and float(maps.min()) >= 0
    with torch.no_grad():
        u = transform(concepts, split.latent(images))  # [5, 4, 8, 8]
    want = torch.nn.functional.interpolate(u, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, want)
    # the total of each map is the total of the coefficients (bilinear ×4 keeps the mean away from the border)
    torch.testing.assert_close(maps.mean((2, 3)), u.mean((2, 3)), atol=0.05 * float(u.max()), rtol=0)
    assert torch.equal(concept_maps(split, concepts, images, size=(8, 8)), u)


def test_efficientnet_end_to_end_curve_ends_are_the_reconstruction_and_the_empty_activation(clf, photos):
    from featvis.concepts import concept_importance, fit_concepts

    split = split_at(clf)
    images = torch.cat([photos["chelsea"], photos["coffee"]])
    concepts = fit_concepts(split, images, 3, crops=4, seed=0)
    assert concepts.W.shape == (3, 1280) and concepts.U.shape == (8, 3)
    importance = concept_importance(split, concepts, images[:1], 282, designs=8)
    assert importance.shape == (3,) and bool(torch.isfinite(importance).all()) and float(importance.min()) >= 0
    res = concept_deletion(split, concepts, images[:1], 282, order=importance.argsort(descending=True), orders=2)
    with torch.no_grad():
        u = transform(concepts, split.latent(images[:1]))
        full = split.head(torch.einsum("bkhw,kc->bchw", u, concepts.W))[:, 282]
        empty = split.head(torch.zeros(1, 1280, 7, 7))[:, 282]
    torch.testing.assert_close(res.curves[:, 0], full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res.curves[:, -1], empty, atol=1e-4, rtol=1e-4)
