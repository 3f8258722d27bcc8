"""CAVs: FastCAV is the mean-difference formula; linear and fast CAVs agree on separable data; bad input is one line."""

import pytest
import torch
import torch.nn.functional as F

from featvis.concepts.cav import fast_cav, layer_activations, linear_cav, split_indices
from featvis.errors import FeatvisError

from _models import TinyConvNet


def _gaussians(seed=0, n=100, d=16, gap=3.0):
    """Two Gaussian clouds [n, d] whose means differ by `gap` along a random unit direction."""
    gen = torch.Generator().manual_seed(seed)
    direction = F.normalize(torch.randn(d, generator=gen), dim=0)
    base = torch.randn(d, generator=gen)
    concept = base + gap * direction + 0.5 * torch.randn(n, d, generator=gen)
    random = base + 0.5 * torch.randn(n, d, generator=gen)
    return concept, random, direction


def test_fast_cav_is_the_concept_mean_minus_the_pooled_mean():
    concept, random, _ = _gaussians(n=30)
    random = random[:20]  # unequal sizes: the pooled mean is not the midpoint of the two means
    cav = fast_cav(concept, random, layer="l", concept="c", counterexample="r")
    expected = concept.mean(0) - torch.cat([concept, random]).mean(0)
    torch.testing.assert_close(cav.vector, expected / expected.norm())
    assert (cav.method, cav.layer, cav.concept, cav.counterexample) == ("fast", "l", "c", "r")
    assert cav.accuracy == 1.0  # the clouds are 6 sigma apart


@pytest.mark.parametrize("method", ["sgd", "logistic"])
def test_linear_and_fast_cavs_agree_on_separable_gaussians(method):
    concept, random, direction = _gaussians()
    linear = linear_cav(concept, random, seed=0, method=method)
    fast = fast_cav(concept, random)
    assert linear.vector.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.dot(linear.vector, fast.vector) > 0.9
    assert torch.dot(fast.vector, direction) > 0.9
    assert linear.accuracy > 0.9 and linear.seed == 0


def test_linear_cav_is_seeded_and_points_to_the_concept():
    concept, random, direction = _gaussians(seed=1)
    a, b = linear_cav(concept, random, seed=3), linear_cav(concept, random, seed=3)
    assert torch.equal(a.vector, b.vector)
    assert torch.dot(a.vector, direction) > 0  # towards the concept, not away from it
    flipped = linear_cav(random, concept, seed=3)
    assert torch.dot(flipped.vector, direction) < 0


def test_split_is_stratified_and_keeps_both_sides_in_train_and_test():
    train, test = split_indices(2, 3, seed=0)
    assert sorted(torch.cat([train, test]).tolist()) == [0, 1, 2, 3, 4]
    for part in (train, test):
        assert (part < 2).any() and (part >= 2).any()
    train, test = split_indices(30, 30, seed=0)
    assert len(test) == 20  # round(0.33 * 30) per side, Captum's test share


def test_layer_activations_are_flattened_per_image_and_batched_alike():
    clf = TinyConvNet()
    images = torch.rand(5, 3, 8, 8)
    whole = layer_activations(clf, images, ["conv1", "conv2"], batch_size=5)
    chunked = layer_activations(clf, images, ["conv1", "conv2"], batch_size=2)
    assert whole["conv1"].shape == (5, 6 * 8 * 8) and whole["conv2"].shape == (5, 8 * 4 * 4)
    for name in whole:
        torch.testing.assert_close(whole[name], chunked[name])
    torch.testing.assert_close(whole["conv1"], clf.conv1(images).flatten(1))


@pytest.mark.parametrize("make", [fast_cav, linear_cav])
def test_bad_activations_are_one_line_errors_naming_the_concept(make):
    good = torch.randn(4, 8)
    with pytest.raises(FeatvisError, match=r"concept 'striped' has 1 example.*add images") as e:
        make(good[:1], good, concept="striped")
    assert "\n" not in str(e.value)
    with pytest.raises(FeatvisError, match=r"concept 'striped' has 0 example"):
        make(good[:0], good, concept="striped")
    with pytest.raises(FeatvisError, match=r"'striped' has 8 features per image but 'random-0' has 6"):
        make(good, torch.randn(4, 6), concept="striped", counterexample="random-0")
    with pytest.raises(FeatvisError, match=r"concept 'striped': expected activations \[N, D\], got \[4, 2, 4\]"):
        make(good.view(4, 2, 4), good, concept="striped")
    with pytest.raises(FeatvisError, match=r"concept 'striped': its activations hold NaN"):
        make(torch.full((4, 8), float("nan")), good, concept="striped")


def test_identical_sets_give_a_zero_fast_cav_error():
    acts = torch.randn(4, 8)
    with pytest.raises(FeatvisError, match=r"concept 'same': its CAV is zero"):
        fast_cav(acts, acts.clone(), concept="same")


def test_unknown_linear_method_is_named():
    with pytest.raises(FeatvisError, match=r"unknown linear CAV method 'svm'"):
        linear_cav(torch.randn(4, 8), torch.randn(4, 8), method="svm")


def test_one_layer_and_several_layers_give_the_same_activations():
    clf = TinyConvNet()
    images = torch.rand(3, 3, 8, 8)
    both = layer_activations(clf, images, ["conv1", "conv2"])
    for name in both:
        torch.testing.assert_close(both[name], layer_activations(clf, images, name)[name])
