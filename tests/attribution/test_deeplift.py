"""DeepLIFT and DeepLiftShap: summation-to-delta, equal to Captum where Captum's hooks are right, exact on a linear
model, seeded baselines."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution._base import input_gradients
from featvis.attribution.integrated import make_baseline

from _models import LinearNet, TinyConvNet


class SmallNet(nn.Module):
    """Every nonlinearity Captum has a rule for (ReLU, MaxPool, Sigmoid, Tanh, ELU), BatchNorm, and no hooked module
    feeding another one directly: there Captum's rule reads the gradient before the next module's rule replaced it
    (see test_deeplift_is_complete_where_captum_is_not)."""

    def __init__(self, pool_after_relu: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pool_after_relu = pool_after_relu
        self.conv1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.pool = nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2)
        self.conv3, self.bn, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Sigmoid()
        self.conv4, self.act3 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.Tanh()
        self.avg, self.fc1, self.act4, self.fc2 = nn.AdaptiveAvgPool2d(2), nn.Linear(32, 16), nn.ELU(), nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.pool(x) if self.pool_after_relu else self.pool(self.conv2(x))
        x = self.act2(self.bn(self.conv3(x)))
        x = self.act3(self.conv4(x))
        return self.fc2(self.act4(self.fc1(self.avg(x).flatten(1))))


class _Normalized(nn.Module):
    """The classifier's normalization then its network, as a plain module for Captum (which hooks every module)."""

    def __init__(self, clf: fv.Classifier) -> None:
        super().__init__()
        self.net, self.mean, self.std = clf.net, clf.mean, clf.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _wrap(net: nn.Module, side: int = 32) -> fv.Classifier:
    return fv.Classifier.wrap(net.eval(), labels=list("abcd")[:4], input_size=side, mean=(0.4, 0.5, 0.6),
                              std=(0.2, 0.25, 0.3))


def _scores(clf, x, targets):
    with torch.no_grad():
        return clf(x).gather(1, torch.as_tensor(targets)[:, None])[:, 0]


@pytest.fixture(scope="module")
def small():
    return _wrap(SmallNet())


@pytest.mark.parametrize("baseline", ["black", "blur", "tensor"])
def test_deeplift_equals_captum_on_a_small_net(small, baseline):
    captum_attr = pytest.importorskip("captum.attr")
    x, targets = torch.rand(3, 3, 32, 32), [1, 2, 3]
    base = torch.rand(1, 3, 32, 32) if baseline == "tensor" else baseline
    ours, delta = saliency(small, x, targets, method="deeplift", baseline=base, reduce="none", return_delta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        ref, ref_delta = captum_attr.DeepLift(_Normalized(small)).attribute(
            x, baselines=make_baseline(small, x, base), target=targets, return_convergence_delta=True)
    err = (ours - ref).abs().max().item()
    print(f"DeepLIFT ({baseline}) vs Captum: max |difference| = {err:.2e} (map max {ref.abs().max().item():.3g}); "
          f"completeness ours {delta.abs().max().item():.1e}, Captum {ref_delta.abs().max().item():.1e}")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert delta.abs().max() < 1e-5


def test_deeplift_shap_equals_captum_with_every_reference(small):
    captum_attr = pytest.importorskip("captum.attr")
    x, refs, targets = torch.rand(2, 3, 32, 32), torch.rand(5, 3, 32, 32), [0, 3]
    ours, delta = saliency(small, x, targets, method="deeplift-shap", baselines=refs, samples=5, reduce="none",
                           return_delta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = captum_attr.DeepLiftShap(_Normalized(small)).attribute(x, baselines=refs, target=targets)
    print(f"DeepLiftShap vs Captum: max |difference| = {(ours - ref).abs().max().item():.2e}")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    gap = _scores(small, x, targets) - torch.stack([_scores(small, r.expand_as(x), targets) for r in refs]).mean(0)
    torch.testing.assert_close(ours.flatten(1).sum(1), gap, rtol=1e-4, atol=1e-5)
    assert delta.abs().max() < 1e-5


def test_deeplift_is_complete_where_captum_is_not():
    """ReLU straight into MaxPool: Captum's ReLU rule reads the gradient its tensor hook captured before the max-pool's
    rule replaced it, and misses summation-to-delta (its own convergence delta); featvis's maps sum to the gap."""
    captum_attr = pytest.importorskip("captum.attr")
    clf = _wrap(SmallNet(pool_after_relu=True))
    x, base, targets = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), [0, 1]
    ours = saliency(clf, x, targets, method="deeplift", baseline=base)
    gap = _scores(clf, x, targets) - _scores(clf, base, targets)
    torch.testing.assert_close(ours.flatten(1).sum(1), gap, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref_delta = captum_attr.DeepLift(_Normalized(clf)).attribute(x, baselines=base, target=targets,
                                                                         return_convergence_delta=True)
    print(f"completeness miss: Captum {ref_delta.abs().max().item():.3f}, featvis "
          f"{(ours.flatten(1).sum(1) - gap).abs().max().item():.1e} (gap {gap.abs().max().item():.3f})")
    assert ref_delta.abs().max() > 100 * (ours.flatten(1).sum(1) - gap).abs().max()


@pytest.mark.parametrize("score", ["logit", "log-prob", "prob"])
def test_deeplift_sums_to_the_score_gap_with_inplace_reused_relus(score):
    clf = _wrap(TinyConvNet(classes=4))  # one in-place ReLU module called twice: Captum cannot hook it
    x, targets = torch.rand(3, 3, 32, 32), [0, 1, 2]
    maps, delta = saliency(clf, x, targets, method="deeplift", baseline="blur", score=score, return_delta=True)
    base = make_baseline(clf, x, "blur")
    with torch.no_grad():
        fn = {"logit": lambda z: z, "log-prob": lambda z: z.log_softmax(-1), "prob": lambda z: z.softmax(-1)}[score]
        idx = torch.tensor(targets)[:, None]
        gap = (fn(clf(x)).gather(1, idx) - fn(clf(base)).gather(1, idx))[:, 0]
    torch.testing.assert_close(maps.flatten(1).sum(1), gap, rtol=1e-4, atol=1e-6)
    assert delta.abs().max() < 1e-5
    ixg = (x - base) * input_gradients(clf, x, torch.tensor(targets), score=score)
    assert not torch.allclose(maps, ixg.sum(1), atol=1e-4)  # the rule changed the backward: not a gradient map


def test_deeplift_on_a_linear_model_is_input_minus_baseline_times_gradient():
    clf = fv.Classifier.wrap(LinearNet(classes=3, size=16).eval(), labels=list("abc"), input_size=16)
    x, base = torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16)
    maps = saliency(clf, x, [0, 2], method="deeplift", baseline=base, reduce="none")
    w = clf.net.fc.weight.detach().view(3, 3, 16, 16)[[0, 2]]
    expected = (x - base) * w / clf.std.view(1, 3, 1, 1)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)
    shap = saliency(clf, x, [0, 2], method="deeplift-shap", baselines=base, samples=1, reduce="none")
    torch.testing.assert_close(shap, expected, rtol=1e-5, atol=1e-7)


def test_deeplift_shap_is_seeded_and_a_batch_equals_singles(small):
    x = torch.rand(3, 3, 32, 32)
    kw = {"method": "deeplift-shap", "samples": 4}
    a = saliency(small, x, [0, 1, 2], seed=[1, 2, 3], batch_size=6, **kw)
    assert torch.equal(a, saliency(small, x, [0, 1, 2], seed=[1, 2, 3], batch_size=6, **kw))
    singles = torch.cat([saliency(small, x[i:i + 1], i, seed=1 + i, **kw) for i in range(3)])
    # Also: chunks of 3 pairs equal one call. Batched and single convolutions round differently in float32, and the
    # rescale rule's Δy/Δx magnifies that where Δx is barely above EPS: the tolerance is relative to the map's scale
    # (seen: 3.5e-6 here over 40 nets, 2.6e-5 on another CPU); a wrong chunking is off by O(1).
    torch.testing.assert_close(a, singles, rtol=0, atol=1e-4 * float(a.abs().max()))
    assert not torch.allclose(a[:1], saliency(small, x[:1], 0, seed=9, **kw), atol=1e-4)
    refs = torch.rand(6, 3, 32, 32)
    r = saliency(small, x, [0, 1, 2], baselines=refs, seed=5, **kw)
    assert torch.equal(r, saliency(small, x, [0, 1, 2], baselines=refs, seed=5, **kw))
    # With one reference repeated, every draw is that baseline: DeepLiftShap is DeepLIFT from it.
    same = saliency(small, x, [0, 1, 2], baselines=refs[:1].expand(3, -1, -1, -1), seed=5, **kw)
    torch.testing.assert_close(same, saliency(small, x, [0, 1, 2], method="deeplift", baseline=refs[:1]),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(fv.FeatvisError, match="needs at least 2"):
        saliency(small, x[:1], 0, method="deeplift-shap", baselines="batch")


def test_deeplift_warns_when_a_nonlinearity_is_functional():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    clf = fv.Classifier.wrap(Functional().eval(), labels=list("ab"), input_size=16)
    with pytest.warns(UserWarning, match="summation-to-delta"):
        saliency(clf, torch.rand(2, 3, 16, 16), [0, 1], method="deeplift")


@pytest.mark.slow
def test_deeplift_is_complete_on_the_embedded_model(clf, photos):
    """EfficientNet-Lite0 reuses each block's ReLU6 module; the fast copy (ReLU6 fused into its convolution) must
    not run, or the rule would not apply and the maps would miss the gap."""
    x = F.interpolate(torch.cat([photos["chelsea"], photos["coffee"]]), size=96, mode="bilinear",
                      antialias=True).clamp(0, 1)
    for method, options in (("deeplift", {"baseline": "blur"}), ("deeplift-shap", {"samples": 2})):
        maps, delta = saliency(clf, x, [281, 967], method=method, return_delta=True, **options)
        print(f"{method} on lite0: completeness error {delta.abs().max().item():.2e}")
        assert delta.abs().max() < 1e-3
    base = make_baseline(clf, x, "blur")
    maps = saliency(clf, x, [281, 967], method="deeplift", baseline="blur")
    torch.testing.assert_close(maps.flatten(1).sum(1), _scores(clf, x, [281, 967]) - _scores(clf, base, [281, 967]),
                               rtol=1e-4, atol=1e-3)
