import pytest
import torch
from torch import nn

import featvis as fv
from featvis.attribution import ATTRIBUTIONS, saliency

from _models import LinearNet, TinyConvNet
from _reference import finite_difference_saliency


@pytest.fixture(scope="module")
def captum():
    """Captum, for the tests that compare with it; the exact-answer tests run without it."""
    return pytest.importorskip("captum.attr")


@pytest.fixture(autouse=True)
def eager(clf):
    """Captum calls the model with trainable parameters, so it runs the user's network; compare like with like.
    The fast copy (BN folded, channels-last) is checked against the user's network in tests/models/test_fast.py."""
    clf.fast = False
    yield
    clf.fast = True


@pytest.fixture(scope="module")
def batch(photos):
    return torch.cat([photos["chelsea"], photos["coffee"]])


TARGETS = [281, 967]


def test_gradient_is_exact_on_a_linear_model():
    net = LinearNet(classes=3, size=16)
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abc"), input_size=16)
    x = torch.rand(2, 3, 16, 16)
    maps = saliency(clf, x, [2, 0])
    w = net.fc.weight.detach().view(3, 3, 16, 16)
    torch.testing.assert_close(maps, torch.stack([w[2].abs().amax(0), w[0].abs().amax(0)]))
    ixg = saliency(clf, x, 1, method="input-x-gradient")
    torch.testing.assert_close(ixg, (w[1] * x).sum(1))


def test_gradient_matches_finite_differences():
    net = TinyConvNet(classes=4).double().eval()
    clf = fv.Classifier.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, labels=list("abcd"), input_size=16).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    grads = saliency(clf, x, 2, reduce="none")
    pixels = [(0, 3, 4), (1, 8, 8), (2, 15, 0), (0, 0, 15), (1, 10, 3)]
    fd = finite_difference_saliency(lambda z: clf(z), x, 2, pixels)
    ours = torch.tensor([grads[0, c, i, j].item() for c, i, j in pixels], dtype=torch.float64)
    torch.testing.assert_close(ours, fd, rtol=1e-4, atol=1e-7)


def test_gradient_agrees_with_captum_saliency(clf, batch, captum):
    ref = captum.Saliency(clf).attribute(batch, target=TARGETS, abs=True).amax(1)
    torch.testing.assert_close(saliency(clf, batch, TARGETS), ref, rtol=1e-4, atol=1e-6)


def test_log_prob_score_matches_captum_on_log_softmax(clf, batch, captum):
    ref = captum.Saliency(lambda z: clf(z).log_softmax(-1)).attribute(batch, target=TARGETS, abs=False)
    ours = saliency(clf, batch, TARGETS, score="log-prob", reduce="none")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_input_x_gradient_agrees_with_captum(clf, batch, captum):
    ref = captum.InputXGradient(clf).attribute(batch, target=TARGETS)
    torch.testing.assert_close(saliency(clf, batch, TARGETS, method="input-x-gradient", reduce="none"), ref,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_integrated_gradients_agree_with_captum(clf, batch, captum):
    x = batch[:1]
    ref = captum.IntegratedGradients(clf).attribute(x, baselines=torch.zeros_like(x), target=281, n_steps=16,
                                                     method="gausslegendre")
    ours = saliency(clf, x, 281, method="integrated-gradients", steps=16, reduce="none")
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5)
    ref_t = captum.IntegratedGradients(clf).attribute(x, baselines=torch.zeros_like(x), target=281, n_steps=8,
                                                       method="riemann_trapezoid")
    ours_t = saliency(clf, x, 281, method="integrated-gradients", steps=8, rule="riemann-trapezoid", reduce="none")
    # Captum's trapezoid weights are 1/n (they sum to 1 - 1/n); the trapezoid rule on n points needs 1/(n - 1).
    torch.testing.assert_close(ours_t * 7 / 8, ref_t, rtol=1e-3, atol=5e-4)


@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
@pytest.mark.slow
def test_integrated_gradients_completeness_improves_with_steps(clf, photos):
    fn = ATTRIBUTIONS.get("integrated-gradients")
    x = photos["coffee"]
    errors = []
    for steps in (8, 32, 128):
        _, delta = fn(clf, x, 967, steps=steps, return_delta=True)
        errors.append(delta.abs().item())
    with torch.no_grad():
        gap = (clf(x)[0, 967] - clf(torch.zeros_like(x))[0, 967]).abs().item()
    assert errors[2] < errors[0]
    assert errors[2] / gap < 0.05, (errors, gap)  # the paper's 5 % rule, reached at 128 steps on Lite0


@pytest.mark.slow
def test_smoothgrad_agrees_with_captum_on_the_same_noise(clf, batch, captum):
    from featvis.attribution.smoothgrad import noisy_gradients

    x = batch[:1]
    # batch_size=1 as Captum runs each noisy copy alone (batched convolutions round differently)
    ours = saliency(clf, x, 281, method="smoothgrad", samples=6, seed=3, reduce="none", batch_size=1)
    # Regenerate the identical noisy inputs and let Captum take each gradient.
    gen = torch.Generator().manual_seed(3)
    span = x.max() - x.min()
    noisy = x[None] + torch.randn((6, *x.shape), generator=gen) * (0.15 * span)  # same rounding as ours
    ref = torch.stack([captum.Saliency(clf).attribute(n, target=281, abs=False) for n in noisy]).mean(0)
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-6)
    assert noisy_gradients  # the helper the method uses is public for reuse


@pytest.mark.slow
def test_smoothgrad_sigma_to_zero_is_the_gradient_and_seed_is_deterministic(clf, batch):
    g = saliency(clf, batch, TARGETS)
    s0 = saliency(clf, batch, TARGETS, method="smoothgrad", samples=2, noise=0.0)
    torch.testing.assert_close(s0, g, rtol=1e-4, atol=1e-6)
    a = saliency(clf, batch, TARGETS, method="vargrad", samples=3, seed=5)
    b = saliency(clf, batch, TARGETS, method="vargrad", samples=3, seed=5)
    assert torch.equal(a, b)


def test_gradcam_agrees_with_captum(clf, batch, captum):
    layer = clf.net._bn1
    ref = captum.LayerGradCam(clf, layer).attribute(batch, target=TARGETS, relu_attributions=True)
    ref = captum.LayerAttribution.interpolate(ref, (224, 224), interpolate_mode="bilinear")[:, 0]
    ours = saliency(clf, batch, TARGETS, method="gradcam")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


class _ReluNet(nn.Module):
    """Non-in-place ReLUs: the case Captum's GuidedBackprop (module backward hooks) supports."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.f(x)


def test_guided_backprop_agrees_with_captum(captum):
    clf = fv.Classifier.wrap(_ReluNet(), labels=list("abcd"), input_size=16)
    x = torch.rand(2, 3, 16, 16)
    ref = captum.GuidedBackprop(clf).attribute(x, target=[1, 3])
    torch.testing.assert_close(saliency(clf, x, [1, 3], method="guided-backprop", reduce="none"), ref)


def test_guided_backprop_on_real_model_matches_reference(clf, photos):
    """Lite0 uses ReLU6, which Captum's GuidedBackprop does not touch; compare with a hand-written copy."""
    import copy

    class _Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.clamp(x, 0, 6)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return torch.where((y > 0) & (y < 6) & (g > 0), g, torch.zeros_like(g))

    class GuidedReLU6(nn.Module):
        def forward(self, x):
            return _Guided.apply(x)

    ref_clf = copy.deepcopy(clf)
    for m in list(ref_clf.net.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(m, child_name, GuidedReLU6())
    x = photos["chelsea"].clone().requires_grad_(True)
    ref = torch.autograd.grad(ref_clf(x)[0, 281], x)[0]
    ours = saliency(clf, photos["chelsea"], 281, method="guided-backprop", reduce="none")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7)


def test_occlusion_agrees_with_captum(clf, photos, captum):
    x = torch.nn.functional.interpolate(photos["coffee"], size=64, mode="bilinear", antialias=True)
    base = clf.mean.expand_as(x)
    ref = captum.Occlusion(clf).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16),
                                          baselines=base, target=967, perturbations_per_eval=16)
    ours = saliency(clf, x, 967, method="occlusion", window=16, stride=16)
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gradient", "input-x-gradient", "guided-backprop", "gradcam", "gradcam++"])
def test_batch_equals_singles_and_chunking(clf, batch, name):
    together = saliency(clf, batch, TARGETS, method=name, batch_size=2)
    chunked = saliency(clf, batch, TARGETS, method=name, batch_size=1)
    singles = torch.cat([saliency(clf, batch[i:i + 1], TARGETS[i], method=name) for i in range(2)])
    # The network itself gives a batch of 2 and two batches of 1 other gradients in float32 where a ReLU6 input sits
    # within rounding of 0 or 6 (on AVX2, plain autograd: 0.17 % of the map's scale; on AVX-512: none). A map of the
    # wrong image, target or chunk is off by its own scale.
    for other in (chunked, singles):
        torch.testing.assert_close(together, other, rtol=0, atol=1e-2 * float(together.abs().max()))
        assert torch.corrcoef(torch.stack([together.flatten(), other.flatten()]))[0, 1] > 0.999


def test_targets_by_name_list_and_default(clf, batch):
    by_name = saliency(clf, batch, ["tabby", "espresso"])
    torch.testing.assert_close(by_name, saliency(clf, batch, TARGETS))
    with pytest.raises(fv.FeatvisError, match="target has 3 entries for 2 images"):
        saliency(clf, batch, [1, 2, 3])
    with pytest.raises(fv.FeatvisError, match="unknown attribution method 'gradiant'.*'gradient'"):
        saliency(clf, batch, None, method="gradiant")
