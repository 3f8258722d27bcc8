import pytest
import torch

import featvis as fv
from featvis.figures import accentuation_panels


@pytest.fixture(scope="module")
def cat(clf):
    return fv.samples.load("chelsea", clf, size=96)


def test_accentuation_raises_the_channel_and_stays_close(clf, cat):
    channel = 96  # the photo's most active channel of blocks.8 at 96 px (12.5)
    small = {"steps": 8, "views": 2, "model_size": 96, "seed": 0}
    res = fv.accentuate(clf, cat, "blocks.8", channel, **small)
    assert res.original.shape == res.accentuated.shape == res.difference.shape == (1, 3, 96, 96)
    torch.testing.assert_close(res.original, cat)
    assert res.after[0] > res.before[0] + 0.3, (res.before, res.after)
    assert res.psnr[0] > 30, res.psnr  # still the photo
    assert res.transparency.shape == (1, 96, 96) and res.transparency.sum() > 0
    free = fv.accentuate(clf, cat, "blocks.8", channel, reg=0.0, **small)
    assert free.after[0] > res.after[0] + 1 and free.psnr[0] < res.psnr[0] - 3  # the regularizer holds it back
    fig = accentuation_panels(res)
    assert len(fig.axes) == 3


def test_accentuation_is_seeded(clf, cat):
    tiny = {"steps": 2, "views": 1, "model_size": 64}
    a = fv.accentuate(clf, cat, "blocks.4", 3, seed=1, **tiny)
    b = fv.accentuate(clf, cat, "blocks.4", 3, seed=1, **tiny)
    c = fv.accentuate(clf, cat, "blocks.4", 3, seed=2, **tiny)
    assert torch.equal(a.accentuated, b.accentuated) and not torch.equal(a.accentuated, c.accentuated)


def test_accentuation_of_a_class_and_bad_input(clf, cat):
    res = fv.accentuate(clf, cat, "logits", "tabby", steps=4, views=1, model_size=96, reg_layer="pixels")
    assert res.layer == "logits" and res.channels == [clf.labels.lookup("tabby")]
    assert res.after[0] > res.before[0]
    with pytest.raises(fv.FeatvisError, match="unknown layer"):
        fv.accentuate(clf, cat, "blocks.99", 0, steps=1)
    with pytest.raises(fv.FeatvisError, match="integers"):
        fv.accentuate(clf, cat, "blocks.8", "tabby", steps=1)
    with pytest.raises(fv.FeatvisError, match="out of range|index"):
        fv.accentuate(clf, cat, "blocks.8", 10_000, steps=1)
