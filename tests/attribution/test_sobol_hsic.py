"""Sobol attribution (Fel et al. 2021) and HSIC attribution (Novello et al. 2022): exact answers on analytic models
over the mask cells, the estimators against their textbook formulas, the designs, seeds and batching."""

import pytest
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.hsic import hsic_cells, hsic_design, hsic_scores
from featvis.attribution.sobol import jansen_total_order, sobol_cells, sobol_design, to_image

from _models import TinyConvNet


class CellModel(torch.nn.Module):
    """Logits (f(m), −f(m)) of the cell means m [B, s²] of channel 0: on a white image with a black baseline the
    model sees exactly the mask values, so the method's indices are those of f over the cells."""

    def __init__(self, cells: int, f):
        super().__init__()
        self.cells, self.f = cells, f

    def forward(self, x):
        y = self.f(F.adaptive_avg_pool2d(x[:, :1], self.cells).flatten(1))
        return torch.stack([y, -y], 1)


def _cell_clf(cells, f, side=8):
    return fv.Classifier.wrap(CellModel(cells, f), mean=(0, 0, 0), std=(1, 1, 1), labels=["f", "-f"],
                              input_size=side)


G_A = torch.tensor([0.0, 1.0, 4.5, 9.0])  # Sobol's G-function coefficients (Saltelli et al., "The Primer", 4.2)


def _g_function(m):
    return (((4 * m - 2).abs() + G_A) / (1 + G_A)).prod(1)


def _g_total_order():
    v = 1 / (3 * (1 + G_A) ** 2)  # partial variances Vᵢ of the G-function
    return (v * (1 + v).prod() / (1 + v) / ((1 + v).prod() - 1)).double()


# --- Sobol --------------------------------------------------------------------------------------------------------

def test_sobol_design_is_a_b_and_the_c_matrices():
    design = sobol_design(3, 16, seed=5)  # d = 9: A [16, 9], B [16, 9], then C₁ … C₉
    assert design.shape == (16 * (9 + 2), 9) and design.min() >= 0 and design.max() < 1
    a, b, c = design[:16], design[16:32], design[32:].view(9, 16, 9)
    for i in range(9):
        expected = a.clone()
        expected[:, i] = b[:, i]
        assert torch.equal(c[i], expected)
    assert torch.equal(design, sobol_design(3, 16, seed=5))
    assert not torch.equal(design, sobol_design(3, 16, seed=6))  # scrambled: seeds give different designs
    # A QMC design: each column of A is stratified, one point per 1/16 (a (0, m, s)-net property of Sobol points).
    assert all(torch.equal((a[:, j] * 16).floor().sort().values, torch.arange(16.0)) for j in range(9))


def test_jansen_matches_the_closed_form_on_an_additive_function():
    """f = Σ cᵢ mᵢ with mᵢ ~ U(0, 1): Sᵀᵢ = cᵢ² / Σ cⱼ² (no interactions)."""
    coef = torch.tensor([3.0, -2.0, 1.0, 0.5])
    design = sobol_design(2, 512, seed=0).double()
    st = jansen_total_order((design @ coef.double())[None], 512)[0]
    exact = coef.double() ** 2 / coef.double().pow(2).sum()
    print(f"Jansen on Σ cᵢmᵢ: {st.tolist()} vs exact {exact.tolist()}")
    torch.testing.assert_close(st, exact, atol=0.01, rtol=0)


def test_sobol_total_order_indices_of_the_g_function_through_the_model():
    """The whole method (masks, perturbation, model calls, estimator) on Sobol's G-function over four cells: the
    closed-form Sᵀ = (0.787, 0.242, 0.034, 0.010) within QMC error at N = 1024, for three seeds."""
    clf = _cell_clf(2, _g_function)
    x, exact = torch.ones(1, 3, 8, 8), _g_total_order()
    for seed in (0, 1, 2):
        st = sobol_cells(clf, x, 0, cells=2, designs=1024, seed=seed, baseline="black", batch_size=2048)[0]
        err = (st - exact).abs().max().item()
        print(f"G-function seed {seed}: Sᵀ {[round(v, 4) for v in st.tolist()]} exact "
              f"{[round(v, 4) for v in exact.tolist()]}, max |err| {err:.4f}")
        assert err < 0.02
        assert st.argsort(descending=True).tolist() == [0, 1, 2, 3]


def test_sobol_map_is_the_upsampled_cells_seeded_and_batch_equals_singles():
    clf = fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)
    x = torch.rand(3, 3, 32, 32)
    kw = {"cells": 4, "designs": 8}
    maps = saliency(clf, x, [0, 1, 2], method="sobol", seed=[4, 5, 6], batch_size=50, **kw)
    cells = sobol_cells(clf, x, [0, 1, 2], seed=[4, 5, 6], **kw)
    torch.testing.assert_close(maps, to_image(cells, 4, (32, 32), torch.float32))
    other_chunks = saliency(clf, x, [0, 1, 2], method="sobol", seed=[4, 5, 6], batch_size=7, **kw)
    singles = torch.cat([saliency(clf, x[i:i + 1], i, method="sobol", seed=4 + i, **kw) for i in range(3)])
    torch.testing.assert_close(maps, other_chunks, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps, singles, rtol=1e-5, atol=1e-6)
    assert torch.equal(maps, saliency(clf, x, [0, 1, 2], method="sobol", seed=[4, 5, 6], batch_size=50, **kw))
    assert not torch.equal(maps[0], saliency(clf, x[:1], 0, method="sobol", seed=5, **kw)[0])
    assert maps.shape == (3, 32, 32) and cells.min() >= 0
    with pytest.raises(fv.FeatvisError, match="power of two"):
        saliency(clf, x[:1], 0, method="sobol", designs=12)


# --- HSIC ---------------------------------------------------------------------------------------------------------

def test_hsic_designs_are_binary_and_the_latin_hypercube_is_balanced():
    for sampler in ("sobol", "latin-hypercube"):
        masks = hsic_design(4, 64, seed=1, sampler=sampler)
        assert masks.shape == (64, 16) and set(masks.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(masks, hsic_design(4, 64, seed=1, sampler=sampler))
        assert not torch.equal(masks, hsic_design(4, 64, seed=2, sampler=sampler))
    lhs = hsic_design(4, 64, seed=1, sampler="latin-hypercube")
    assert lhs.sum(0).tolist() == [32.0] * 16  # one point per stratum: exactly half the masks keep each cell
    with pytest.raises(fv.FeatvisError, match="unknown hsic sampler"):
        hsic_design(4, 8, 0, sampler="halton")


def test_hsic_equals_the_trace_formula_with_explicit_gram_matrices():
    """HSICᵢ = tr(Kᵢ H L H) / (N − 1)² (Gretton et al. 2005) with Xplique's kernels, built matrix by matrix."""
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 40, 5, generator=gen) > 0.5).double()
    y = torch.randn(2, 40, generator=gen, dtype=torch.float64) + 3
    ours = hsic_scores(masks, y)
    n = 40
    h = torch.eye(n, dtype=torch.float64) - 1 / n
    for b in range(2):
        middle = y[b].sort().values[n // 2 - 1:n // 2 + 1]  # n even: Xplique's linear percentile 50
        sigma = middle.mean()
        gram_l = torch.exp(-(y[b][:, None] - y[b][None]) ** 2 / (2 * sigma**2))
        for i in range(5):
            xi = masks[b, :, i]
            gram_k = 1.5 - (xi[:, None] - xi[None]) ** 2  # Xplique: 1 + binary kernel (0.5 − (x − x′)²)
            ref = torch.trace(gram_k @ h @ gram_l @ h) / (n - 1) ** 2
            torch.testing.assert_close(ours[b, i], ref, rtol=1e-10, atol=1e-14)


def test_hsic_ranks_the_cell_that_drives_the_model_first():
    """The score depends on cell 5 strongly, on cell 10 half as much, on nothing else: HSIC puts 5 first, 10 second,
    and the other 14 cells below half of cell 10; the map peaks inside cell 5."""
    clf = _cell_clf(4, lambda m: 4 * m[:, 5] + 2 * m[:, 10] + 2, side=16)
    x = torch.ones(1, 3, 16, 16)
    for sampler in ("sobol", "latin-hypercube"):
        dep = hsic_cells(clf, x, 0, cells=4, designs=128, sampler=sampler, seed=3)[0]
        order = dep.argsort(descending=True).tolist()
        rest = dep[[i for i in range(16) if i not in (5, 10)]].abs().max()
        print(f"HSIC ({sampler}): cell 5 {dep[5]:.4f}, cell 10 {dep[10]:.4f}, max of the rest {rest:.4f}")
        assert order[:2] == [5, 10] and dep[5] > 2 * dep[10] and rest < 0.5 * dep[10]
    sal = saliency(clf, x, 0, method="hsic", cells=4, designs=128, seed=3)[0]
    row, col = divmod(int(sal.argmax()), 16)
    assert (row // 4, col // 4) == (1, 1)  # cell 5 of a 4 × 4 grid


def test_hsic_is_seeded_and_batch_equals_singles():
    clf = fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)
    x = torch.rand(2, 3, 32, 32)
    kw = {"cells": 4, "designs": 24}
    maps = saliency(clf, x, [1, 3], method="hsic", seed=[7, 8], batch_size=10, **kw)
    singles = torch.cat([saliency(clf, x[i:i + 1], [1, 3][i], method="hsic", seed=7 + i, **kw) for i in range(2)])
    torch.testing.assert_close(maps, singles, rtol=1e-5, atol=1e-7)
    assert torch.equal(maps, saliency(clf, x, [1, 3], method="hsic", seed=[7, 8], batch_size=10, **kw))
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
