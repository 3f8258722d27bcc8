"""ROAD, max-sensitivity, infidelity, sparseness, randomization summaries, batched curves and the leaderboard."""

import math

import pytest
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.attribution import metrics, saliency
from featvis.attribution.complexity import entropy, gini
from featvis.attribution.evaluation import evaluate_batch
from featvis.attribution.leaderboard import RANDOM, bootstrap_interval, summarize
from featvis.attribution.metric import METRICS
from featvis.attribution.road import linear_impute, removal_masks, road
from featvis.attribution.robust_metrics import (
    infidelity,
    max_sensitivity,
    sensitivity_perturbations,
    square_perturbations,
)
from featvis.attribution.sanity import efficient_mprt, randomization_similarity

from _models import TinyConvNet
from _reference import road_impute_reference


@pytest.fixture(scope="module")
def captum_metrics():
    """Captum's metrics, for the tests that compare with them; the rest run without Captum."""
    return pytest.importorskip("captum.metrics")


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def small(photos):
    x = torch.cat([photos["chelsea"], photos["coffee"]])
    return F.interpolate(x, size=64, mode="bilinear", antialias=True).clamp(0, 1)


# --- ROAD ------------------------------------------------------------------------------------------------------

def test_road_imputation_is_exact_on_linear_and_constant_images():
    """Away from the border the 8-neighbour stencil is symmetric, so any affine image is its own imputation."""
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), indexing="ij")
    ramp = torch.stack([0.01 * yy + 0.02 * xx, 0.5 + 0 * yy, 0.03 * yy - 0.01 * xx + 0.4])[None].double()
    keep = torch.ones(1, 1, 20, 24, dtype=torch.bool)
    keep[0, 0, 5, 7] = False  # one pixel
    keep[0, 0, 9:15, 10:20] = False  # a block
    out = linear_impute(ramp, keep, tol=1e-12, max_iter=5000)
    err = (out - ramp).abs().max().item()
    print(f"ROAD imputation of an affine image: max error {err:.1e}")
    assert err < 1e-6


def test_road_imputation_matches_the_reference_linear_system():
    torch.manual_seed(0)
    img = torch.rand(3, 3, 18, 22, dtype=torch.float64)
    keep = torch.rand(3, 1, 18, 22) > 0.6
    keep[1, 0, :, :15] = False  # a hole touching three borders
    keep[2, 0] = True
    keep[2, 0, 0, 0] = False  # a corner pixel alone
    ref = torch.stack([road_impute_reference(img[i], keep[i, 0]) for i in range(3)])
    tight = linear_impute(img, keep, tol=1e-12, max_iter=5000)
    default32 = linear_impute(img.float(), keep)
    e64, e32 = (tight - ref).abs().max().item(), (default32.double() - ref).abs().max().item()
    print(f"ROAD imputation vs float64 dense reference: max |difference| {e64:.1e} (tight), {e32:.1e} (float32, "
          "default tolerance)")
    assert e64 < 1e-6 and e32 < 5e-3


def test_road_curves_are_the_probabilities_of_the_imputed_images(tiny):
    x = torch.rand(2, 3, 32, 32)
    maps = torch.rand(2, 32, 32)
    res = road(tiny, x, maps, fractions=(0.25, 0.75), noise=0.0, batch_size=3)
    morf, lerf = removal_masks(maps, (0.25, 0.75))
    assert morf[:, 0].logical_not().sum().item() == 2 * 256 and lerf[:, 1].logical_not().sum().item() == 2 * 768
    assert not (~morf[:, 0] & ~lerf[:, 0]).any()  # at 25 % the two orders remove disjoint pixels
    with torch.no_grad():
        cls = tiny(x).argmax(-1)
        direct = tiny(linear_impute(x, lerf[:, 1])).softmax(-1)[[0, 1], cls]
    torch.testing.assert_close(res.lerf[:, 1], direct, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.gap, res.lerf.mean(1) - res.morf.mean(1))
    noisy = road(tiny, x, maps, fractions=(0.5,), seed=[3, 4])
    single = road(tiny, x[1:], maps[1:], fractions=(0.5,), seed=[4])
    torch.testing.assert_close(noisy.morf[1:], single.morf, rtol=1e-4, atol=1e-6)


# --- sparseness -------------------------------------------------------------------------------------------------

def test_gini_on_known_vectors():
    n = 100
    one_hot = torch.zeros(1, 10, 10)
    one_hot[0, 3, 4] = -5.0  # |map| is what counts
    half = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).view(1, 2, 2)
    ramp = torch.arange(1.0, 5.0).view(1, 2, 2)  # Gini of 1..4 = 0.25
    got = torch.cat([gini(torch.ones(1, 10, 10)), gini(one_hot), gini(half), gini(ramp), gini(torch.zeros(1, 2, 2))])
    torch.testing.assert_close(got, torch.tensor([0.0, (n - 1) / n, 0.5, 0.25, 0.0]))
    assert entropy(torch.ones(1, 4, 4)).item() == 0 and entropy(torch.rand(1, 64, 64)).item() > 4


# --- robustness metrics against Captum ---------------------------------------------------------------------------

@pytest.mark.slow
def test_max_sensitivity_matches_captum(clf, small, captum_metrics):
    targets = torch.tensor([281, 967])
    maps = saliency(clf, small, targets)
    ours = max_sensitivity(clf, small, maps, targets, "gradient", radius=0.03, samples=3, seed=[5, 6])
    perturbed = sensitivity_perturbations(small, radius=0.03, samples=3, seed=[5, 6]).flatten(0, 1)

    def explain(inputs, target):  # Captum calls it under no_grad (featvis's input_gradients needs grad mode), and
        with torch.enable_grad():  # with a tuple for the unperturbed inputs, expecting a tuple back
            if isinstance(inputs, tuple):
                return (saliency(clf, inputs[0], target),)
            return saliency(clf, inputs, target)

    ref = captum_metrics.sensitivity_max(explain, small, perturb_func=lambda inp, radius: perturbed,
                                         perturb_radius=0.03, n_perturb_samples=3, target=targets)
    err = (ours - ref).abs().max().item()
    print(f"max-sensitivity vs captum.metrics.sensitivity_max: max |difference| = {err:.2e} (values {ref.tolist()})")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_max_sensitivity_of_a_randomized_method_keeps_its_own_draws(tiny):
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 1])
    maps = saliency(tiny, x, t, method="smoothgrad", samples=4, seed=9)
    zero = max_sensitivity(tiny, x, maps, t, "smoothgrad", options={"samples": 4, "seed": 9}, radius=0.0, samples=2)
    assert zero.abs().max() == 0  # no input change, same noise: no change in the map


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_matches_captum(clf, small, normalize, captum_metrics):
    targets = torch.tensor([281, 967])
    maps = saliency(clf, small, targets, method="gradcam")
    ours = infidelity(clf, small, maps, targets, samples=4, normalize=normalize, seed=[1, 2])
    pert, perturbed = square_perturbations(clf, small, samples=4, square=1 / 7, seed=[1, 2])

    def perturb(inputs):
        return pert.flatten(0, 1), perturbed.flatten(0, 1)

    ref = captum_metrics.infidelity(clf, perturb, small, maps[:, None].expand(-1, 3, -1, -1), target=targets, n_perturb_samples=4,
                                    max_examples_per_batch=8, normalize=normalize)
    err = ((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
    print(f"infidelity (normalize={normalize}) vs captum.metrics.infidelity: max relative difference {err:.2e}")
    torch.testing.assert_close(ours, ref.to(ours), rtol=1e-4, atol=1e-6)


def test_square_perturbations_remove_one_square_each(clf):
    x = torch.rand(2, 3, 35, 35)
    pert, perturbed = square_perturbations(clf, x, samples=3, square=1 / 7, seed=0)
    removed = (pert != 0).any(2)  # [B, n, H, W]
    assert (removed.flatten(2).sum(2) <= 25).all() and (removed.flatten(2).sum(2) >= 20).all()
    torch.testing.assert_close(perturbed, x[:, None] - pert)


# --- randomization summaries ------------------------------------------------------------------------------------

def test_randomization_summaries(tiny):
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 1])
    maps = saliency(tiny, x, t)
    sim = randomization_similarity(tiny, x, maps, t, "gradient", depth=1.0)
    assert sim.shape == (2,) and (sim.abs() <= 1).all() and (sim < 0.9).all()

    def constant(clf, images, target=None, **_):  # a map that ignores the model
        return images.mean(1)

    same = constant(tiny, x)
    torch.testing.assert_close(randomization_similarity(tiny, x, same, t, constant), torch.ones(2))
    torch.testing.assert_close(efficient_mprt(tiny, x, same, t, constant), torch.ones(2))


# --- batched deletion / insertion ---------------------------------------------------------------------------------

def test_curves_batched_across_images_equal_one_image_at_a_time(tiny):
    x = torch.rand(3, 3, 32, 32)
    maps = torch.rand(3, 32, 32)
    together = metrics.deletion(tiny, x, maps, pixels_per_step=64, batch_size=7)
    singles = [metrics.deletion(tiny, x[i:i + 1], maps[i:i + 1], pixels_per_step=64, batch_size=1) for i in range(3)]
    torch.testing.assert_close(together.probs, torch.cat([s.probs for s in singles]), rtol=1e-5, atol=1e-6)
    ins = metrics.insertion(tiny, x, maps, pixels_per_step=64, targets=torch.tensor([3, 3, 3]))
    with torch.no_grad():
        end = tiny(x).softmax(-1)[:, 3]
    torch.testing.assert_close(ins.probs[:, -1], end)


# --- leaderboard --------------------------------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_true_mean():
    gen = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(200):
        values = torch.randn(30, generator=gen) + 2.0
        low, high = bootstrap_interval(values, resamples=500, generator=gen)
        covered += low <= 2.0 <= high
    print(f"bootstrap 95 % interval coverage on N(2, 1), n = 30: {covered / 200:.3f}")
    assert 0.88 <= covered / 200 <= 0.99  # nominal 0.95; the percentile bootstrap runs a little narrow at n = 30


def _records(values: dict[str, list[float]], metric: str = "insertion") -> list[dict]:
    n = len(next(iter(values.values())))
    return [{"index": i, "target": 0, "scores": {m: {metric: v[i]} for m, v in values.items()}, "seconds": {},
             "curves": {}} for i in range(n)]


def test_summarize_flags_who_beats_random():
    gen = torch.Generator().manual_seed(1)
    rand = torch.rand(40, generator=gen)
    recs = _records({RANDOM: rand.tolist(), "good": (rand + 0.2 + 0.05 * torch.randn(40, generator=gen)).tolist(),
                     "same": (rand + 0.01 * torch.randn(40, generator=gen)).tolist(), "bad": (rand - 0.2).tolist()})
    board = summarize(recs, seed=0, resamples=1000)
    assert board.get("good", "insertion").beats_random is True
    assert board.get("same", "insertion").beats_random is False
    assert board.get("bad", "insertion").beats_random is False
    assert board.get(RANDOM, "insertion").beats_random is None
    assert set(board.not_beating_random()) == {("same", "insertion"), ("bad", "insertion")}
    lower = summarize(_records({RANDOM: rand.tolist(), "bad": (rand - 0.2).tolist()}, "deletion"), resamples=500)
    assert lower.get("bad", "deletion").beats_random is True  # deletion: lower is better
    e = board.get("good", "insertion")
    assert e.low < e.mean < e.high and e.n == 40
    assert summarize(recs, seed=0, resamples=1000) == board  # seeded
    d = board.to_dict()
    assert d["metrics"]["insertion"]["direction"] == "↑" and len(d["entries"]) == 4


def test_evaluate_batch_records(tiny):
    x = torch.rand(2, 3, 32, 32)
    recs = evaluate_batch(tiny, x, [0, 1], ["gradient", "rise"], ["deletion", "insertion", "road-gap", "sparseness",
                                                                   "infidelity", "max-sensitivity", "emprt", "seconds"],
                          seed=[3, 4], method_options={"rise": {"masks": 8}},
                          metric_options={"curves": {"pixels_per_step": 128}, "road": {"fractions": (0.5,)},
                                          "infidelity": {"samples": 2}, "max-sensitivity": {"samples": 2}})
    assert [r["target"] for r in recs] == [0, 1]
    for r in recs:
        assert set(r["scores"]) == {"gradient", "rise", RANDOM}
        assert set(r["scores"]["gradient"]) == {"deletion", "insertion", "road-gap", "sparseness", "infidelity",
                                                "max-sensitivity", "emprt", "seconds"}
        assert all(math.isfinite(v) for s in r["scores"].values() for v in s.values())
        assert len(r["curves"]["gradient"]["deletion"]) == 9 and r["seconds"]["rise"]["map"] > 0
        assert r["scores"][RANDOM]["max-sensitivity"] == 0  # the random map ignores the input
    board = summarize(recs, resamples=200)
    assert {e.method for e in board.entries} == {"gradient", "rise", RANDOM}
    with pytest.raises(fv.FeatvisError, match="unknown metric"):
        evaluate_batch(tiny, x, None, ["gradient"], ["delition"])
    assert {m: METRICS.get(m).direction for m in ("deletion", "road-gap")} == {"deletion": "↓", "road-gap": "↑"}


def test_evaluation_figures_draw_from_records():
    from featvis.figures import evaluation_curves, figure_png, method_strip

    gen = torch.Generator().manual_seed(0)
    recs = [{"index": i, "target": 0, "scores": {}, "seconds": {},
             "curves": {m: {"deletion": torch.rand(6, generator=gen).tolist(),
                            "insertion": torch.rand(6, generator=gen).tolist()} for m in ("gradient", RANDOM)}}
            for i in range(4)]
    assert figure_png(evaluation_curves(recs)).startswith(b"\x89PNG")
    images = torch.rand(3, 3, 16, 16)
    png = figure_png(method_strip(images, {"a": torch.rand(3, 16, 16), "b": torch.rand(3, 16, 16)}, ["x", "y", "z"]))
    assert png.startswith(b"\x89PNG")


def test_emprt_is_undefined_for_a_constant_map(tiny):
    x = torch.rand(2, 3, 32, 32)

    def zero(clf, images, target=None, **_):
        return torch.zeros(images.shape[0], *images.shape[-2:])

    assert torch.isnan(efficient_mprt(tiny, x, zero(tiny, x), torch.tensor([0, 1]), zero)).all()
    recs = _records({RANDOM: [0.1, 0.2, 0.3], "m": [0.5, None, 0.6]})
    assert summarize(recs, resamples=100).get("m", "insertion").n == 2


def test_evaluate_on_a_tensor_batch_runs_through_the_runner_and_equals_the_batch_computation(tmp_path):
    """Issue 23: `evaluate()` ran in memory for tensors but through the runner for files; now one path (the task
    through the runner, the batch from memory), with the same numbers as the batch computation it replaced."""
    from featvis.data import item_seed

    from _models import TinyConvNet

    tiny = fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = fv.evaluate(tiny, x, methods=("gradient", "smoothgrad"), metrics=("deletion", "sparseness"), seed=5,
                      out=tmp_path / "run", options={"samples": 3})
    want = evaluate_batch(tiny, x, None, ("gradient", "smoothgrad"), ("deletion", "sparseness"),
                          seed=[item_seed(5, str(i)) for i in range(3)], method_options={"smoothgrad": {"samples": 3}})
    got = {r["key"]: r["scores"] for r in res.records}
    assert [got[str(i)] for i in range(3)] == [w["scores"] for w in want]
    assert fv.read_run(tmp_path / "run").manifest["inputs"]["inputs"] == "in memory"
    assert res.mean("gradient", "sparseness") == pytest.approx(sum(w["scores"]["gradient"]["sparseness"]
                                                                    for w in want) / 3)
