"""Issue 22.11: option values out of range end in one line naming the value, never a bare AssertionError or a
silent other result; an attack with nothing to do says so."""

from __future__ import annotations

import pytest

import featvis as fv
from featvis.errors import FeatvisError, FeatvisWarning


@pytest.mark.parametrize(("options", "message"), [
    ({"steps": -1}, "steps must be a whole number >= 0"),  # was: a bare AssertionError
    ({"size": 0}, "size must be 16..1024 pixels, got 0"),  # was: a 224 px image, silently
    ({"size": 1}, "size must be 16..1024 pixels, got 1"),  # was: a 1×1 image
    ({"size": 5000}, "size must be 16..1024 pixels"),
    ({"steps": 2.5}, "steps must be a whole number"),
])
def test_out_of_range_render_options_are_one_line(clf, options, message):
    for call in (lambda: fv.class_visualization(clf, "pizza", **options),
                 lambda: fv.feature_visualization(clf, "blocks.8", 0, **options)):
        with pytest.raises(FeatvisError, match=message):
            call()


def test_render_refuses_negative_steps_and_an_empty_batch(clf):
    obj = fv.objectives.class_logit("pizza")
    with pytest.raises(FeatvisError, match="steps must be"):
        fv.render(clf, obj, size=32, steps=-3)
    with pytest.raises(FeatvisError, match="batch must be at least 1"):
        fv.render(clf, obj, size=32, steps=1, batch=0)


@pytest.mark.slow
def test_a_target_the_model_already_predicts_is_said_not_hidden_in_a_success(clf, photos):
    x = photos["chelsea"]  # the model calls it a tiger cat
    with pytest.warns(FeatvisWarning, match="already classified as their target .*tiger cat"):
        res = fv.fool(clf, x, "tiger cat")
    assert res.success.tolist() == [True] and res.steps.tolist() == [0]  # what it was: now it is said
    assert res.already_target.tolist() == [True] and res.records()[0]["already_target"] is True
    other = fv.fool(clf, x, "stingray")
    assert other.already_target.tolist() == [False] and int(other.steps[0]) > 0


def test_a_wrapped_net_whose_width_is_not_its_labels_says_so_in_one_line():
    """22 (found by the checkpoint probe): Classifier.wrap(net) with 4 outputs and the default 1000 ImageNet names
    ended in a raw `RuntimeError: selected index k out of range` in predict."""
    import torch

    from _models import TinyConvNet

    clf = fv.Classifier.wrap(TinyConvNet(classes=4), input_size=32)
    with pytest.raises(FeatvisError, match=r"returns \(4,\) scores per image but has 1000 class names"):
        clf.predict(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize(("method", "option", "value", "message"), [
    ("smoothgrad", "samples", "-1", r"samples='-1' must be >= 1"),  # was: a RuntimeError from torch.empty
    ("smoothgrad", "samples", "0", r"samples='0' must be >= 1"),
    ("integrated-gradients", "steps", "0", r"steps='0' must be >= 1"),
    ("rise", "keep", "1.5", r"keep='1.5' must be in \[0, 1\]"),
    ("smoothgrad", "noise", "-0.1", r"noise='-0.1' must be >= 0"),
])
def test_method_options_out_of_range_are_one_line(method, option, value, message):
    from featvis.attribution import ATTRIBUTIONS

    with pytest.raises(FeatvisError, match=message):
        ATTRIBUTIONS.get(method).check({option: value})


def test_attack_and_preset_options_have_ranges_too():
    from featvis.adversarial import ATTACKS
    from featvis.optvis.presets import PRESETS

    with pytest.raises(FeatvisError, match=r"steps=-5 must be >= 1"):
        ATTACKS.get("pgd").check({"steps": -5})
    with pytest.raises(FeatvisError, match=r"alpha='-1' must be >= 0"):
        ATTACKS.get("pgd").check({"alpha": "-1"})
    with pytest.raises(FeatvisError, match=r"box_min=0 must be in \[0.01, 1\]"):
        PRESETS.get("maco").split({"box_min": 0}, "maco")
    assert ATTACKS.get("pgd").check({"steps": "3"}) == {"steps": 3}  # in range: converted as before


def test_the_cli_says_an_out_of_range_option_in_one_line(capsys):
    from featvis.cli import main

    code = main(["saliency", str(fv.samples.path("chelsea")), "--method", "smoothgrad", "-O", "samples=-1",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "samples='-1' must be >= 1" in err
