"""TCAV: exact directional derivatives on models linear after the layer, the paper's test, errors, and Captum."""

import pytest
import torch
from scipy import stats
from torch import nn

import featvis as fv
from featvis.concepts.cav import fast_cav, layer_activations, random_subsets
from featvis.concepts.tcav import (
    directional_derivatives,
    layer_gradients,
    sign_and_magnitude,
    tcav,
    tcav_from_gradients,
    ttest,
)
from featvis.errors import FeatvisError

from _captum import same_classifier
from _models import TinyConvNet

SIZE = 8


class LinearHead(nn.Module):
    """feat (a conv) -> flatten -> head: the logits are linear in feat's output, d logit_k / d feat = head.weight[k]."""

    def __init__(self, classes: int = 3, identity: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Identity() if identity else nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear((3 if identity else 4) * SIZE * SIZE, classes)

    def forward(self, x):
        return self.head(self.feat(x).flatten(1))


class ConvHead(nn.Module):
    """conv1 -> ReLU -> conv2 -> ReLU -> pool -> fc (no in-place ops): gradients at conv2 differ per image."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _wrap(net):
    # mean 0, std 1: the layer sees the pixels as they are (the identity model's activations are the images)
    return fv.Classifier.wrap(net, labels=list("abc"), input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))


def _images(n, seed):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_directional_derivative_of_a_linear_head_is_its_weight_row_along_the_direction():
    clf = _wrap(LinearHead())
    directions = torch.randn(4 * SIZE * SIZE, 5, generator=torch.Generator().manual_seed(0))
    derivs = directional_derivatives(clf, _images(6, 0), 2, {"feat": directions}, batch_size=4)["feat"]
    expected = (clf.net.head.weight[2].detach() @ directions).expand(6, 5)
    torch.testing.assert_close(derivs, expected)


def test_directional_derivatives_match_per_image_autograd_and_several_layers_match_one():
    net = ConvHead()
    clf = _wrap(net)
    images = _images(5, 1)
    dirs = {"conv1": torch.randn(6 * SIZE * SIZE, 3), "conv2": torch.randn(8 * SIZE * SIZE, 4)}
    both = directional_derivatives(clf, images, 1, dirs, batch_size=2)
    for i in range(5):  # reference: the layer output as a leaf, the rest of the network by hand
        a1 = net.conv1(images[i:i + 1]).detach().requires_grad_(True)
        a2 = net.conv2(torch.relu(a1))
        logit = net.fc(torch.relu(a2).mean((2, 3)))[0, 1]
        g1, g2 = torch.autograd.grad(logit, [a1, a2])
        torch.testing.assert_close(both["conv1"][i], g1.flatten() @ dirs["conv1"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both["conv2"][i], g2.flatten() @ dirs["conv2"], rtol=1e-4, atol=1e-5)
    for name in dirs:
        single = directional_derivatives(clf, images, 1, {name: dirs[name]})[name]
        torch.testing.assert_close(both[name], single, rtol=1e-5, atol=1e-6)


def test_sign_and_magnitude_scores():
    derivs = torch.tensor([[1.0, -1.0, 0.0], [3.0, 1.0, 0.0], [-1.0, -2.0, 0.0], [1.0, -1.0, 0.0]])
    sign, magnitude = sign_and_magnitude(derivs)
    torch.testing.assert_close(sign, torch.tensor([0.75, 0.25, 0.0]))
    torch.testing.assert_close(magnitude, torch.tensor([5 / 6, 1 / 5, 0.0]))


def test_fast_tcav_on_a_linear_head_is_the_sign_of_the_weight_along_each_cav():
    clf = _wrap(LinearHead())
    concepts = {"dots": _images(6, 10), "stripes": _images(5, 11) * 0.5}
    randoms = [_images(4, 20 + i) for i in range(4)]
    res = tcav(clf, _images(7, 1), concepts, randoms, "b", "feat", cav="fast")
    weight = clf.net.head.weight[1].detach()
    for name, images in concepts.items():
        acts = layer_activations(clf, images, "feat")["feat"]
        expected = [float(weight @ fast_cav(acts, layer_activations(clf, r, "feat")["feat"]).vector > 0)
                    for r in randoms]
        assert res.scores["feat"][name].scores == tuple(expected)  # every image has the same derivative
    assert res.target == 1 and res.layers == ("feat",) and res.concepts == ("dots", "stripes") and res.n_tests == 2
    assert len(res.random_scores["feat"]) == 3 and len(res.cavs["feat"]["dots"]) == 4


@pytest.mark.parametrize("cav", ["linear", "fast"])
def test_the_class_direction_as_a_concept_scores_one_and_is_significant(cav):
    clf = _wrap(LinearHead(identity=True))  # the layer's activations are the pixels; the logit is W_k . pixels
    weight = clf.net.head.weight[0].detach()
    direction = (weight / weight.abs().max()).view(1, 3, SIZE, SIZE)
    gen = torch.Generator().manual_seed(5)
    concept = 0.5 + 0.3 * direction + 0.05 * (torch.rand(12, 3, SIZE, SIZE, generator=gen) - 0.5)
    pool = 0.5 + 0.3 * (torch.rand(40, 3, SIZE, SIZE, generator=gen) - 0.5)
    res = tcav(clf, _images(8, 2), {"class-direction": concept}, random_subsets(pool, 10, 12, seed=0), 0, "feat",
               cav=cav)
    score = res.scores["feat"]["class-direction"]
    assert score.scores == (1.0,) * 10 and score.mean == 1.0 and score.std == 0.0
    assert all(m == 1.0 for m in score.magnitudes)
    assert 0.0 < sum(res.random_scores["feat"]) / 9 < 1.0  # random directions land on both sides
    assert score.p_value < 0.05 / res.n_tests and score.significant
    assert "Bonferroni over 1 tests" in res.note


def test_p_value_is_scipys_two_sided_t_test_on_the_same_scores():
    clf = _wrap(ConvHead())
    res = tcav(clf, _images(10, 3), {"a": _images(6, 30), "b": _images(6, 31) * 0.3}, [_images(6, 40 + i)
               for i in range(5)], 2, ["conv1", "conv2"], cav="fast")
    for layer in res.layers:
        for s in res.scores[layer].values():
            expected = stats.ttest_ind(s.scores, res.random_scores[layer]).pvalue
            assert s.p_value == pytest.approx(float(expected), nan_ok=True)
            assert s.significant == (s.p_value < 0.05 / 4)
    assert ttest([0.1, 0.2, 0.3], [0.5, 0.6, 0.8]) == pytest.approx(stats.ttest_ind([0.1, 0.2, 0.3],
                                                                                    [0.5, 0.6, 0.8]).pvalue)
    assert ttest([0.1], [0.5, 0.6]) != ttest([0.1], [0.5, 0.6])  # NaN: one score is no sample


def test_tcav_leaves_the_model_as_it_found_it():
    net = ConvHead().train()
    next(net.parameters()).requires_grad_(False)
    clf = _wrap(net)
    clf.train()
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    tcav(clf, _images(4, 0), {"a": _images(4, 1)}, [_images(4, 2 + i) for i in range(3)], 0, ["conv1", "conv2"])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0
    assert [m.training for m in net.modules()] == modes and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_bad_concept_sets_are_one_line_errors_naming_the_concept_and_what_to_do():
    clf = fv.Classifier.wrap(TinyConvNet(classes=3), labels=list("abc"), input_size=SIZE)
    images, randoms = _images(4, 0), [_images(3, 1 + i) for i in range(3)]
    with pytest.raises(FeatvisError, match=r"no concepts given") as e:
        tcav(clf, images, {}, randoms, 0, "conv1")
    _one_line(e)
    with pytest.raises(FeatvisError, match=r"concept 'dots' has 1 image\(s\); a CAV needs at least 2.*add images") as e:
        tcav(clf, images, {"dots": _images(1, 5)}, randoms, 0, "conv1")
    _one_line(e)
    with pytest.raises(FeatvisError, match=r"concept 'dots' has 0 image"):
        tcav(clf, images, {"dots": _images(0, 5)}, randoms, 0, "conv1")
    with pytest.raises(FeatvisError, match=r"concept 'dots': expected images \[N, 3, H, W\], got \[3, 8, 8\]"):
        tcav(clf, images, {"dots": _images(1, 5)[0]}, randoms, 0, "conv1")
    small = torch.rand(3, 3, 6, 6)  # TinyConvNet pools: the forward runs, the layer's features differ
    with pytest.raises(FeatvisError, match=r"concept 'dots' has 384 features per image but 'random-0' has 216; use "
                                           r"the same layer and image size") as e:
        tcav(clf, images, {"dots": _images(3, 5)}, [small] * 3, 0, "conv1")
    _one_line(e)
    with pytest.raises(FeatvisError, match=r"got 2 random set\(s\); the t-test needs at least 3"):
        tcav(clf, images, {"dots": _images(3, 5)}, randoms[:2], 0, "conv1")
    with pytest.raises(FeatvisError, match=r"concept name 'random-3' is kept for the random sets"):
        tcav(clf, images, {"random-3": _images(3, 5)}, randoms, 0, "conv1")
    with pytest.raises(FeatvisError, match=r"unknown CAV method 'svm'"):
        tcav(clf, images, {"dots": _images(3, 5)}, randoms, 0, "conv1", cav="svm")
    with pytest.raises(FeatvisError, match=r"unknown layer 'conv9'"):
        tcav(clf, images, {"dots": _images(3, 5)}, randoms, 0, "conv9")
    with pytest.raises(FeatvisError, match=r"unknown class 'zebra'"):
        tcav(clf, images, {"dots": _images(3, 5)}, randoms, "zebra", "conv1")


def test_random_subsets_are_seeded_subsets_of_the_pool():
    pool = _images(10, 0)
    a, b = random_subsets(pool, 3, 4, seed=1), random_subsets(pool, 3, 4, seed=1)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and a[0].shape == (4, 3, SIZE, SIZE)
    flat = pool.flatten(1)
    assert all(any(torch.equal(row, p) for p in flat) for row in a[1].flatten(1))
    with pytest.raises(FeatvisError, match=r"random set size 11 must be between 2 and the pool's 10"):
        random_subsets(pool, 3, 11)


def test_captum_tcav_with_the_same_classifier_gives_the_same_scores(tmp_path):
    pytest.importorskip("captum.concept")
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    clf = _wrap(ConvHead())
    concepts = {"a": _images(8, 50), "b": _images(8, 51) * 0.4}
    randoms = [_images(8, 60 + i) for i in range(3)]
    inputs = _images(12, 70)
    ours = tcav(clf, inputs, concepts, randoms, 2, "conv2", cav="linear")

    theirs_concepts = {n: Concept(i, n, DataLoader(x, batch_size=4)) for i, (n, x) in enumerate(concepts.items())}
    theirs_randoms = [Concept(100 + i, f"random-{i}", DataLoader(x, batch_size=4)) for i, x in enumerate(randoms)]
    sets = [[c, r] for c in theirs_concepts.values() for r in theirs_randoms]
    sets += [[theirs_randoms[0], r] for r in theirs_randoms[1:]]
    captum = TCAV(clf, ["net.conv2"], classifier=same_classifier(), save_path=str(tmp_path))
    scores = captum.interpret(inputs, sets, target=2)
    for name, concept in theirs_concepts.items():
        got = [float(scores[f"{concept.id}-{r.id}"]["net.conv2"]["sign_count"][0]) for r in theirs_randoms]
        assert ours.scores["conv2"][name].scores == pytest.approx(got, abs=1e-6)
        for cav, r in zip(ours.cavs["conv2"][name], theirs_randoms, strict=True):
            w = captum.cavs[f"{concept.id}-{r.id}"]["net.conv2"].stats["weights"][1]
            torch.testing.assert_close(cav.vector, w / w.norm())
    null = [float(scores[f"100-{r.id}"]["net.conv2"]["sign_count"][0]) for r in theirs_randoms[1:]]
    assert ours.random_scores["conv2"] == pytest.approx(null, abs=1e-6)


def test_layer_gradients_of_a_linear_head_and_tcav_from_them_equals_tcav():
    clf = _wrap(ConvHead())
    images = _images(6, 4)
    lin = _wrap(LinearHead())
    grads = layer_gradients(lin, images, "c", "feat", batch_size=4)["feat"]
    torch.testing.assert_close(grads, lin.net.head.weight[2].detach().expand(6, -1))
    concepts, randoms = {"a": _images(5, 80)}, [_images(5, 90 + i) for i in range(3)]
    direct = tcav(clf, images, concepts, randoms, 1, ["conv1", "conv2"], cav="fast")
    streamed = tcav_from_gradients(clf, layer_gradients(clf, images, 1, ["conv1", "conv2"], batch_size=4), concepts,
                                   randoms, 1, cav="fast")
    assert streamed.scores == direct.scores and streamed.random_scores == direct.random_scores
    row = direct.to_dict()["scores"][0]
    assert set(row) >= {"layer", "concept", "mean", "std", "p", "significant", "random_mean", "accuracy"}
    with pytest.raises(FeatvisError, match=r"gradients for layer 'conv1' are \[6, 5\]"):
        tcav_from_gradients(clf, {"conv1": torch.zeros(6, 5)}, concepts, randoms, 1, cav="fast")
