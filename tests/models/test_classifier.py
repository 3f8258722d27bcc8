import pytest
import torch

import featvis as fv
from featvis.models import frozen

from _models import TinyConvNet


def test_wrap_normalizes_and_predicts():
    net = TinyConvNet()
    clf = fv.Classifier.wrap(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=list("abcd"), input_size=32)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(clf(x), net((x - 0.5) / 0.25))
    preds = clf.predict(x, k=4)
    probs = net((x - 0.5) / 0.25).softmax(1)
    assert [p.index for p in preds[1]] == probs[1].argsort(descending=True).tolist()
    assert sum(p.prob for p in preds[1]) == pytest.approx(1.0, abs=1e-5)
    assert preds[0][0].name in "abcd" and clf.input_size == 32


def test_wrap_rejects_non_module_and_bad_std():
    with pytest.raises(fv.FeatvisError, match="needs a torch.nn.Module"):
        fv.Classifier.wrap(lambda x: x)
    with pytest.raises(fv.FeatvisError, match="std > 0"):
        fv.Classifier.wrap(TinyConvNet(), std=(0, 1, 1))


def test_frozen_restores_state_even_after_error():
    net = TinyConvNet().train()
    net.fc.weight.requires_grad_(True)
    net.conv1.bias.requires_grad_(False)
    with pytest.raises(RuntimeError), frozen(net):
        assert not net.training and not net.fc.weight.requires_grad
        raise RuntimeError("boom")
    assert net.training and net.fc.weight.requires_grad and not net.conv1.bias.requires_grad


def test_predict_leaves_no_grads_and_keeps_mode(clf, photos):
    clf.train()
    try:
        clf.predict(photos["coffee"])
        assert clf.training
        assert all(p.grad is None for p in clf.parameters())
    finally:
        clf.eval()
