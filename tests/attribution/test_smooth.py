"""smooth:METHOD (SmoothGrad, SmoothGrad², VarGrad over any method), Guided Grad-CAM and Deconvnet: exact identities,
seeding, and equality with Captum's NoiseTunnel, GuidedGradCam and Deconvolution on small ReLU / ReLU6 nets."""

import copy
import json

import pytest
import torch
from torch import nn

import featvis as fv
from featvis.attribution import ATTRIBUTIONS, saliency
from featvis.attribution.smooth import noisy_copies
from featvis.errors import FeatvisError

from _captum import captum_copy
from _models import TinyConvNet


class SmallNet(nn.Module):
    """conv → ReLU6 → conv → ReLU → avg-pool → fc: separate, not in-place activations (Captum's module hooks need
    that), one ReLU6 (EfficientNet-Lite's activation)."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
            self.conv1.bias.add_(1.5)  # some units above 6: ReLU6's saturation matters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(classes=4).eval(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def small():
    return fv.Classifier.wrap(SmallNet().eval(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def captum():
    return pytest.importorskip("captum.attr")


# --- the registry's parametric names --------------------------------------------------------------------------------

def test_smooth_names_resolve_through_the_registry_and_unknown_inner_names_fail_in_one_line():
    assert ATTRIBUTIONS.canonical("Smooth:IG") == "smooth:integrated-gradients"
    assert ATTRIBUTIONS.canonical("smoothgrad_sq:integrated_gradients") == "smooth-sq:integrated-gradients"
    assert ATTRIBUTIONS.canonical("vargrad:smooth:gradient") == "vargrad:smooth:gradient"
    spec = ATTRIBUTIONS.get("smooth:ig")
    assert spec is ATTRIBUTIONS.get("smooth:integrated-gradients") and spec.name == "smooth:integrated-gradients"
    assert list(spec.options) == ["samples", "noise", "seed", "baseline", "steps", "rule", "score", "reduce"]
    assert "inner_samples" in ATTRIBUTIONS.get("smooth:expected-gradients").options  # its own `samples` kept apart
    assert "smooth:gradient" in ATTRIBUTIONS and "smooth:nothing" not in ATTRIBUTIONS
    assert not any(":" in n for n in ATTRIBUTIONS.names()) and set(ATTRIBUTIONS.prefixes()) == {
        "smooth", "smooth-sq", "vargrad"}
    with pytest.raises(FeatvisError, match=r"^unknown attribution method 'integrated-gradiens'; did you mean "
                                           r"'integrated-gradients'") as err:
        ATTRIBUTIONS.get("smooth:integrated-gradiens")
    assert "\n" not in str(err.value)
    with pytest.raises(FeatvisError, match=r"^unknown attribution method prefix 'smoth:'; did you mean 'smooth:'"):
        ATTRIBUTIONS.get("smoth:gradient")
    with pytest.raises(FeatvisError, match=r"unknown option for smooth:gradient 'step'"):
        spec = ATTRIBUTIONS.get("smooth:gradient").check({"step": "3"})


# --- exact identities ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("old", "new"), [("smoothgrad", "smooth:gradient"), ("smoothgrad-sq", "smooth-sq:gradient"),
                                          ("vargrad", "vargrad:gradient")])
def test_the_old_names_are_smooth_over_gradient_bit_for_bit(tiny, x, old, new):
    for opts in ({"seed": [4, 5, 6]}, {"seed": 9, "reduce": "none", "batch_size": 5}):
        a = saliency(tiny, x, [0, 1, 2], method=old, samples=4, **opts)
        b = saliency(tiny, x, [0, 1, 2], method=new, samples=4, **opts)
        assert torch.equal(a, b)


def test_smoothgrad_equals_a_copy_by_copy_reference_of_the_paper(tiny, x):
    ours = saliency(tiny, x, [0, 1, 2], method="smooth:gradient", samples=5, noise=0.2, seed=[4, 5, 6],
                    reduce="none", batch_size=4)
    ref = torch.zeros_like(x, dtype=torch.float64)
    net = copy.deepcopy(tiny).double()
    for i in range(3):  # one generator per image, one noisy copy at a time
        eps = torch.randn((5, 3, 32, 32), generator=torch.Generator().manual_seed(4 + i))
        sigma = 0.2 * (x[i].max() - x[i].min())
        for k in range(5):
            xk = (x[i] + eps[k] * sigma).double()[None].requires_grad_(True)
            ref[i] += torch.autograd.grad(net(xk)[0, i], xk)[0][0] / 5
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inner", ["integrated-gradients", "gradcam", "input-x-gradient"])
def test_without_noise_smooth_is_the_inner_method(tiny, x, inner):
    opts = {"steps": 8} if inner == "integrated-gradients" else {}
    plain = saliency(tiny, x, [0, 1, 2], method=inner, **opts)
    smooth = saliency(tiny, x, [0, 1, 2], method=f"smooth:{inner}", samples=3, noise=0.0, **opts)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-6)
    if "reduce" in ATTRIBUTIONS.get(inner).options:  # squares and variance per channel, then the inner's reduction
        per_channel = saliency(tiny, x, [0, 1, 2], method=inner, reduce="none", **opts)
        sq = saliency(tiny, x, [0, 1, 2], method=f"smooth-sq:{inner}", samples=3, noise=0.0, **opts)
        torch.testing.assert_close(sq, per_channel.pow(2).sum(1), rtol=1e-5, atol=1e-7)
    var = saliency(tiny, x, [0, 1, 2], method=f"vargrad:{inner}", samples=3, noise=0.0, **opts)
    assert var.abs().max() < 1e-6


def test_smooth_is_seeded_per_image_and_batches_equal_singles(tiny, x):
    fn = ATTRIBUTIONS.get("smooth:integrated-gradients")
    opts = {"samples": 3, "steps": 4, "baseline": "noise"}  # the inner method draws too: one seed per copy
    a = fn(tiny, x, [0, 1, 2], seed=[7, 8, 9], batch_size=5, **opts)
    assert torch.equal(a, fn(tiny, x, [0, 1, 2], seed=[7, 8, 9], batch_size=5, **opts))
    singles = torch.cat([fn(tiny, x[i:i + 1], i, seed=7 + i, batch_size=5, **opts) for i in range(3)])
    assert not torch.allclose(a, singles)  # an int seed is one generator for the batch, not per image ...
    singles = torch.cat([fn(tiny, x[i:i + 1], i, seed=[7 + i], batch_size=5, **opts) for i in range(3)])
    torch.testing.assert_close(a, singles, rtol=1e-5, atol=1e-6)  # ... a list is one per image
    assert not torch.allclose(a, fn(tiny, x, [0, 1, 2], seed=[7, 8, 10], **opts)[:3])


def test_all_noisy_copies_reach_the_inner_method_as_one_batch(tiny, x, monkeypatch):
    from featvis.attribution import gradient as module

    seen = []
    real = module.input_gradients
    monkeypatch.setattr(module, "input_gradients", lambda clf, images, *a, **k: seen.append(images.shape[0]) or
                        real(clf, images, *a, **k))
    saliency(tiny, x, [0, 1, 2], method="smooth:guided-backprop", samples=4)
    assert seen == [12]


def test_smooth_takes_a_unit_target(tiny, x):
    unit = "layer:conv2:3"
    plain = saliency(tiny, x, unit, method="gradient")
    smooth = saliency(tiny, x, unit, method="smooth:gradient", samples=2, noise=0.0)
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["smooth:guided-backprop", "vargrad:integrated-gradients", "smooth-sq:gradcam",
                                  "guided-gradcam"])
def test_smooth_entries_leave_no_trace_after_success_and_after_an_exception(name, monkeypatch):
    def state(net):
        return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()),
                sum("forward" in m.__dict__ for m in net.modules()), [m.training for m in net.modules()],
                [p.requires_grad for p in net.parameters()], [p.grad is None for p in net.parameters()])

    net = TinyConvNet().train()
    next(net.parameters()).requires_grad_(False)
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    clf.train()
    before = state(net)
    x = torch.rand(2, 3, 32, 32)
    opts = {"samples": 2} if ":" in name else {}
    maps = ATTRIBUTIONS.get(name)(clf, x, [0, 1], **opts, **({"steps": 4} if "integrated" in name else {}))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert state(net) == before and not x.requires_grad

    def boom(_x):
        raise RuntimeError("model failed")

    monkeypatch.setattr(net.fc, "forward", boom)
    with pytest.raises(RuntimeError, match="model failed"):
        ATTRIBUTIONS.get(name)(clf, x, [0, 1], **opts)
    monkeypatch.undo()
    assert state(net) == before
    from featvis.images import check_images

    with pytest.raises(FeatvisError, match=r"span \[.*\] but featvis takes pixels in \[0, 1\]"):
        check_images(x + 2)  # the noisy copies' allowance ended with the call


# --- Captum ----------------------------------------------------------------------------------------------------------

NT_TYPES = {"smooth": "smoothgrad", "smooth-sq": "smoothgrad_sq", "vargrad": "vargrad"}


@pytest.mark.parametrize("prefix", list(NT_TYPES))
@pytest.mark.parametrize("inner", ["gradient", "integrated-gradients"])
def test_smooth_equals_captum_noise_tunnel_on_the_same_noise(small, x, captum, monkeypatch, prefix, inner):
    samples, targets = 4, [0, 1, 2]
    opts = {"steps": 8} if inner == "integrated-gradients" else {}
    ours = saliency(small, x, targets, method=f"{prefix}:{inner}", samples=samples, seed=[1, 2, 3], reduce="none",
                    **opts)
    # Captum draws its noise with torch.normal, image-major (copy k of image i at i·samples + k): feed it ours.
    noise = (noisy_copies(x, samples=samples, noise=0.15, seed=[1, 2, 3]).view(samples, *x.shape) - x[None])
    fed = noise.transpose(0, 1).flatten(0, 1)
    monkeypatch.setattr(torch, "normal", lambda mean, std: fed.clone())
    base = captum.Saliency(small) if inner == "gradient" else captum.IntegratedGradients(small)
    kw = {"abs": False} if inner == "gradient" else {"baselines": 0.0, "n_steps": 8, "method": "gausslegendre"}
    ref = captum.NoiseTunnel(base).attribute(x, nt_type=NT_TYPES[prefix], nt_samples=samples, stdevs=1.0,
                                             target=targets, **kw)
    scale = ref.abs().max()
    err = ((ours - ref).abs().max() / scale).item()
    print(f"{prefix}:{inner} vs Captum NoiseTunnel: max |difference| / max |Captum| = {err:.1e}")
    assert err < 1e-4


def test_deconvnet_and_guided_gradcam_equal_captum_with_relu6(small, x, captum):
    ref_clf = captum_copy(small)
    targets = [3, 1, 0]
    ours = saliency(small, x, targets, method="deconvnet", reduce="none")
    ref = captum.Deconvolution(ref_clf).attribute(x, target=targets)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ours = saliency(small, x, targets, method="guided-backprop", reduce="none")
    ref = captum.GuidedBackprop(ref_clf).attribute(x, target=targets)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ours = saliency(small, x, targets, method="guided-gradcam", layer="conv2", interpolation="nearest",
                    reduce="none")
    ref = captum.GuidedGradCam(ref_clf, ref_clf.net.conv2).attribute(x, target=targets)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_deconvnet_ignores_the_forward_mask(small, x):
    """On conv–ReLU–average-pool–linear, the deconvnet's backward never looks at the activations: one map for
    every image (guided backprop's depends on them)."""
    t = [2, 2, 2]
    deconv = saliency(small, x, t, method="deconvnet", reduce="none")
    torch.testing.assert_close(deconv[1:], deconv[:1].expand(2, -1, -1, -1), rtol=1e-5, atol=1e-7)
    guided = saliency(small, x, t, method="guided-backprop", reduce="none")
    assert not torch.allclose(guided[1:], guided[:1].expand(2, -1, -1, -1))


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(tiny, x):
    cam = saliency(tiny, x, [0, 1, 2], method="gradcam", layer="conv2")
    gbp = saliency(tiny, x, [0, 1, 2], method="guided-backprop", reduce="none")
    ggc = saliency(tiny, x, [0, 1, 2], method="guided-gradcam", layer="conv2", reduce="none")
    torch.testing.assert_close(ggc, gbp * cam[:, None], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["deconvnet", "guided-gradcam"])
def test_modified_gradient_methods_refuse_non_relu_models_in_one_line(method):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    clf = fv.Classifier.wrap(net.eval(), labels=["a", "b"], input_size=16)
    with pytest.raises(FeatvisError, match=rf"^{method} is defined for ReLU networks and this model uses GELU \(1×\)"):
        saliency(clf, torch.rand(1, 3, 16, 16), 0, method=method)


# --- front ends ------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_runs_smooth_integrated_gradients_and_records_its_options(capsys, tmp_path, clf):
    import numpy as np

    from featvis.cli import main

    img = str(fv.samples.path("coffee"))
    code = main(["saliency", img, "--method", "smooth:ig", "-O", "steps=2", "-O", "samples=2", "-O", "noise=0.1",
                 "-o", str(tmp_path), "--json", "--device", "cpu", "--no-figures"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["summary"]["methods"] == ["smooth:integrated-gradients"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["methods"] == ["smooth:integrated-gradients"]
    assert manifest["params"]["options"] == {"steps": 2, "samples": 2, "noise": 0.1}
    saved = np.load(tmp_path / out["items"][0]["maps"]["smooth:integrated-gradients"])
    assert saved.shape == (224, 224) and np.isfinite(saved).all() and np.abs(saved).max() > 0


def test_featvis_methods_lists_the_smooth_families(capsys):
    from featvis.cli import main

    assert main(["methods", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"smooth:METHOD", "smooth-sq:METHOD", "vargrad:METHOD", "deconvnet", "guided-gradcam"} <= set(records)
    assert list(records["smooth:METHOD"]["options"]) == ["samples", "noise", "seed"]
    assert records["smooth:METHOD"]["aliases"] == ["smoothgrad:METHOD"]
