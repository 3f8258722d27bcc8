"""Universal perturbations on a tiny model: inside the ball, fooling the training images as measured, resumable to
the same v, lazy batches equal to one tensor, the model left as it was."""

from __future__ import annotations

import itertools

import pytest
import torch

import featvis as fv
from featvis.adversarial.universal import (
    UniversalState,
    apply,
    fooled,
    random_perturbation,
    universal_perturbation,
    universal_steps,
)

from _models import TinyConvNet

EPS = 0.1  # the tiny random net needs more than the paper's 10/255 (measured: ~35 % fooled at 10/255)


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=16)


@pytest.fixture(scope="module")
def images():
    return torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["deepfool", "sgd"])
def test_stays_in_the_ball_and_reaches_the_target_rate(tiny, images, method):
    res = universal_perturbation(tiny, images, eps=EPS, method=method, epochs=5, batch_size=8, seed=0)
    assert res.linf <= EPS + 1e-6 and res.perturbation.shape == (3, 16, 16)
    adv = apply(images, res.perturbation)
    assert float((adv - images).abs().max()) <= EPS + 1 / 255 and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, (adv * 255).round() / 255)  # judged on 8-bit images
    ok, clean, after = fooled(tiny, images, res.perturbation)
    assert res.fooling_rate == pytest.approx(ok.float().mean().item()) and res.fooling_rate >= 0.8
    assert res.history[-1] == res.fooling_rate and res.images == 24 and res.epochs == len(res.history) <= 5
    assert torch.equal(clean != after, ok)


def test_l2_ball(tiny, images):
    res = universal_perturbation(tiny, images, eps=1.5, norm="l2", method="sgd", epochs=3, batch_size=8)
    assert res.l2 <= 1.5 + 1e-5 and res.norm == "l2" and res.fooling_rate > 0


def test_random_baseline_has_the_same_size():
    v = random_perturbation((3, 8, 8), 10 / 255, "linf", seed=1)
    assert torch.allclose(v.abs(), torch.full_like(v, 10 / 255))
    assert torch.equal(v, random_perturbation((3, 8, 8), 10 / 255, "linf", seed=1))
    assert random_perturbation((3, 8, 8), 2.0, "l2", seed=1).norm().item() == pytest.approx(2.0)


@pytest.mark.parametrize("method", ["deepfool", "sgd"])
def test_resumed_fit_ends_with_the_same_perturbation(tiny, images, method):
    opts = dict(eps=EPS, method=method, epochs=3, target_rate=1.0, batch_size=8, seed=4)
    whole = universal_perturbation(tiny, images, **opts)
    cut = list(itertools.islice(universal_steps(tiny, images, **opts), 2))[-1]  # 2 of the first pass's 3 batches
    assert not cut.done and (cut.epoch, cut.batch) == (0, 2)
    resumed = universal_perturbation(tiny, images, **opts, start=UniversalState.from_dict(cut.to_dict()))
    assert torch.equal(resumed.perturbation, whole.perturbation) and resumed.history == whole.history


def test_lazy_batches_equal_one_tensor(tiny, images):
    loaded = []

    class Lazy:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            loaded.append(i)
            return images[i * 8:(i + 1) * 8]

    a = universal_perturbation(tiny, images, eps=EPS, method="sgd", epochs=2, target_rate=1.0, batch_size=8)
    b = universal_perturbation(tiny, Lazy(), eps=EPS, method="sgd", epochs=2, target_rate=1.0)
    assert torch.equal(a.perturbation, b.perturbation) and sorted(set(loaded)) == [0, 1, 2]


def test_leaves_the_model_as_it_was(images):
    net = TinyConvNet()
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=16)
    clf.train()
    for method in ("deepfool", "sgd"):
        universal_perturbation(clf, images[:8], eps=EPS, method=method, epochs=1)
        assert all(m.training for m in clf.modules())
        assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_refuses_bad_options(tiny, images):
    with pytest.raises(fv.FeatvisError, match="unknown universal fit 'pgd'"):
        universal_perturbation(tiny, images, method="pgd")
    with pytest.raises(fv.FeatvisError, match="unknown norm"):
        universal_perturbation(tiny, images, norm="l1")
    with pytest.raises(fv.FeatvisError, match="positive budget"):
        universal_perturbation(tiny, images, eps=0)
