import pytest
import torch

import featvis as fv
from featvis.attribution import metrics, saliency
from featvis.attribution.sanity import randomize, sanity_check, spearman, ssim, units


def test_auc_is_the_normalized_trapezoid():
    probs = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    torch.testing.assert_close(metrics.auc(probs), torch.tensor([0.5, 0.2]))


@pytest.mark.slow
def test_curve_endpoints_match_direct_evaluation(clf, photos):
    x = photos["coffee"]
    maps = saliency(clf, x, None)
    dele = metrics.deletion(clf, x, maps, pixels_per_step=224 * 16)
    ins = metrics.insertion(clf, x, maps, pixels_per_step=224 * 16)
    with torch.no_grad():
        p_orig = clf(x).softmax(-1)[0, 967]
        p_mean = clf(clf.mean.expand_as(x)).softmax(-1)[0, 967]
        p_blur = clf(metrics.substrate(clf, x, "blur")).softmax(-1)[0, 967]
    assert dele.probs.shape == (1, 15) and dele.classes.tolist() == [967]
    torch.testing.assert_close(dele.probs[0, [0, -1]], torch.stack([p_orig, p_mean]))
    torch.testing.assert_close(ins.probs[0, [0, -1]], torch.stack([p_blur, p_orig]))


@pytest.mark.slow
def test_deletion_of_most_salient_pixels_beats_random(clf, photos):
    x = torch.cat([photos["chelsea"], photos["coffee"], photos["grace_hopper"]])
    pps = 224 * 8
    rand = metrics.random_maps(x, seed=1)
    grad = saliency(clf, x, None, method="gradcam")
    ins_r = metrics.insertion(clf, x, rand, pixels_per_step=pps).auc.mean()
    ins_g = metrics.insertion(clf, x, grad, pixels_per_step=pps).auc.mean()
    assert ins_g > ins_r, (ins_g, ins_r)


def test_spearman_and_ssim_known_values():
    a = torch.rand(2, 16, 16)
    torch.testing.assert_close(spearman(a, a * 3 + 1), torch.ones(2))
    torch.testing.assert_close(spearman(a, -a), -torch.ones(2))
    torch.testing.assert_close(ssim(a, a), torch.ones(2), atol=1e-5, rtol=0)
    assert (ssim(a, torch.rand(2, 16, 16)) < 0.3).all()


@pytest.mark.slow
@pytest.mark.timeout(900)  # over a minute on a loaded 2-core machine: the default 300 s is too tight
def test_sanity_randomizes_a_copy_and_separates_gradient_from_guided_backprop(clf, photos):
    x = photos["chelsea"]
    before = clf.weights_hash
    grad = sanity_check(clf, x, 281, method="gradient", independent=False)
    gbp = sanity_check(clf, x, 281, method="guided-backprop", independent=False)
    clf._weights_hash = None
    assert clf.weights_hash == before  # the user's model is untouched
    assert grad.units[0] == "_fc" and grad.units[-1] == "_conv_stem" and len(grad.units) == len(units(clf))
    assert grad.spearman_abs[0].item() < 0.6  # randomizing the logits layer alone changes the gradient map
    assert gbp.spearman_abs[0].item() > 0.9  # guided backprop barely notices (Adebayo et al.)
    assert gbp.flagged and not grad.flagged


def test_randomize_changes_only_named_blocks(clf):
    copy = randomize(clf, ["_fc"], seed=0)
    assert not torch.equal(copy.net._fc.weight, clf.net._fc.weight)
    assert torch.equal(copy.net._conv_head.weight, clf.net._conv_head.weight)


def test_metric_inputs_are_checked(clf, photos):
    with pytest.raises(fv.FeatvisError, match="maps have shape"):
        metrics.deletion(clf, photos["coffee"], torch.rand(1, 10, 10))
