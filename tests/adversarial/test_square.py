import math

import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS, fool
from featvis.adversarial.square import margin, p_schedule, square_run, stripes
from featvis.errors import FeatvisWarning

from _models import TinyConvNet


def _tiny(classes=10, seed=0):
    net = TinyConvNet(classes=classes, seed=seed).eval()
    return fv.Classifier.wrap(net, labels=[str(i) for i in range(classes)], input_size=16)


def _batch(n=16, seed=0):
    return fv.quantize(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))


class Counted:
    """Counts the images the classifier is run on (a wrapper on this instance's forward)."""

    def __init__(self, clf):
        self.images = 0
        inner = clf.forward

        def forward(x):
            self.images += x.shape[0]
            return inner(x)

        clf.forward = forward


def test_p_schedule_halves_at_the_papers_iterations():
    """10 000-query schedule (Andriushchenko et al. 2020, reference code): p_init up to 10, /2 up to 50, ..."""
    got = [p_schedule(it, 10_000, 0.8) for it in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert p_schedule(5, 1000, 0.8) == 0.4  # stretched: iteration 5 of 1000 is iteration 50 of 10 000 ... halved once
    assert p_schedule(1, 1000, 0.8) == 0.8


def test_stripes_are_unit_norm_positive_on_top_and_peak_at_the_centres():
    for s in (3, 5, 8):
        pat = stripes(s, dtype=torch.float64)
        torch.testing.assert_close(pat.norm(), torch.tensor(1.0, dtype=torch.float64))
        assert (pat[: s // 2] > 0).all() and (pat[s // 2:] < 0).all()
        top = pat[: s // 2]
        assert top[(s // 2) // 2, s // 2] == top.max()  # the rectangles' centre weighs most


def test_margin_is_positive_until_fooled():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margin(z, torch.tensor([0, 0]), False).tolist() == [1.0, -5.0]
    assert margin(z, torch.tensor([2, 2]), True).tolist() == [1.0, 4.0]  # best other − target


@pytest.mark.parametrize("norm,eps,rate", [("linf", 8 / 255, 0.7), ("l2", 1.0, 0.55)])
def test_square_fools_most_of_a_small_net_within_its_budget(norm, eps, rate):
    """On a tiny conv net, 16 images, 300 queries: measured 75 % (L∞ 8/255) and 62.5 % (L2 1.0), where torchattacks
    3.5.1's Square fools 62.5 % and 50 % on the same net and images (float judgement); clearly more than the random
    start alone; never outside the ε ball or [0, 1] (L2: ε plus what 8-bit rounding adds)."""
    clf, x = _tiny(seed=0), _batch(16, seed=2)
    res = fool(clf, x, None, method="square", norm=norm, eps=eps, queries=300)
    start = fool(clf, x, None, method="square", norm=norm, eps=eps, queries=1)
    assert res.success_rate >= rate and res.success_rate >= start.success_rate + 0.2, (res.success_rate,
                                                                                       start.success_rate)
    assert res.images.min() >= 0 and res.images.max() <= 1 and torch.equal(res.images, fv.quantize(res.images))
    assert torch.equal(res.predicted != res.original_classes, res.success)
    if norm == "linf":
        assert (res.linf <= eps + 1e-6).all()
    else:
        assert (res.l2 <= eps + 0.5 / 255 * x[0].numel() ** 0.5 + 1e-6).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.4 / 255), ("l2", 0.05)])
def test_square_on_floats_stays_exactly_in_the_ball(norm, eps):
    """rounding=False (the reference's float steps): every image tried lies within ε of the original and in [0, 1],
    including budgets under one 8-bit level."""
    clf, x = _tiny(), _batch(8)
    best, loss, used = square_run(clf, x, clf(x).argmax(1), False, eps=eps, norm=norm, queries=60, rounding=False)
    size = (best - x).flatten(1).abs().amax(1) if norm == "linf" else (best - x).flatten(1).norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and best.min() >= 0 and best.max() <= 1
    if norm == "l2":  # the L2 attack keeps its change on the sphere (up to the box)
        assert (size >= 0.5 * eps).all()
    assert (used <= 60).all() and (used >= 1).all()
    with torch.no_grad():
        torch.testing.assert_close(loss, margin(clf(best), clf(x).argmax(1), False))


def test_square_counts_its_queries_and_never_exceeds_them():
    """Every query is one image through the model: targets + start (B each), one per image still running per
    iteration, the 8-bit check of the result (B). Fooled images stop querying."""
    clf, x = _tiny(seed=1), _batch(12, seed=3)
    counted = Counted(clf)
    res = fool(clf, x, None, method="square", eps=8 / 255, queries=50)
    assert (res.steps <= 50).all() and (res.steps >= 1).all()
    assert counted.images == 2 * len(x) + int(res.steps.sum())
    assert (res.steps[~res.success] == 50).all() and (res.steps[res.success] < 50).any()
    full = fool(clf, x, None, method="square", eps=8 / 255, queries=50, early_stop=False)
    assert (full.steps == 50).all()


def test_square_draws_are_per_image_and_seeded():
    clf, x = _tiny(), _batch(6)
    opts = {"eps": 2 / 255, "queries": 40, "early_stop": False}
    a = fool(clf, x, None, method="square", seed=[1, 2, 3, 4, 5, 6], **opts)
    b = fool(clf, x[2:4], None, method="square", seed=[3, 4], **opts)
    torch.testing.assert_close(a.images[2:4], b.images, atol=0, rtol=0)
    c = fool(clf, x, None, method="square", seed=[1, 2, 3, 4, 5, 6], **opts)
    assert torch.equal(a.images, c.images)
    d = fool(clf, x, None, method="square", seed=[7, 2, 3, 4, 5, 6], **opts)
    assert not torch.equal(d.images[0], a.images[0]) and torch.equal(d.images[1:], a.images[1:])


def test_targeted_square_reaches_the_target():
    clf, x = _tiny(seed=1), _batch(8, seed=5)
    second = clf(x).softmax(-1).topk(2, dim=1).indices[:, 1]
    res = fool(clf, x, second, method="square", eps=16 / 255, queries=200)
    assert res.success.any() and torch.equal(res.success, res.predicted == second)


def test_square_below_one_level_warns_and_is_registered():
    clf, x = _tiny(), _batch(2)
    with pytest.warns(FeatvisWarning, match="cannot change any 8-bit value"):
        res = fool(clf, x, None, method="square", eps=0.4 / 255, queries=3)
    assert torch.equal(res.images, x) and not res.success.any()
    spec = ATTACKS.get("square-attack")
    assert spec.info["norms"] == ("linf", "l2") and spec.info["steps"] == "queries" and math.isfinite(spec.options[
        "queries"].default)
