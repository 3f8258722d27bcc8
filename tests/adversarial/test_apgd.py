import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS, fool
from featvis.adversarial.apgd import (
    apgd_run,
    checkpoints,
    dlr_loss,
    dlr_targeted_loss,
    random_start,
    should_halve,
    top_classes,
)

from _models import LinearNet, TinyConvNet


def _tiny(classes=10, seed=0):
    net = TinyConvNet(classes=classes, seed=seed).eval()
    return fv.Classifier.wrap(net, labels=[str(i) for i in range(classes)], input_size=16)


def _batch(n=24, seed=0):
    return fv.quantize(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))


def test_checkpoints_follow_the_paper():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N)."""
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000) == [220, 410, 570, 700, 800, 870, 930, 990]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]  # ceil, each once
    assert all(0 < w <= n for n in (1, 5, 37) for w in checkpoints(n))


def test_should_halve_on_either_condition():
    rises = torch.tensor([16, 17, 22, 22, 22])  # of a 22-step segment: ρ · 22 = 16.5
    best = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0])
    before = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    halved = torch.tensor([False, False, False, True, False])
    got = should_halve(rises, 22, best, before, halved, 0.75)
    # 0: too few rises; 1: enough rises, best rose; 2: best unchanged and not halved last time; 3: unchanged but
    # halved last time; 4: best rose
    assert got.tolist() == [True, False, True, False, False]


def test_dlr_losses_match_a_float64_hand_computation():
    z = torch.tensor([[3.0, 1.0, 2.5, -1.0, 0.5], [0.2, 4.0, 1.0, 1.5, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    t = torch.tensor([2, 3])
    # image 0: y is the top class: -(3 - 2.5) / (3 - 1); image 1: -(1 - 4) / (4 - 1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5 / 2.0, 3.0 / 3.0], dtype=torch.float64))
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    expected = torch.tensor([-(3 - 2.5) / (3 - (1 + 0.5) / 2), -(1 - 1.5) / (4 - (1 + 0.2) / 2)], dtype=torch.float64)
    torch.testing.assert_close(dlr_targeted_loss(z, y, t), expected)
    # scale invariance: the reason for DLR
    torch.testing.assert_close(dlr_loss(7 * z, y), dlr_loss(z, y))


def test_top_classes_skip_the_prediction():
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.4, 0.1, 0.2, 0.3]])
    assert top_classes(probs, 9).tolist() == [[2, 0, 3], [3, 2, 1]]  # at most K - 1


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.3)])
def test_random_start_lies_on_the_budget(norm, eps):
    x = torch.full((3, 3, 8, 8), 0.5)
    s = random_start(x, eps, norm, seed=1)
    d = (s - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    torch.testing.assert_close(size, torch.full((3,), eps), rtol=1e-5, atol=1e-7)
    assert torch.equal(s, random_start(x, eps, norm, seed=1))


@pytest.mark.parametrize("name", ["apgd", "apgd-t"])
@pytest.mark.parametrize("norm,eps", [("linf", 3 / 255), ("l2", 0.25)])
def test_apgd_stays_in_the_ball_and_fools_after_rounding(name, norm, eps):
    clf, x = _tiny(), _batch()
    res = fool(clf, x, None, method=name, eps=eps, norm=norm, steps=20)
    assert res.images.min() >= 0 and res.images.max() <= 1 and torch.equal(res.images, fv.quantize(res.images))
    half_lsb = 0.5 / 255 * (1 if norm == "linf" else x[0].numel() ** 0.5)
    size = res.linf if norm == "linf" else res.l2
    assert (size <= eps + half_lsb + 1e-6).all()
    pred = clf(res.images).argmax(-1)
    assert torch.equal(res.success, pred != res.original_classes) and res.success.any()


def test_apgd_is_at_least_as_strong_as_pgd_at_equal_steps():
    """Same iterations, both from a random start: APGD-CE fools at least as many images at every budget."""
    clf, x = _tiny(seed=2), _batch(32, seed=3)
    for eps in (1 / 255, 2 / 255, 4 / 255):
        a = fool(clf, x, None, method="apgd", eps=eps, steps=20, seed=0)
        p = fool(clf, x, None, method="pgd", eps=eps, steps=20, random_start=True, seed=0)
        assert a.success.sum() >= p.success.sum(), (eps * 255, a.success.sum(), p.success.sum())


def test_apgd_halves_and_returns_to_the_best_point_on_a_plateau():
    """On a linear model the CE loss rises until every pixel sits at a corner of the ball, then stops changing:
    condition 1 fires at every later checkpoint, and the point returned (never fooled) is the best one."""
    net = LinearNet(classes=3, size=8, seed=1).double()
    with torch.no_grad():
        net.fc.weight.mul_(1e-4)  # too weak to be fooled in the ball
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abc"), input_size=8).double()
    x = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    orig = clf(x).argmax(-1)
    loss = lambda z, rows: torch.nn.functional.cross_entropy(z, orig[rows], reduction="none")  # noqa: E731
    start = random_start(x, 2 / 255, "linf", 0)
    adv, won, taken, best = apgd_run(clf, x, loss, lambda p, rows: p != orig[rows], eps=2 / 255, norm="linf",
                                     steps=30, start=start)
    assert not won.any() and (taken == 30).all()
    w = net.fc.weight.detach()
    corner = x + 2 / 255 * (w - w[orig[0]]).sum(0).sign().view(1, 3, 8, 8)  # the loss is maximized there (K=3)
    assert (adv - x).abs().max() <= 2 / 255 + 1e-12
    torch.testing.assert_close(best, loss(clf(adv), torch.arange(2)).detach())
    assert (best >= loss(clf(corner), torch.arange(2)).detach() - 1e-9).all()


def test_targeted_apgd_hits_the_target_and_apgd_t_tries_top_classes():
    clf, x = _tiny(seed=1), _batch(16, seed=4)
    probs = clf(x).softmax(-1)
    second = probs.topk(2, dim=1).indices[:, 1]
    res = fool(clf, x, second, method="apgd", eps=8 / 255, steps=20, loss="dlr")
    assert res.success.any() and torch.equal(res.success, res.predicted == second)
    multi = fool(clf, x, None, method="apgd-t", eps=8 / 255, steps=20)
    assert multi.success.sum() >= res.success.sum() and multi.targets is None


def test_apgd_is_seeded_and_batch_independent_with_per_image_seeds():
    clf, x = _tiny(), _batch(6)
    a = fool(clf, x, None, method="apgd", eps=2 / 255, steps=10, seed=[1, 2, 3, 4, 5, 6], early_stop=False)
    b = fool(clf, x[2:4], None, method="apgd", eps=2 / 255, steps=10, seed=[3, 4], early_stop=False)
    torch.testing.assert_close(a.images[2:4], b.images)
    c = fool(clf, x, None, method="apgd", eps=2 / 255, steps=10, seed=[1, 2, 3, 4, 5, 6], early_stop=False)
    assert torch.equal(a.images, c.images)


def test_apgd_callback_and_early_stop():
    clf, x = _tiny(), _batch(8)
    seen = []
    res = fool(clf, x, None, method="apgd", eps=8 / 255, steps=20, callback=lambda k, left: seen.append((k, left)))
    lefts = [left for _, left in seen]
    assert lefts == sorted(lefts, reverse=True) and seen[0][0] == 1
    assert (res.steps[res.success] < 20).all()  # the fooled ones stopped early


def test_apgd_is_registered_with_its_norms():
    from featvis.adversarial._base import budget_norms

    assert ATTACKS.canonical("apgd-ce") == "apgd" and budget_norms("apgd") == ("linf", "l2")
    assert budget_norms("apgd-t") == ("linf", "l2")
    rob = fv.robustness(_tiny(), _batch(8), None, eps=[1 / 255, 4 / 255], method="apgd", steps=10)
    assert rob.fooled_rate == sorted(rob.fooled_rate) and rob.method == "apgd"
