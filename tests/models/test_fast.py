"""The fast path (models/fast/): a folded, channels-last copy that must be indistinguishable from the user's net."""

from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
from torch import nn

import featvis as fv
from featvis.layers import capture, forward_until, tap
from featvis.models import fast, frozen
from featvis.models.fast import _compat

from _models import TinyConvNet

MEAN_RTOL = 1e-3  # issue 17: maps equal to the user's network within mean relative difference 1e-3


class ConvBNStack(nn.Module):
    """A small MobileNet-like net with ≥ 8 convolutions (so the fast path applies): stem conv-BN-ReLU6, then
    depthwise/pointwise conv-BN pairs with residuals, pool, fc. `shared_tap`: block 2's pointwise conv output also
    feeds the residual directly (y = bn(c) + c), so its BatchNorm must not be folded. `bn_tap`: block 1's depthwise
    BatchNorm output is read by its ReLU6 and by an add, so that conv must not apply the ReLU6 itself.
    `relu_residual`: block 3 is x + relu6(bn(dw(x))), its ReLU6 output read by an add alone (whose backward hands
    one gradient tensor to both of its inputs), so that fused conv must not mask its gradient in place."""

    def __init__(self, shared_tap: bool = False, std_conv: bool = False, seed: int = 0, bn_tap: bool = False,
                 relu_residual: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shared_tap, self.bn_tap, self.relu_residual = shared_tap, bn_tap, relu_residual
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()  # one module, called everywhere (as in EfficientNet-Lite)
        conv = _StdConv if std_conv else nn.Conv2d
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "dw": nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), "bn_dw": nn.BatchNorm2d(8),
            "pw": conv(8, 8, 1, bias=False), "bn_pw": nn.BatchNorm2d(8)}) for _ in range(4))
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "bn" in name else 0.5) + (1.0 if "bn" in name
                        and name.endswith("weight") else 0.0))
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.stem(x)))
        for i, b in enumerate(self.blocks):
            pre = b["bn_dw"](b["dw"](x))
            if self.relu_residual and i == 3:
                x = x + self.act(pre)
                continue
            y = self.act(pre)
            if self.bn_tap and i == 1:
                y = y + pre
            c = b["pw"](y)
            x = x + b["bn_pw"](c) + (c if self.shared_tap and i == 2 else 0)
        return self.fc(x.mean((2, 3)))


class _StdConv(nn.Conv2d):
    """Weight-standardized conv (BiT): scaling its weight is undone by its forward, so it must never be folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True)
                                                                          + 1e-5)
        return self._conv_forward(x, w, self.bias)


def _wrap(net: nn.Module) -> fv.Classifier:
    return fv.Classifier.wrap(net.eval(), labels=list("abcde"), input_size=32)


def _grads(clf, x: torch.Tensor, target: int = 1) -> torch.Tensor:
    with frozen(clf):
        xx = x.clone().requires_grad_(True)
        return torch.autograd.grad(clf(xx)[:, target].sum(), xx)[0]


def _eager(clf, fn):
    clf.fast = False
    try:
        return fn()
    finally:
        clf.fast = True


def _mean_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().sum() / b.detach().abs().sum())


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


def test_small_stack_folds_every_pair_and_matches_eager(monkeypatch):
    clf = _wrap(ConvBNStack())
    x = torch.rand(4, 3, 32, 32)  # batch ≥ fast.FUSE_MIN_BATCH: the fused conv+ReLU6 runs
    calls = []
    fused_apply = fast._ConvReLU6Fn.apply
    monkeypatch.setattr(fast._ConvReLU6Fn, "apply", lambda *a: calls.append(a[0].shape[0]) or fused_apply(*a))
    fast_grads = _grads(clf, x)
    assert calls.count(4) == 10  # the stem and the 4 depthwise convs: in the build's gradient check, then here
    # the stem's ReLU6 output also feeds block 0's residual add: its gradient is not the stem's alone to mask
    assert fast.status(clf) == {"enabled": True, "active": True, "folded": 9, "fused": 5, "private": 4,
                                 "options": fast.FastOptions()}
    eager_grads = _eager(clf, lambda: _grads(clf, x))
    torch.testing.assert_close(fast_grads, eager_grads, rtol=1e-4, atol=1e-6)
    assert fast_grads.is_contiguous()  # the input gradient has the input's layout, not channels-last
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.net(clf.normalize(x)), rtol=1e-5, atol=1e-5)


def test_shared_conv_output_and_weight_standardized_convs_are_not_folded():
    tapped = _wrap(ConvBNStack(shared_tap=True))
    std = _wrap(ConvBNStack(std_conv=True))
    x = torch.rand(2, 3, 32, 32)
    for clf, folded in ((tapped, 8), (std, 5)):  # tap: block 2's pointwise pair kept; std: the 4 pointwise kept
        with torch.no_grad():
            out = clf(x)
        assert fast.status(clf)["folded"] == folded
        with torch.no_grad():
            torch.testing.assert_close(out, clf.net(clf.normalize(x)), rtol=1e-5, atol=1e-5)


def test_relu6_is_fused_only_where_nothing_else_reads_its_input():
    clf = _wrap(ConvBNStack(bn_tap=True))
    x = torch.rand(fast.FUSE_MIN_BATCH, 3, 32, 32)
    fast_grads = _grads(clf, x)
    assert fast.status(clf)["folded"] == 9 and fast.status(clf)["fused"] == 4  # block 1's depthwise pair: not fused
    torch.testing.assert_close(fast_grads, _eager(clf, lambda: _grads(clf, x)), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.net(clf.normalize(x)), rtol=1e-5, atol=1e-5)


def test_relu6_gradient_is_masked_in_place_only_where_a_convolution_alone_reads_it():
    clf = _wrap(ConvBNStack(relu_residual=True))
    x = torch.rand(fast.FUSE_MIN_BATCH, 3, 32, 32)
    fast_grads = _grads(clf, x)
    # fused: the stem and blocks 0-3's depthwise; masked in place: blocks 0-2 (their ReLU6 feeds the pointwise
    # conv alone), not the stem (also read by a residual add) nor block 3 (read by an add alone)
    assert fast.status(clf)["fused"] == 5 and fast.status(clf)["private"] == 3
    torch.testing.assert_close(fast_grads, _eager(clf, lambda: _grads(clf, x)), rtol=1e-4, atol=1e-6)
    clf.fast = fast.FastOptions(fuse_relu6=False)
    try:
        torch.testing.assert_close(fast_grads, _grads(clf, x), rtol=1e-5, atol=1e-7)
    finally:
        clf.fast = True


def test_users_network_is_never_modified(clf, photos):
    x = photos["chelsea"]
    types = [type(m) for m in clf.net.modules()]
    state = {k: v.clone() for k, v in clf.net.state_dict().items()}
    digest = clf.weights_hash
    with torch.no_grad():
        clf(x)
    assert fast.status(clf)["active"] and fast.status(clf)["folded"] == 49 and fast.status(clf)["fused"] == 33
    assert [type(m) for m in clf.net.modules()] == types and isinstance(clf.net._bn0, nn.BatchNorm2d)
    assert clf.net._conv_stem.bias is None and _hooks(clf.net) == 0
    assert all(torch.equal(v, state[k]) for k, v in clf.net.state_dict().items())
    clf._weights_hash = None
    assert clf.weights_hash == digest


def test_predictions_identical_and_maps_within_tolerance_on_the_photos(clf, photos):
    x = torch.cat(list(photos.values()))
    fast_top = [[p.index for p in row] for row in clf.predict(x, k=5)]
    eager_top = _eager(clf, lambda: [[p.index for p in row] for row in clf.predict(x, k=5)])
    assert fast_top == eager_top
    small = torch.nn.functional.interpolate(x[:3], size=96, mode="bilinear", antialias=True)
    fast_maps = fv.saliency(clf, small, None, reduce="none")
    eager_maps = _eager(clf, lambda: fv.saliency(clf, small, None, reduce="none"))
    assert _mean_rel(fast_maps, eager_maps) <= MEAN_RTOL


@pytest.mark.slow
def test_fast_float32_is_as_accurate_as_eager_float32(clf, photos):
    """Against a float64 run of the same network, the fast copy's error is of the size of eager float32's own:
    what differs between the two float32 runs is rounding (and the ReLU6 corners it may flip), not the math."""
    x = torch.nn.functional.interpolate(photos["coffee"], size=64, mode="bilinear", antialias=True)
    ref_clf = copy.deepcopy(clf).double()
    ref_clf.fast = False
    ref = _grads(ref_clf, x.double(), 967).float()
    err_fast = _mean_rel(_grads(clf, x, 967), ref)
    err_eager = _mean_rel(_eager(clf, lambda: _grads(clf, x, 967)), ref)
    assert err_fast <= max(3 * err_eager, 1e-5)


class _BatchNormCalls(torch.overrides.TorchFunctionMode):
    """Counts F.batch_norm calls: the user's network makes them, the folded copy none."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.nn.functional.batch_norm
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("layer", "on_copy"), [("_blocks.5._bn1", True), ("_blocks.5", True), ("_bn1", True),
                                               ("_blocks.5._project_conv", False)])
def test_capture_and_forward_until_run_on_the_copy_where_the_layer_is_the_users(clf, photos, layer, on_copy):
    """Issue 23: a layer whose output the copy computes as the user's network does is served by the copy (a
    BatchNorm whose conv applies its ReLU6 by the copy without that fusion); a folded conv by the user's network.
    Either way the values are the user's network's within float tolerance, in its layout."""
    x = torch.nn.functional.interpolate(photos["chelsea"], size=64, mode="bilinear", antialias=True)
    for run in (lambda: _capture(clf, x, layer), lambda: (forward_until(clf, x, layer),)):
        run()  # builds the copies it needs (planning runs the user's network)
        with _BatchNormCalls() as seen:
            got = run()
        want = _eager(clf, run)
        assert (seen.calls == 0) == on_copy
        for a, b in zip(got, want, strict=True):
            assert a.is_contiguous() and a.shape == b.shape
            if on_copy:
                assert _mean_rel(a, b) <= MEAN_RTOL
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
            else:
                assert torch.equal(a, b)
    assert _hooks(clf.net) == 0


def test_guided_backprop_sees_the_users_layers(clf, photos):
    x = torch.nn.functional.interpolate(photos["chelsea"], size=64, mode="bilinear", antialias=True)
    run = lambda: fv.saliency(clf, x, 281, method="guided-backprop", reduce="none")  # noqa: E731
    assert torch.equal(run(), _eager(clf, run))  # a swapped forward: the user's network ran
    assert _hooks(clf.net) == 0 and "forward" not in clf.net._swish.__dict__


def _capture(clf, x, layer):
    with frozen(clf), capture(clf, layer, grads=True) as cap:
        xx = x.clone().requires_grad_(True)
        grads = torch.autograd.grad(clf(xx)[:, 281].sum(), xx)[0]
    return cap.act(), cap.grad(), grads


@pytest.mark.parametrize(("layer", "on_copy"), [("blocks.1.bn_pw", True), ("act", True), ("fc", True),
                                               ("blocks.2.pw", False), ("bn0", True), ("blocks.1.bn_dw", True)])
def test_tap_records_the_layer_on_the_fast_path_as_capture_does(layer, on_copy):
    """tap() gives what capture(detach=True) gives, one tensor per call, on the fast copy; a conv whose BatchNorm is
    folded (blocks.2.pw) is served by the user's network; a BatchNorm whose ReLU6 the copy's conv applies (bn0,
    blocks.1.bn_dw) by the copy built without that fusion."""
    clf = _wrap(ConvBNStack())
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with tap(clf, layer):
            clf(x)  # builds the copies it needs (planning runs the user's network)
        with _BatchNormCalls() as calls, tap(clf, layer) as seen:
            logits = clf(x)
        with capture(clf, layer, detach=True) as cap:
            want_logits = _eager(clf, lambda: clf(x))  # the user's network
        with capture(clf, layer, detach=True) as served:
            clf(x)
    want = cap.calls[layer]
    assert len(served.calls[layer]) == len(want)  # capture on the copy: each call once, as tap
    assert len(seen) == len(want) >= 1
    for a, b in zip(seen, want, strict=True):  # float rounding of a folded network (ReLU6 up to 6: atol 5e-5)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
        assert _mean_rel(a, b) <= 1e-5 and a.is_contiguous()  # the user's network's layout, also where the copy runs channels-last
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)
    assert (calls.calls == 0) == on_copy
    if not on_copy:
        assert all(torch.equal(a, b) for a, b in zip(seen, want, strict=True))  # the user's network ran
    assert fast.status(clf)["active"] and _hooks(clf.net) == 0
    with torch.no_grad(), tap(clf, layer) as seen:
        clf(x[:1])
    assert len(seen) == len(want) and seen[0].shape[0] == 1


def test_tap_stop_ends_the_forward_inside_its_block():
    """Issue 23: `tap(stop=True)` absorbs its own stop (no TapStop for callers to catch); later layers never run."""
    clf = _wrap(ConvBNStack())
    x = torch.rand(2, 3, 32, 32)
    after = []
    with torch.no_grad(), tap(clf, "blocks.1.bn_pw") as full:
        clf(x)
    with torch.no_grad(), tap(clf, "blocks.1.bn_pw", stop=True) as seen, tap(clf, "fc") as head:
        clf(x)
        after.append(True)  # never reached: the forward stopped and the block with it
    assert not after and not head and len(seen) == 1
    torch.testing.assert_close(seen[0], full[0])
    with pytest.raises(ZeroDivisionError), tap(clf, "blocks.1.bn_pw", stop=True):
        _ = 1 / 0  # any other exception goes through
    assert _hooks(clf.net) == 0


def test_user_hook_train_mode_and_weight_gradients_run_the_users_network():
    net = ConvBNStack()
    clf = _wrap(net)
    x = torch.rand(2, 3, 32, 32)
    seen = []
    handle = net.blocks[1]["bn_dw"].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            out = clf(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    with torch.no_grad():
        assert torch.equal(out, net(clf.normalize(x)))
    out = clf(x)  # grad mode, parameters require grad: weight gradients must flow into the user's BatchNorm
    out[:, 0].sum().backward()
    assert net.bn0.weight.grad is not None and net.stem.weight.grad is not None
    net.zero_grad(set_to_none=True)
    clf.train()
    try:
        with torch.no_grad():
            before = net.bn0.running_mean.clone()
            clf(x)
        assert not torch.equal(net.bn0.running_mean, before)  # train mode ran the user's BatchNorm
    finally:
        clf.eval()


def test_weight_changes_rebuild_the_copy():
    net = ConvBNStack()
    clf = _wrap(net)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        clf(x)
        net.bn0.running_var.mul_(4.0)  # in place, seen by the version counter
        torch.testing.assert_close(clf(x), net(clf.normalize(x)), rtol=1e-5, atol=1e-5)
        net.blocks[0]["pw"].weight = nn.Parameter(torch.randn_like(net.blocks[0]["pw"].weight))  # replaced
        torch.testing.assert_close(clf(x), net(clf.normalize(x)), rtol=1e-5, atol=1e-5)
        net.fc = nn.Linear(8, 5)  # a shared module replaced in a duplicated container
        torch.testing.assert_close(clf(x), net(clf.normalize(x)), rtol=1e-5, atol=1e-5)
        net.blocks[1]["bn_pw"].running_mean.data.add_(1.0)  # invisible to version counters: refresh
        fast.refresh(clf)
        torch.testing.assert_close(clf(x), net(clf.normalize(x)), rtol=1e-5, atol=1e-5)
        clf.double()
        out = clf(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, net(clf.normalize(x.double())), rtol=1e-10, atol=1e-10)


def test_deep_copy_is_its_own_network_and_the_cache_does_not_keep_networks_alive():
    clf = _wrap(ConvBNStack())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        clf(x)
        other = copy.deepcopy(clf)
        with torch.no_grad():
            for p in other.net.blocks[3].parameters():
                p.mul_(-1.0)
        torch.testing.assert_close(other(x), other.net(other.normalize(x)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(other(x), clf(x))
    ref = weakref.ref(clf.net)
    del clf, other
    gc.collect()
    assert ref() is None


def test_tiny_networks_and_the_switches_run_the_users_network(monkeypatch):
    tiny = fv.Classifier.wrap(TinyConvNet().eval(), labels=list("abcd"), input_size=16)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tiny(x), tiny.net(tiny.normalize(x)))
    assert not fast.status(tiny)["active"]
    clf = _wrap(ConvBNStack())
    monkeypatch.setenv("FEATVIS_FAST", "0")
    with torch.no_grad():
        assert torch.equal(clf(torch.rand(1, 3, 32, 32).fill_(0.5)), clf.net(clf.normalize(torch.full(
            (1, 3, 32, 32), 0.5))))
    assert fast.options(clf) is None
    monkeypatch.setenv("FEATVIS_FAST", "bf16,nofold")
    assert fast.options(clf) == fast.FastOptions(fold_bn=False, autocast="bf16")
    monkeypatch.delenv("FEATVIS_FAST")
    assert fast.options(clf) == fast.FastOptions()


@pytest.mark.slow
@pytest.mark.skipif(not _compat.cpu_bf16_supported(), reason="no bfloat16 support on this CPU")
def test_bf16_autocast_is_opt_in_and_close(clf, photos):
    x = torch.nn.functional.interpolate(torch.cat([photos["chelsea"], photos["coffee"]]), size=128,
                                        mode="bilinear", antialias=True)
    fp32 = _grads(clf, x, 281)
    clf.fast = fast.FastOptions(autocast="bf16")
    try:
        with torch.no_grad():
            probs = clf(x).softmax(-1)
        half = _grads(clf, x, 281)
    finally:
        clf.fast = True
    assert half.dtype == torch.float32 and probs.dtype == torch.float32
    with torch.no_grad():
        ref = clf(x).softmax(-1)
    assert torch.equal(probs.argmax(-1), ref.argmax(-1)) and float((probs - ref).abs().max()) < 0.1
    cos = torch.nn.functional.cosine_similarity(half.flatten(1), fp32.flatten(1))
    assert bool((cos > 0.7).all())  # bf16 moves maps: why it is opt-in (benchmarks/floor.py)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("size", [(16, 16), (15, 16), (16, 17), (15, 15)])
def test_stride2_depthwise_same_padding_runs_a_wider_kernel_instead_of_a_padded_copy(k, size):
    g = torch.Generator().manual_seed(k)
    weight = torch.randn(6, 1, k, k, generator=g).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(6, generator=g)
    conv = fast._SameConv2d(weight, bias, (2, 2), (1, 1), groups=6)
    x = torch.randn(2, 6, *size, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = conv(x)
    # TensorFlow "same": ⌈i/2⌉ outputs, the larger half of the padding after
    pads = []
    for i in reversed(size):
        p = max((math.ceil(i / 2) - 1) * 2 + k - i, 0)
        pads += [p // 2, p - p // 2]
    x_ref = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x_ref, pads), weight, bias, 2, 0, 1, 6)
    assert y.shape == ref.shape == (2, 6, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(ref, x_ref, grad)[0],
                               rtol=1e-5, atol=1e-5)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    assert type(y.grad_fn.next_functions[0][0]).__name__ == "AccumulateGrad"  # no padded copy in between
    assert bool(conv._wide) == (size[0] % 2 == 0 or size[1] % 2 == 0)  # an odd side pads evenly: kernel as it is


def test_batched_and_double_backward_through_the_in_place_mask():
    """is_grads_batched (vmap over the backward) and create_graph cannot mask in place: both still give the gradient."""
    clf = _wrap(ConvBNStack())
    x = torch.rand(fast.FUSE_MIN_BATCH, 3, 32, 32, requires_grad=True)
    with frozen(clf):
        out = clf(x)
        assert fast.status(clf)["private"] == 4
        rows = torch.zeros(3, *out.shape)
        for i in range(3):
            rows[i, :, i] = 1
        batched = torch.autograd.grad(out, x, rows, is_grads_batched=True, retain_graph=True)[0]
        for i in range(3):
            torch.testing.assert_close(batched[i], torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0])
        g = torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)[0]
        torch.testing.assert_close(g.detach(), torch.autograd.grad(clf(x)[:, 0].sum(), x)[0])


@pytest.mark.slow
def test_a_first_call_under_inference_mode_leaves_the_copy_usable_for_gradients(clf, photos):
    """Issue 22.1: `with torch.inference_mode(): clf(x)` (how torchvision and timm document prediction) built the
    copy from inference tensors, and every later gradient failed with "Inference tensors cannot be saved for
    backward"."""
    x = photos["chelsea"]
    fast.refresh(clf)
    want = fv.saliency(clf, x, method="integrated-gradients", steps=4)
    fast.refresh(clf)  # the copy is rebuilt at the next call, which is inside inference mode
    with torch.inference_mode():
        logits = clf(x)
    assert int(logits.argmax()) == 282  # tiger cat
    assert fast.status(clf)["active"]
    for method in ("gradient", "gradcam"):
        assert float(fv.saliency(clf, x, method=method).sum()) > 0
    got = fv.saliency(clf, x, method="integrated-gradients", steps=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    with torch.inference_mode():  # and a copy made outside stays usable inside
        assert int(clf(x).argmax()) == 282
