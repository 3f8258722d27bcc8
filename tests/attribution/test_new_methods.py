"""RISE, Expected Gradients, Score-CAM and LayerCAM: cross-checked against torch-cam, Captum and slow references."""

import pytest
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.expected import expected_gradients_from
from featvis.attribution.rise import make_masks, mask_draws

from _models import TinyConvNet
from _reference import bilinear_upsample_reference


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def small(photos):
    """Two photos at 64 px: the real model, at a size the CPU affords for many-forward methods."""
    x = torch.cat([photos["chelsea"], photos["coffee"]])
    return F.interpolate(x, size=64, mode="bilinear", antialias=True).clamp(0, 1)


# --- RISE ---------------------------------------------------------------------------------------------------------

def test_rise_masks_follow_the_paper_construction():
    draws = mask_draws(3, 1, 5, 7)[0]
    masks = make_masks(draws, 7, 0.5, (50, 50))
    cell = 8  # ceil(50 / 7)
    for i in range(5):
        grid = (draws[i, :49] < 0.5).double().view(7, 7)
        up = bilinear_upsample_reference(grid, (8 * cell, 8 * cell))
        dy, dx = int(draws[i, 49] * cell), int(draws[i, 50] * cell)
        ref = up[dy:dy + 50, dx:dx + 50]
        err = (masks[i].double() - ref).abs().max().item()
        print(f"RISE mask {i}: max |ours − float64 reference| = {err:.2e}")
        assert err < 1e-6
    assert masks.min() >= 0 and masks.max() <= 1


def test_rise_equals_a_mask_by_mask_float64_reference(tiny):
    x = torch.rand(2, 3, 32, 32)
    ours = saliency(tiny, x, [1, 3], method="rise", masks=24, cells=4, keep=0.4, seed=7, batch_size=10)
    masks = make_masks(mask_draws(7, 2, 24, 4)[0], 4, 0.4, (32, 32)).double()
    net = tiny.double()
    try:
        ref = torch.zeros(2, 32, 32, dtype=torch.float64)
        mean = tiny.mean.double().view(1, 3, 1, 1)
        for m in masks:  # one mask at a time, the paper's sum
            xm = x.double() * m + mean * (1 - m)
            p = net(xm).softmax(-1)[[0, 1], [1, 3]]
            ref += p.view(2, 1, 1) * m
        ref /= 24 * 0.4
    finally:
        tiny.float()
    err = (ours.double() - ref).abs().max().item()
    print(f"RISE vs float64 reference: max |difference| = {err:.2e}")
    assert err < 1e-5


def test_rise_is_seeded_and_a_batch_equals_singles_with_per_image_seeds(tiny):
    x = torch.rand(3, 3, 32, 32)
    a = saliency(tiny, x, [0, 1, 2], method="rise", masks=20, seed=[4, 5, 6], batch_size=16)
    b = saliency(tiny, x, [0, 1, 2], method="rise", masks=20, seed=[4, 5, 6], batch_size=7)
    singles = torch.cat([saliency(tiny, x[i:i + 1], i, method="rise", masks=20, seed=4 + i) for i in range(3)])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, singles, rtol=1e-5, atol=1e-6)
    assert torch.equal(a, saliency(tiny, x, [0, 1, 2], method="rise", masks=20, seed=[4, 5, 6], batch_size=16))
    assert not torch.equal(a[0], saliency(tiny, x[:1], 0, method="rise", masks=20, seed=5)[0])


# --- Expected Gradients -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_expected_gradients_match_captum_on_the_same_draws(clf, small):
    """Captum's InputBaselineXGradient (the inner estimator of GradientShap) draws α with numpy; replay its draws."""
    import numpy as np
    InputBaselineXGradient = pytest.importorskip("captum.attr._core.gradient_shap").InputBaselineXGradient

    x, refs = small[:1], torch.rand(3, 3, 64, 64)
    which = torch.tensor([[2], [0], [1], [2]])  # [S, B]
    np.random.seed(11)
    alphas = torch.tensor(np.random.uniform(0.0, 1.0, 4)).view(4, 1)
    np.random.seed(11)
    per_sample = InputBaselineXGradient(clf).attribute(x.expand(4, -1, -1, -1), baselines=refs[which[:, 0]],
                                                       target=281)
    ref = per_sample.mean(0, keepdim=True)
    ours = expected_gradients_from(clf, x, torch.tensor([281]), refs, which, alphas)
    err = (ours - ref).abs() / ref.abs().max()
    r = torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1].item()
    print(f"Expected Gradients vs Captum GradientShap estimator: max |difference| / max |map| = {err.max():.2e}, "
          f"r = {r:.8f}")
    # The same estimator on the same draws; float32 on a ReLU6 net: where a batch's rounding moves a path point across
    # a kink (0 or 6), gradients downstream of it differ (seen over 12 draws: typically 1e-6 of the map's scale, at
    # worst 0.8 %, r ≥ 0.99998). A wrong α, reference or sign changes the map by tens of percent.
    assert r > 0.9999 and float(err.max()) < 0.02


def test_expected_gradients_seeds_references_and_batches(tiny):
    x, refs = torch.rand(3, 3, 32, 32), torch.rand(4, 3, 32, 32)
    kw = {"method": "expected-gradients", "samples": 6, "references": refs}
    a = saliency(tiny, x, [0, 1, 2], seed=[1, 2, 3], **kw)
    singles = torch.cat([saliency(tiny, x[i:i + 1], i, seed=1 + i, **kw) for i in range(3)])
    torch.testing.assert_close(a, singles, rtol=1e-5, atol=1e-6)
    assert torch.equal(a, saliency(tiny, x, [0, 1, 2], seed=[1, 2, 3], **kw))
    # With one reference image and many samples the estimator approaches IG from that baseline.
    eg = saliency(tiny, x[:1], 1, method="expected-gradients", samples=400, references=refs[:1])
    ig = saliency(tiny, x[:1], 1, method="integrated-gradients", baseline=refs[:1], steps=64)
    assert torch.nn.functional.cosine_similarity(eg.flatten(), ig.flatten(), dim=0) > 0.95
    with pytest.raises(fv.FeatvisError, match="needs reference images"):
        saliency(tiny, x[:1], 0, method="expected-gradients")


def test_expected_gradients_without_references_use_the_other_images(tiny):
    x = torch.rand(2, 3, 32, 32)
    x[1] = x[0]  # the only other image equals the image: every (x − x′) is zero
    eg = saliency(tiny, x, [0, 1], method="expected-gradients", samples=4)
    assert eg.abs().max() == 0


# --- Score-CAM and LayerCAM against torch-cam -------------------------------------------------------------------

class _Normalized(torch.nn.Module):
    """clf.net on normalized input, so torch-cam's `input × mask` fills with the mean colour as featvis does."""

    def __init__(self, clf):
        super().__init__()
        self.net = clf.net

    def forward(self, z):
        return self.net(z)


def test_layercam_agrees_with_torchcam(clf, photos):
    methods = pytest.importorskip("torchcam.methods")
    x = torch.cat([photos["chelsea"], photos["coffee"]])
    z = clf.normalize(x)
    model = _Normalized(clf)
    with methods.LayerCAM(model, "net._bn1", input_shape=(3, 224, 224)) as extractor:
        out = model(z)
        ref = extractor([281, 967], out, normalized=False)[0]
    ref = F.interpolate(ref[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    ours = saliency(clf, x, [281, 967], method="layercam", layer="_bn1")
    err = (ours - ref).abs().max().item()
    print(f"LayerCAM vs torch-cam: max |difference| = {err:.2e} (map max {ref.max().item():.3g})")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_scorecam_agrees_with_torchcam(clf, small):
    methods = pytest.importorskip("torchcam.methods")
    z = clf.normalize(small)
    model = _Normalized(clf)
    with methods.ScoreCAM(model, "net._blocks.15", batch_size=64, input_shape=(3, 64, 64)) as extractor:
        with torch.no_grad():
            model(z)
        ref = extractor([281, 967], normalized=False)[0]
    ref = F.interpolate(ref[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    ours = saliency(clf, small, [281, 967], method="scorecam", layer="_blocks.15", batch_size=64)
    err = (ours - ref).abs().max().item()
    print(f"Score-CAM vs torch-cam: max |difference| = {err:.2e} (map max {ref.max().item():.3g})")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_scorecam_and_layercam_batch_equals_singles(tiny):
    x = torch.rand(2, 3, 32, 32)
    for name in ("scorecam", "layercam"):
        together = saliency(tiny, x, [1, 2], method=name, batch_size=5)
        singles = torch.cat([saliency(tiny, x[i:i + 1], [1, 2][i], method=name) for i in range(2)])
        torch.testing.assert_close(together, singles, rtol=1e-4, atol=1e-5)
