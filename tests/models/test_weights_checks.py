"""Weights that would make every prediction NaN or garbage are refused at load, naming the tensors (issue 22, item 4);
a prediction that still comes out non-finite says why instead of printing prob=nan."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import featvis as fv
from featvis.models.weights import load_strict

from _models import PickledNet, TinyConvNet

CONV = "_blocks.3._depthwise_conv.weight"


def _lite_weights(clf: fv.Classifier, path, **changes: torch.Tensor) -> None:
    state = {k: v.clone().contiguous() for k, v in clf.net.state_dict().items()}
    state.update(changes)
    save_file(state, str(path))


def _nan_at(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


def _one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg, msg
    return msg


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_convolution_is_refused_naming_it(tmp_path, clf, value):
    path = tmp_path / "diverged.safetensors"
    _lite_weights(clf, path, **{CONV: _nan_at(clf.net.state_dict()[CONV], value)})
    with pytest.raises(fv.FeatvisError, match=rf"efficientnet-lite0 hold NaN or inf in {CONV}; every "
                                              r"prediction would be NaN: use a checkpoint saved before") as e:
        fv.load_model("efficientnet-lite0", weights=path)
    _one_line(e, path)


def test_many_nonfinite_tensors_list_the_first_few(tmp_path, clf):
    path = tmp_path / "diverged.pt"
    state = {k: v.clone() for k, v in clf.net.state_dict().items()}
    floats = [k for k, v in state.items() if v.is_floating_point()]
    for k in floats[:5]:
        state[k] = _nan_at(state[k])
    torch.save(state, path)
    with pytest.raises(fv.FeatvisError, match=rf"in {floats[0]}, {floats[1]}, {floats[2]} and 2 more; "):
        fv.load_model("efficientnet-lite0", weights=path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_integer_weights_are_refused(tmp_path, clf, dtype):
    path = tmp_path / "ints.safetensors"
    _lite_weights(clf, path, **{CONV: clf.net.state_dict()[CONV].mul(4).round().to(dtype)})
    with pytest.raises(fv.FeatvisError, match=rf"^weights do not fit efficientnet-lite0: {CONV} is {dtype} where "
                                              r"efficientnet-lite0 has torch.float32 \(a dtype of another kind: "
                                              r"quantized.*save the floating-point weights") as e:
        fv.load_model("efficientnet-lite0", weights=path)
    _one_line(e, path)


def test_half_precision_weights_still_load(tmp_path, clf):
    """The kind check is about int/bool, not precision: float16 weights load, cast to the model's float32."""
    path = tmp_path / "half.safetensors"
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in clf.net.state_dict().items()}
    save_file(half, str(path))
    again = fv.load_model("efficientnet-lite0", weights=path)
    torch.testing.assert_close(again.net.state_dict()[CONV], half[CONV].float(), rtol=0, atol=0)


def test_architecture_buffers_that_are_inf_by_design_may_be_inf_in_the_file():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("mask", torch.tensor([0.0, float("-inf")]))

    net = Masked()
    load_strict(net, {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2), "mask": net.mask.clone()}, "masked")
    assert torch.equal(net.fc.weight, torch.ones(2, 2))
    with pytest.raises(fv.FeatvisError, match=r"weights for masked hold NaN or inf in fc.bias; "):
        load_strict(net, {"fc.weight": torch.ones(2, 2), "fc.bias": torch.tensor([0.0, float("nan")]),
                          "mask": net.mask.clone()}, "masked")
    assert torch.equal(net.fc.bias, torch.zeros(2)), "a refused load copied nothing"


def test_whole_model_files_with_nan_are_refused(tmp_path):
    net = TinyConvNet().eval()
    with torch.no_grad():
        net.conv2.bias[0] = float("nan")
    scripted, pickled = tmp_path / "ts.pt", tmp_path / "whole.pt"
    torch.jit.script(net).save(str(scripted))
    bad = PickledNet()
    with torch.no_grad():
        next(bad.parameters()).view(-1)[0] = float("inf")
    torch.save(bad, pickled)
    for path, name in ((scripted, "conv2.bias"), (pickled, next(n for n, _ in bad.named_parameters()))):
        with pytest.raises(fv.FeatvisError, match=rf"holds NaN or inf in {name}; every prediction") as e:
            fv.load_model(path, trust_checkpoint=True, input_size=32)
        _one_line(e, path)


def test_weights_for_a_model_file_are_checked_too(tmp_path):
    net = TinyConvNet().eval()
    model, weights = tmp_path / "ts.pt", tmp_path / "w.safetensors"
    torch.jit.script(net).save(str(model))
    save_file({k: (_nan_at(v) if k == "fc.weight" else v).contiguous() for k, v in net.state_dict().items()},
              str(weights))
    with pytest.raises(fv.FeatvisError, match=r"weights for file:ts.pt hold NaN or inf in fc.weight; "
                                              r".*weights file '.*w.safetensors'"):
        fv.load_model(model, weights=weights, trust_checkpoint=True, input_size=32)


def test_predict_names_the_nonfinite_weights():
    net = TinyConvNet()
    with torch.no_grad():
        net.fc.weight[0, 0] = float("nan")
    clf = fv.Classifier.wrap(net, labels=["a", "b", "c", "d"], input_size=32)
    with pytest.raises(fv.FeatvisError, match=r"^model 'custom' produced non-finite logits \(NaN or inf\) for 2 of 2 "
                                              r"images; its weights hold NaN or inf \(fc.weight\): load or train "
                                              r"finite weights$"):
        clf.predict(torch.rand(2, 3, 32, 32))


class _Overflow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.mean((2, 3)) * 1e30], 1) ** 2  # the second half is > float32's 3.4e38


def test_predict_says_overflow_when_the_weights_are_finite():
    clf = fv.Classifier.wrap(_Overflow(), labels=[str(i) for i in range(6)], input_size=16)
    with pytest.raises(fv.FeatvisError, match=r"non-finite logits .* for 1 of 1 images; its weights and the images are "
                                              r"finite, so a value overflowed inside the network"):
        clf.predict(torch.full((1, 3, 16, 16), 0.5))


def test_predict_on_finite_models_is_unchanged(clf):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    probs = clf(images).softmax(-1)
    for row, p in zip(clf.predict(images, k=3), probs, strict=True):
        assert [t.index for t in row] == p.topk(3).indices.tolist()
        torch.testing.assert_close(torch.tensor([t.prob for t in row]), p.topk(3).values, rtol=1e-5, atol=1e-6)


def test_head_of_the_wrong_rank_is_one_line(tmp_path, clf):
    """Probe: `_fc.weight` as a scalar was an IndexError before the net was even built."""
    path = tmp_path / "scalar-head.safetensors"
    _lite_weights(clf, path, **{"_fc.weight": torch.tensor(1.0)})
    with pytest.raises(fv.FeatvisError, match=r"_fc.weight has shape \[\], expected \[classes, features\]") as e:
        fv.load_model("efficientnet-lite0", weights=path)
    _one_line(e, path)


@pytest.mark.parametrize("change,match", [
    ("drop", r"missing \[_conv_stem.weight\] unexpected \[\]"),
    ("extra", r"missing \[\] unexpected \[extra.weight\]"),
    ("shape", r"size mismatch for _conv_stem.weight"),
])
def test_missing_extra_and_misshapen_tensors_name_the_file(tmp_path, clf, change, match):
    """Probe: these were one line already; now they also say which weights file."""
    state = {k: v.clone().contiguous() for k, v in clf.net.state_dict().items()}
    if change == "drop":
        del state["_conv_stem.weight"]
    elif change == "extra":
        state["extra.weight"] = torch.zeros(2)
    else:
        state["_conv_stem.weight"] = torch.zeros(4, 3, 3, 3)
    path = tmp_path / f"{change}.safetensors"
    save_file(state, str(path))
    with pytest.raises(fv.FeatvisError, match=rf"^weights do not fit efficientnet-lite0: .*{match}.*weights file ") \
            as e:
        fv.load_model("efficientnet-lite0", weights=path)
    _one_line(e, path)
