"""LIME and KernelSHAP on superpixels: exact answers on linear models, Captum on the same coalitions, seeds, SLIC."""

import math

import pytest
import torch

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.integrated import make_baseline
from featvis.attribution.superpixels import components, make_segments, rgb_to_lab, slic
from featvis.attribution.surrogate import draw_coalitions, lime_weights, surrogate_fit

from _models import LinearNet, TinyConvNet


@pytest.fixture(scope="module")
def linear():
    return fv.Classifier.wrap(LinearNet(classes=3, size=16).eval(), labels=list("abc"), input_size=16)


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)


def _exact_shapley(clf, x, targets, labels, baseline="mean"):
    """A linear score's Shapley values: per segment, Σ ∂f/∂x · (x − x₀) (each segment's effect is additive)."""
    xg = x.clone().requires_grad_(True)
    grads = torch.autograd.grad(clf(xg).gather(1, torch.tensor(targets)[:, None]).sum(), xg)[0]
    contrib = (grads * (x - make_baseline(clf, x, baseline))).sum(1).flatten(1).double()
    return torch.zeros(x.shape[0], int(labels.max()) + 1, dtype=torch.float64).scatter_add_(
        1, labels.flatten(1), contrib)


@pytest.mark.parametrize("segments", ["grid", "slic"])
def test_kernel_shap_equals_exact_shapley_values_on_a_linear_model(linear, segments):
    x = torch.rand(2, 3, 16, 16)
    fit = surrogate_fit(linear, x, [0, 2], kind="kernel-shap", segments=segments, cells=4, samples=64, seed=[1, 2])
    exact = _exact_shapley(linear, x, [0, 2], fit.labels)
    err = (fit.coefficients[:, :exact.shape[1]] - exact).abs().max().item()
    print(f"KernelSHAP ({segments}) vs exact Shapley: max |difference| = {err:.2e} (values up to "
          f"{exact.abs().max().item():.3g})")
    assert err < 1e-4 * exact.abs().max().item()
    maps = saliency(linear, x, [0, 2], method="kernel-shap", segments=segments, cells=4, samples=64, seed=[1, 2])
    torch.testing.assert_close(maps.double(), fit.map(), rtol=1e-6, atol=1e-6)  # painted on the segments


def test_lime_recovers_a_linear_models_segment_weights(linear):
    x = torch.rand(2, 3, 16, 16)
    exact = _exact_shapley(linear, x, [1, 0], make_segments(x, "grid", 4)[0], baseline="black")
    plain = surrogate_fit(linear, x, [1, 0], kind="lime", cells=4, samples=80, baseline="black", alpha=0, seed=5)
    assert (plain.coefficients - exact).abs().max() < 1e-4 * exact.abs().max()
    ridge = surrogate_fit(linear, x, [1, 0], kind="lime", cells=4, samples=80, baseline="black", seed=5)
    corr = torch.corrcoef(torch.stack([ridge.coefficients.flatten(), exact.flatten()]))[0, 1].item()
    shrink = (ridge.coefficients.norm() / exact.norm()).item()
    print(f"LIME ridge α=1 vs exact weights: Pearson {corr:.4f}, norm ratio {shrink:.3f}")
    assert corr > 0.99 and 0.8 < shrink < 1.0  # the ridge shrinks, it does not reorder


def test_kernel_shap_is_efficient_on_a_nonlinear_net(tiny):
    """Captum's 10⁶ weights on the full and empty coalitions pin Σφ to f(x) − f(x₀)."""
    x = torch.rand(2, 3, 32, 32)
    fit = surrogate_fit(tiny, x, [0, 3], kind="kernel-shap", cells=4, samples=48, seed=[7, 8])
    gap = fit.scores[:, 0] - fit.scores[:, 1]  # the full coalition's score minus the empty one's
    torch.testing.assert_close(fit.coefficients.sum(-1), gap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["kernel-shap", "lime"])
def test_equals_captum_on_the_same_coalitions(tiny, kind):
    pytest.importorskip("captum")
    from _captum_surrogate import captum_kernel_shap, captum_lime, segment_values  # a tests/ helper, beside _models

    x = torch.rand(1, 3, 32, 32)
    for segments, baseline in (("grid", "mean"), ("slic", "black")):
        fit = surrogate_fit(tiny, x, 2, kind=kind, segments=segments, cells=4, samples=40, baseline=baseline, seed=3)
        rows = fit.coalitions[0, :, :int(fit.counts[0])]
        explainer = captum_kernel_shap(tiny, rows) if kind == "kernel-shap" else captum_lime(tiny, rows, alpha=1.0)
        attr = explainer.attribute(x, baselines=make_baseline(tiny, x, baseline), target=2, n_samples=40,
                                   feature_mask=fit.labels[0][None, None], perturbations_per_eval=16)
        ref = segment_values(attr, fit.labels[0], rows.shape[1])
        err = (fit.coefficients[0, :rows.shape[1]] - ref).abs().max().item()
        print(f"{kind} ({segments}, {baseline}) vs Captum on the same coalitions: max |difference| = {err:.2e} "
              f"(values up to {ref.abs().max().item():.3g})")
        assert err < 1e-4 * max(ref.abs().max().item(), 1e-3)


def test_lime_kernel_from_segment_sums_equals_the_images_cosine(tiny):
    x = torch.rand(2, 3, 32, 32)
    labels, counts, width = make_segments(x, "grid", 4)
    fill = make_baseline(tiny, x, "blur")
    z = draw_coalitions("lime", [1, 2], 2, 6, counts, width)
    keep = z.float().gather(2, labels.view(2, 1, -1).expand(-1, 6, -1)).view(2, 6, 1, 32, 32)
    perturbed = x[:, None] * keep + fill[:, None] * (1 - keep)
    cos = torch.nn.functional.cosine_similarity(perturbed.flatten(2), x.flatten(1)[:, None], dim=-1)
    torch.testing.assert_close(lime_weights(x, fill, labels, counts, z, "image", 1.0).float(),
                               torch.exp(-(1 - cos) ** 2 / 2), rtol=1e-5, atol=1e-6)
    on = z.sum(-1)  # lime_image: cosine distance of z to all ones, 1 − √(|z| / M)
    torch.testing.assert_close(lime_weights(x, fill, labels, counts, z, "segments", 0.25),
                               torch.exp(-(1 - (on / 16).sqrt()) ** 2 / (2 * 0.25 ** 2)))


def test_kernel_shap_coalition_sizes_follow_the_shapley_kernel():
    m = 8
    z = draw_coalitions("kernel-shap", 0, 1, 20000, torch.tensor([m]), m)[0]
    assert z[0].sum() == m and z[1].sum() == 0
    sizes = z[2:].sum(-1).long()
    freq = torch.bincount(sizes, minlength=m + 1).double() / sizes.numel()
    k = torch.arange(1, m, dtype=torch.float64)
    p = 1 / (k * (m - k))
    assert freq[0] == 0 and freq[m] == 0
    assert (freq[1:m] - p / p.sum()).abs().max() < 0.01
    # which segments: every segment equally often within a size
    assert (z[2:].mean(0) - 0.5).abs().max() < 0.02


def test_seeded_batch_equals_singles_and_chunking(tiny):
    x = torch.rand(3, 3, 32, 32)
    for name in ("lime", "kernel-shap"):
        kw = {"method": name, "cells": 4, "samples": 24, "segments": "slic"}
        a = saliency(tiny, x, [0, 1, 2], seed=[4, 5, 6], batch_size=16, **kw)
        b = saliency(tiny, x, [0, 1, 2], seed=[4, 5, 6], batch_size=5, **kw)
        singles = torch.cat([saliency(tiny, x[i:i + 1], i, seed=4 + i, **kw) for i in range(3)])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, singles, rtol=1e-4, atol=1e-5)
        assert torch.equal(a, saliency(tiny, x, [0, 1, 2], seed=[4, 5, 6], batch_size=16, **kw))
        assert not torch.allclose(a[0], saliency(tiny, x[:1], 0, seed=5, **kw)[0])


def test_slic_superpixels_are_connected_cover_the_image_and_follow_edges():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 3, 48, 64)
    x[0, 0, :, :27], x[0, 2, :, 27:] = 0.9, 0.9  # red | blue, the edge off the grid lines
    x[1] = torch.rand(3, 48, 64, generator=g) * 0.2 + torch.linspace(0, 0.8, 64)  # a noisy ramp
    labels, counts, width = make_segments(x, "slic", 4)
    assert width == 15 and (counts >= 12).all() and (counts <= width).all()  # a 3 × 5 grid of about 16
    for i in range(2):
        lab = labels[i].numpy()
        assert set(lab.flatten().tolist()) == set(range(int(counts[i])))  # every pixel, every label used
        pieces = [ndimage.label(lab == s)[1] for s in range(int(counts[i]))]
        assert pieces == [1] * int(counts[i])  # each superpixel one 4-connected piece
    left, right = labels[0][:, :27], labels[0][:, 27:]
    straddling = set(left.unique().tolist()) & set(right.unique().tolist())
    assert not straddling  # no superpixel crosses the colour edge
    # a rough image: the components agree with scipy's labelling
    rough = slic(torch.rand(1, 3, 40, 40, generator=g), 9, compactness=1.0)
    raw = torch.randint(0, 3, (1, 30, 30), generator=g)
    comp = components(raw)[0]
    n_ref = sum(ndimage.label(raw[0].numpy() == v)[1] for v in range(3))
    assert comp.unique().numel() == n_ref and rough.unique().numel() <= 9


def test_lab_conversion_matches_known_values():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    lab = rgb_to_lab(rgb)[:, :, 0, 0]
    ref = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [0.0, 0.0, 0.0]])  # CIE L*a*b* of sRGB (D65)
    torch.testing.assert_close(lab, ref, atol=0.05, rtol=0)


def test_options_and_errors(tiny):
    x = torch.rand(1, 3, 32, 32)
    labels = (torch.arange(32)[:, None] // 16 * 2 + torch.arange(32)[None, :] // 16) * 5  # 4 quadrants, sparse ids
    fit = surrogate_fit(tiny, x, 1, kind="kernel-shap", segments=labels, samples=16)
    assert int(fit.counts[0]) == 4 and fit.coefficients.shape == (1, 4)
    assert math.isclose(float(fit.coefficients.sum()), float(fit.scores[0, 0] - fit.scores[0, 1]), rel_tol=1e-4)
    with pytest.raises(fv.FeatvisError, match="unknown segments 'quickshift'"):
        saliency(tiny, x, 0, method="lime", segments="quickshift")
    with pytest.raises(fv.FeatvisError, match="samples >= 2"):
        saliency(tiny, x, 0, method="kernel-shap", samples=1)
    with pytest.raises(fv.FeatvisError, match="labels"):
        saliency(tiny, x, 0, method="lime", segments=torch.zeros(5, 5, dtype=torch.long))
