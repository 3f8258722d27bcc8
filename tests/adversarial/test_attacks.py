import pytest
import torch

import featvis as fv
from featvis.adversarial import ATTACKS, fool
from featvis.adversarial.pgd import project

from _models import LinearNet, TinyConvNet


@pytest.fixture(scope="module")
def captum_robust():
    """Captum's attacks, for the tests that compare with them; the rest run without Captum."""
    return pytest.importorskip("captum.robust")

TARGETS = {"stingray": 6, "gorilla": 366, "pizza": 963}


@pytest.fixture(scope="module")
def six(photos):
    return torch.cat([photos[n] for n in fv.samples.names()])


@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
@pytest.mark.slow
def test_ascent_fools_every_photo_imperceptibly_and_saved_pngs_still_fool(clf, six, tmp_path):
    """The issue's bar on the bundled photos × (stingray, gorilla, pizza): 100 % after 8-bit rounding,
    mean L∞ <= 4/255 and mean L2 <= 1.0, every saved PNG still the target when read back."""
    x = six.repeat(len(TARGETS), 1, 1, 1)
    tgt = [t for t in TARGETS.values() for _ in range(six.shape[0])]
    res = fool(clf, x, tgt, method="ascent")
    assert res.success.all(), res.records()
    assert (res.steps <= 100).all()
    assert torch.equal(res.images, fv.quantize(res.images))  # already on the 8-bit grid
    assert res.linf.max() <= 3 / 255 + 1e-6  # the cap holds on the saved image
    assert res.linf.mean() <= 4 / 255 and res.l2.mean() <= 1.0, (res.linf.mean() * 255, res.l2.mean())
    for i in range(x.shape[0]):
        path = fv.save_image(res.images[i], tmp_path / f"{i}.png")
        again = fv.load_image(path, clf)
        assert clf.predict(again, k=1)[0][0].index == tgt[i]


def _linear_clf():
    net = LinearNet(classes=3, size=16)
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abc"), input_size=16)
    x = fv.quantize(torch.full((1, 3, 16, 16), 0.5))
    with torch.no_grad():
        start = clf(x).argmax().item()
    return net, clf, x, (start + 1) % 3


def test_lab_step_is_the_normalized_gradient_of_the_logit():
    """One hand-computed step on a linear model: x1 = clamp(x0 + lr · w_t / ‖w_t‖)."""
    net, clf, x, t = _linear_clf()
    res = ATTACKS.get("lab")(clf, x, t, lr=0.01, max_steps=1)
    w = net.fc.weight[t].detach().view(1, 3, 16, 16)
    expected = fv.quantize((x + 0.01 * w / w.norm()).clamp(0, 1))
    torch.testing.assert_close(res.images, expected, atol=0, rtol=0)
    assert res.method == "lab" and (res.steps.item() == 1 or res.success.item())


def test_ascent_step_is_the_normalized_gradient_of_the_log_prob_within_the_cap():
    """d log p_t / dx = w_t − Σ_k p_k w_k on a linear model; the step is clipped to ±eps on the 8-bit grid."""
    net, clf, x, t = _linear_clf()
    w = net.fc.weight.detach()
    p = clf(x).softmax(-1)[0].detach()
    g = (w[t] - p @ w).view(1, 3, 16, 16)
    for lr, eps in ((0.01, 3 / 255), (1.0, 2 / 255)):  # the second step is large: the cap decides
        res = ATTACKS.get("ascent")(clf, x, t, lr=lr, eps=eps, max_steps=1)
        expected = fv.quantize(torch.minimum(torch.maximum(x + lr * g / g.norm(), x - eps), x + eps))
        torch.testing.assert_close(res.images, expected, atol=0, rtol=0)
    assert float((res.images - x).abs().max()) == pytest.approx(2 / 255, abs=1e-6)


def test_ascent_cap_holds_after_rounding_for_off_grid_images(clf, six):
    """An original that is not on the 8-bit grid (a resized tensor): the saved change still stays within eps."""
    x = torch.nn.functional.interpolate(six[:2], size=128, mode="bilinear", antialias=True).clamp(0, 1)
    assert not torch.equal(x, fv.quantize(x))
    res = fool(clf, x, "random", method="ascent", eps=2 / 255, lr=0.5, max_steps=4, seed=1)
    assert (res.images - x).abs().max() <= 2 / 255 + 1e-6
    with pytest.raises(fv.FeatvisError, match="at least one 8-bit level"):
        fool(clf, x, "random", method="ascent", eps=0.5 / 255)


def test_fgsm_matches_captum(clf, six, captum_robust):
    x = six[:2]
    eps = 4 / 255
    res = fool(clf, x, None, method="fgsm", eps=eps)
    orig = clf(x).argmax(-1)
    ref = captum_robust.FGSM(clf, loss_func=lambda out, t: torch.nn.functional.cross_entropy(
        out, t, reduction="none"), lower_bound=0, upper_bound=1).perturb(x, eps, orig)
    # Identical except where the gradient is ~0 and its sign is decided by float rounding (Captum also skips
    # |grad| <= 1e-6): under 0.1 % of the pixel values.
    assert (fv.quantize(ref) != res.images).float().mean() < 1e-3
    assert ((fv.quantize(ref) - x).abs().max() - eps).abs() < 1 / 255


def test_pgd_step_matches_captum(clf, six, captum_robust):
    """One PGD step (gradient, sign step, projection, bounds) equals Captum's. Over several steps float
    rounding differences in near-zero gradients flip signs and the two trajectories drift apart chaotically,
    so multi-step exactness is checked against the float64 reference below instead."""
    x = six[:2]
    eps, alpha = 2 / 255, 3 / 255  # alpha > eps: the projection matters
    tgt = torch.tensor([6, 963])
    res = fool(clf, x, tgt, method="pgd", eps=eps, alpha=alpha, steps=1, early_stop=False, straight_through=False)
    loss = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    ref = captum_robust.PGD(clf, loss_func=loss, lower_bound=0, upper_bound=1).perturb(
        x, radius=eps, step_size=alpha, step_num=1, target=tgt, targeted=True)
    assert (fv.quantize(ref) != res.images).float().mean() < 1e-3


def _reference_pgd(clf, x, t, eps, alpha, steps):
    """Textbook targeted L-inf PGD, written out plainly."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(clf(adv), t, reduction="sum")
        g, = torch.autograd.grad(loss, adv)
        adv = adv.detach() - alpha * g.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv


def test_pgd_matches_reference_over_many_steps_in_float64():
    net = TinyConvNet(classes=4).double().eval()
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=16).double()
    x = fv.quantize(torch.rand(3, 3, 16, 16, dtype=torch.float64))
    t = torch.tensor([1, 2, 3])
    res = fool(clf, x, t, method="pgd", eps=6 / 255, alpha=1 / 255, steps=10, early_stop=False,
               straight_through=False)
    ref = _reference_pgd(clf, x, t, 6 / 255, 1 / 255, 10)
    torch.testing.assert_close(res.images, fv.quantize(ref), atol=0, rtol=0)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_pgd_stays_in_budget_and_range(clf, six, norm, eps):
    res = fool(clf, six[:3], "random", method="pgd", eps=eps, norm=norm, steps=5, random_start=True)
    assert res.images.min() >= 0 and res.images.max() <= 1
    if norm == "linf":
        assert (res.linf <= eps + 0.5 / 255 + 1e-6).all()
    else:
        half_lsb = 0.5 / 255 * res.images[0].numel() ** 0.5
        assert (res.l2 <= eps + half_lsb).all()


def test_untargeted_pgd_changes_every_prediction(clf, six):
    res = fool(clf, six, None, method="pgd", eps=4 / 255)
    assert res.success.all() and (res.predicted != res.original_classes).all()


def test_project_is_exact():
    orig = torch.zeros(1, 3, 4, 4)
    x = torch.full((1, 3, 4, 4), 0.5)
    assert project(x, orig, 0.1, "linf").max() == pytest.approx(0.1)
    assert project(x, orig, 0.1, "l2").norm() == pytest.approx(0.1, rel=1e-5)


@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
@pytest.mark.slow
def test_cw_needs_less_l2_than_pgd_l2_at_equal_success(clf, six):
    x = six[:3]
    tgt = [6, 366, 963]
    cw = fool(clf, x, tgt, method="cw", steps=30, search_steps=3, lr=0.01)
    pgd = fool(clf, x, tgt, method="pgd", norm="l2", eps=2.0, steps=40)
    assert cw.success.all() and pgd.success.all()
    assert cw.l2.mean() < pgd.l2.mean()


def test_random_targets_are_seeded_and_never_the_prediction(clf, six):
    a = fool(clf, six, "random", method="fgsm", seed=3)
    b = fool(clf, six, "random", method="fgsm", seed=3)
    assert torch.equal(a.targets, b.targets) and (a.targets != a.original_classes).all()


@pytest.mark.slow
def test_transfer_and_records(clf, six):
    res = fool(clf, six[:2], "stingray", method="ascent", check_model=clf)
    rows = res.records()
    assert rows[0]["transfer_model"] == clf.id
    assert rows[0]["transfer_success"] == rows[0]["success"]
    assert rows[0]["linf_255"] == round(rows[0]["linf"] * 255)
    assert rows[0]["target_name"] == "stingray" and rows[0]["psnr_db"] > 30


def test_bad_targets(clf, six):
    with pytest.raises(fv.FeatvisError, match="closest names"):
        fool(clf, six[:1], "stingrey")
    with pytest.raises(fv.FeatvisError, match="unknown attack 'pgb'.*'pgd'"):
        fool(clf, six[:1], 6, method="pgb")
    with pytest.raises(fv.FeatvisError, match="target has 2 entries for 1 images"):
        fool(clf, six[:1], [1, 2])


def test_select_keeps_one_image(clf, six):
    res = fool(clf, six[:3], "stingray", method="fgsm", check_model=clf)
    one = res.select(1)
    assert one.images.shape[0] == 1 and torch.equal(one.images[0], res.images[1])
    assert one.records()[0] == res.records()[1]


def _reference_mifgsm(clf, x, t, eps, alpha, steps, decay):
    """Dong et al. 2018, Algorithm 1 (targeted), written out plainly."""
    adv, g = x.clone(), torch.zeros_like(x)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(clf(adv), t, reduction="sum")
        grad, = torch.autograd.grad(loss, adv)
        g = decay * g + grad / grad.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
        adv = adv.detach() - alpha * g.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv


def test_mifgsm_matches_reference_in_float64():
    net = TinyConvNet(classes=4).double().eval()
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=16).double()
    x = fv.quantize(torch.rand(3, 3, 16, 16, dtype=torch.float64))
    t = torch.tensor([1, 2, 3])
    res = fool(clf, x, t, method="mifgsm", eps=6 / 255, alpha=1 / 255, steps=8, decay=0.9, early_stop=False,
               straight_through=False)
    torch.testing.assert_close(res.images, fv.quantize(_reference_mifgsm(clf, x, t, 6 / 255, 1 / 255, 8, 0.9)),
                               atol=0, rtol=0)


def test_mifgsm_fools_the_photos_within_budget(clf, six):
    res = fool(clf, six, [6, 366, 963] * 2, method="mifgsm", eps=8 / 255)
    assert res.success.all() and (res.linf <= 8 / 255 + 0.5 / 255 + 1e-6).all()


def test_deepfool_on_a_linear_model_reaches_the_nearest_boundary():
    """For an affine classifier the nearest boundary is known in closed form: min_k |f_k − f_0| / ‖w_k − w_0‖.
    No image closer than that can change the prediction; DeepFool lands just past it (overshoot + rounding)."""
    net = LinearNet(classes=5, size=16, seed=3).double()
    with torch.no_grad():
        net.fc.weight.mul_(0.05)
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abcde"), input_size=16).double()
    x = fv.quantize(torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    res = fool(clf, x, None, method="deepfool", overshoot=0.02)
    w = net.fc.weight.detach()
    f = clf(x).detach()
    orig = f.argmax(1)
    dist = torch.stack([((f[i] - f[i, orig[i]]).abs() / (w - w[orig[i]]).norm(dim=1).clamp_min(1e-12))
                        .scatter(0, orig[i:i + 1], float("inf")).min() for i in range(4)])
    quant = 0.5 / 255 * x[0].numel() ** 0.5  # the most rounding can add
    assert res.success.all()
    assert (res.l2 >= dist - 1e-9).all() and (res.l2 <= 1.1 * dist + quant).all(), (res.l2, dist)


@pytest.mark.slow
@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
def test_deepfool_finds_small_untargeted_changes_on_photos(clf, six):
    res = fool(clf, six, None, method="deepfool")
    pgd = fool(clf, six, None, method="pgd", norm="l2", eps=1.0, steps=10)  # early stop: it stops when fooled too
    assert res.success.all() and pgd.success.all()
    assert res.l2.mean() < 0.7 * pgd.l2.mean(), (res.l2, pgd.l2)  # measured: 0.17 vs 0.31
    with pytest.raises(fv.FeatvisError, match="deepfool is untargeted"):
        fool(clf, six[:1], "stingray", method="deepfool")


def test_robustness_curve_budgets_and_errors(clf, six):
    x = six[:3]
    grid = [1 / 255, 2 / 255]
    rob = fv.robustness(clf, x, None, eps=grid, method="pgd", steps=5)
    rates = rob.fooled_rate
    assert rates == sorted(rates) and rates[0] > 0  # one 8-bit level already flips photos of this model
    for i, rec in enumerate(rob.records()):
        assert rec["fooled"] == (rob.predicted[i] != rob.original_classes[i]).item()
        if rec["fooled"]:
            assert rec["min_eps"] in grid  # exactly a budget of the grid
            assert (rob.images[i] - x[i]).abs().max() <= rec["min_eps"] + 1e-6
            assert clf.predict(rob.images[i:i + 1], k=1)[0][0].index == rec["predicted"]
    assert rates[0] == pytest.approx(sum(r["min_eps"] == grid[0] for r in rob.records()) / 3)
    with pytest.raises(fv.FeatvisError, match="needs an attack with a budget"):
        fv.robustness(clf, x, eps=grid, method="cw")
    with pytest.raises(fv.FeatvisError, match="positive finite budgets"):
        fv.robustness(clf, x, eps=[-1 / 255])
