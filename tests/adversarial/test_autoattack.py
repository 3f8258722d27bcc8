import sys

import pytest
import torch

import featvis as fv
import featvis.adversarial.autoattack
from featvis.adversarial import ATTACKS, fool
from featvis.adversarial._base import attack_inputs, resolve_attack_targets
from featvis.adversarial.result import finish

from _models import LinearNet, TinyConvNet

aa = sys.modules["featvis.adversarial.autoattack"]


def _tiny(classes=10, seed=0):
    net = TinyConvNet(classes=classes, seed=seed).eval()
    return fv.Classifier.wrap(net, labels=[str(i) for i in range(classes)], input_size=16)


def _batch(n=16, seed=0):
    return fv.quantize(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture
def recorded(monkeypatch):
    """Stand-ins for FAB and Square under their own names: they record the images they are given and break the
    first of them (a big signed step), so the suite's bookkeeping can be checked exactly."""
    seen = {"toy-fab": [], "toy-square": []}
    broke = {}

    def make(name):
        def attack(clf, images, target=None, *, eps: float = 8 / 255, norm: str = "linf", steps: int = 10,
                   seed=0, callback=None):
            """A recording stand-in.

            Args:
                eps: budget.
                norm: linf.
                steps: queries.
            """
            seen[name].append((images.clone(), None if target is None else torch.as_tensor(target).clone(), steps))
            x = attack_inputs(clf, images)
            targets, original, probs = resolve_attack_targets(clf, x, target, seed)
            raw = x.clone()
            if target is None:  # break the first image with whichever far-away image changes its prediction
                for cand in (1 - x[:1], torch.zeros_like(x[:1]), torch.ones_like(x[:1]), x[:1].flip(-1)):
                    if clf(cand).argmax(-1) != original[0]:
                        raw[:1] = cand
                        break
            broke[name] = bool((raw[:1] != x[:1]).any())
            return finish(name, clf, x, raw, targets, original, torch.ones(len(x), dtype=torch.long), {}, probs)
        return attack

    ATTACKS.register("toy-fab", targeted=True, untargeted=True, norms=("linf",), steps="steps")(make("toy-fab"))
    ATTACKS.register("toy-square", targeted=False, untargeted=True, norms=("linf",), steps="steps")(
        make("toy-square"))
    versions = {"standard": [(n, "toy-fab" if a == "fab-t" else "toy-square" if a == "square" else a, o)
                             for n, a, o in aa.VERSIONS["standard"]]}
    monkeypatch.setattr(aa, "VERSIONS", versions)
    yield seen, broke
    ATTACKS.remove("toy-fab")
    ATTACKS.remove("toy-square")


def test_each_attack_runs_only_on_the_images_still_robust(recorded):
    recorded, broke = recorded
    clf, x = _tiny(), _batch(12)
    res = aa.autoattack(clf, x, eps=2 / 255, steps=5)
    assert res.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"] and res.notes == []
    after_apgd = res.robust_after["apgd-t"]
    (fab_images, fab_target, _), = recorded["toy-fab"]  # one untargeted call (FAB-T takes its targets itself)
    assert fab_target is None and len(fab_images) == after_apgd
    robust_before_square = res.robust_after["fab-t"]
    (square_images, square_target, queries), = recorded["toy-square"]
    assert square_target is None and queries == aa.SQUARE_QUERIES and len(square_images) == robust_before_square
    # the images square saw are exactly those still robust then; it broke its first one
    assert broke["toy-square"] and res.robust_after["square"] == robust_before_square - 1
    assert res.broken_by.count("square") == 1 and int(res.robust.sum()) == res.robust_after["square"]
    i = res.broken_by.index("square")
    assert torch.equal(x[i], square_images[0])
    still = [j for j, b in enumerate(res.broken_by) if b in (None, "square")]
    assert torch.equal(torch.stack([x[j] for j in still]), square_images)


def test_robust_accuracy_is_at_most_each_single_attacks(monkeypatch):
    monkeypatch.setattr(aa, "VERSIONS", {"standard": aa.VERSIONS["standard"][:2]})  # the APGD part: quick
    clf, x = _tiny(), _batch(12)
    res = aa.autoattack(clf, x, eps=4 / 255, steps=10)
    for method in ("apgd", "apgd-t"):
        single = fool(clf, x, None, method=method, eps=2 / 255, steps=10)
        assert res.robust_accuracy <= 1 - single.success_rate + 1e-9
    broken = ~res.robust
    assert broken.any()
    pred = clf(res.images).argmax(-1)
    assert torch.equal(pred[broken] != res.labels_used[broken], torch.ones(int(broken.sum()), dtype=torch.bool))
    assert torch.equal(res.images, fv.quantize(res.images))
    assert ((res.images - x).abs().flatten(1).amax(1) <= 4 / 255 + 1e-6).all()
    assert all((b is None) == bool(r) for b, r in zip(res.broken_by, res.robust, strict=True))


def test_labels_misclassified_images_are_never_attacked(monkeypatch):
    monkeypatch.setattr(aa, "VERSIONS", {"standard": aa.VERSIONS["standard"][:2]})
    clf, x = _tiny(), _batch(10)
    pred = clf(x).argmax(-1)
    y = pred.clone()
    y[:4] = (pred[:4] + 1) % 10  # four wrong labels: broken before any attack
    res = aa.autoattack(clf, x, y, eps=1 / 255, steps=5)
    assert res.broken_by[:4] == ["clean"] * 4 and res.clean_accuracy == pytest.approx(0.6)
    assert torch.equal(res.images[:4], x[:4])
    plain = aa.autoattack(clf, x, eps=1 / 255, steps=5)
    assert plain.clean_accuracy == 1.0 and torch.equal(plain.labels_used, pred)
    rows = res.records()
    assert rows[0]["clean_correct"] is False and rows[0]["broken_by"] == "clean"


def test_float_judging_breaks_below_one_level_and_rounding_does_not():
    """At ε = 0.4/255 every rounded image of an 8-bit original is the original: nothing breaks after rounding;
    judged on floats (as the reference code judges) APGD finds changes of the prediction of a steep linear model."""
    net = LinearNet(classes=3, size=8, seed=2)
    with torch.no_grad():
        net.fc.bias.copy_(-net.fc.weight.sum(1) / 2)  # every boundary passes through the grey image
    clf = fv.Classifier.wrap(net, mean=(0, 0, 0), std=(1, 1, 1), labels=list("abc"), input_size=8)
    # near-grey images lie close to the boundaries
    x = fv.quantize(0.5 + 0.01 * torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    rounded = aa.autoattack(clf, x, eps=0.4 / 255, version="rand", steps=10)
    floats = aa.autoattack(clf, x, eps=0.4 / 255, version="rand", steps=10, rounding=False)
    assert rounded.robust_accuracy == 1.0 and floats.robust_accuracy < 1.0
    broken = ~floats.robust
    assert (clf(floats.images[broken]).argmax(-1) != floats.labels_used[broken]).all()
    assert ((floats.images - x).abs().amax() <= 0.4 / 255 + 1e-7)


def test_a_missing_attack_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(aa, "VERSIONS", {"standard": [("apgd-ce", "apgd", {"loss": "ce"}),
                                                      ("nope", "no-such-attack", {})]})
    res = aa.autoattack(_tiny(), _batch(4), eps=1 / 255, steps=3)
    assert res.attacks == ["apgd-ce"] and res.notes == ["nope: attack 'no-such-attack' is not registered"]


def test_bad_version_and_budget():
    clf, x = _tiny(), _batch(2)
    with pytest.raises(fv.FeatvisError, match="unknown AutoAttack version 'fast'"):
        aa.autoattack(clf, x, eps=1 / 255, version="fast")
    with pytest.raises(fv.FeatvisError, match="positive finite budget"):
        aa.autoattack(clf, x, eps=-1.0)
