import pytest
import torch

import featvis as fv
from featvis._ops import gaussian_blur
from featvis.optvis import objectives as obj
from featvis.optvis import param as P
from featvis.optvis import transforms as T
from featvis.optvis.render import render as render_fn
from featvis.optvis.render import render_steps

from _models import TinyConvNet


def test_gradcheck_differentiable_pieces():
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: gaussian_blur(z, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda z: P.to_valid(z, True, "sigmoid"), (x,))
    gen = torch.Generator().manual_seed(0)
    for t in (T.random_rotate([7.0]), T.random_scale([1.1]), T.jitter(3), T.pad(2), T.roll_jitter(2)):
        assert torch.autograd.gradcheck(lambda z, t=t: t(z, torch.Generator().manual_seed(1)), (x,)), t
    small = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for t in (T.translate(3), T.random_affine([1.1], [5.0]), T.random_crops(5, (0.5, 0.9)), T.noise(0.1)):
        assert torch.autograd.gradcheck(lambda z, t=t: t(z, torch.Generator().manual_seed(1)), (small,)), t
    pair = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for t in (T.jitter(2), T.random_crops(5, (0.5, 0.9))):  # one draw per image
        assert torch.autograd.gradcheck(lambda z, t=t: t(z, [torch.Generator().manual_seed(s) for s in (1, 2)]),
                                        (pair,)), t
    fft = P.FFTImage(8, 1, generator=gen).double()
    spec = fft.spectrum.detach().clone().requires_grad_(True)

    def through(s):
        spec_c = torch.view_as_complex(s) * fft.scale.double()
        return torch.fft.irfft2(spec_c, s=(8, 8), norm="backward")

    assert torch.autograd.gradcheck(through, (spec,))


def test_fft_parameterization_can_fit_a_real_photo(clf):
    target = fv.samples.load("chelsea", size=64)
    prm = P.FFTImage(64, 1, generator=torch.Generator().manual_seed(0), decorrelate=True)
    opt = torch.optim.Adam(prm.parameters(), lr=0.05)
    for _ in range(300):
        loss = (prm() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    psnr = 10 * torch.log10(1 / (prm() - target).pow(2).mean())
    assert psnr > 25, psnr


def test_objective_algebra():
    ctx = obj.Context(images=torch.zeros(2, 3, 4, 4), acts={"a": torch.arange(2 * 3 * 2 * 2.0).view(2, 3, 2, 2)})
    ch = obj.channel("a", 1)
    torch.testing.assert_close(ch(ctx), torch.tensor([5.5, 17.5]))
    combo = 2 * ch - obj.channel("a", [0, 2])
    torch.testing.assert_close(combo(ctx), torch.tensor([2 * 5.5 - 1.5, 2 * 17.5 - 21.5]))
    assert combo.layers == ("a",)
    torch.testing.assert_close(obj.neuron("a", 2, x=1, y=0)(ctx), torch.tensor([9.0, 21.0]))
    torch.testing.assert_close(obj.layer("a")(ctx), ctx.acts["a"].pow(2).flatten(1).mean(1))
    torch.testing.assert_close(obj.direction("a", torch.tensor([1.0, 0, 0]))(ctx), torch.tensor([1.5, 13.5]))
    with pytest.raises(fv.FeatvisError, match="channel 5 is out of range"):
        obj.channel("a", 5)(ctx)
    with pytest.raises(fv.FeatvisError, match="multiply by numbers"):
        ch * ch


def test_diversity_prefers_different_images():
    same = torch.ones(2, 4, 3, 3)
    diff = torch.stack([torch.eye(4)[0].view(4, 1, 1).expand(4, 3, 3), torch.eye(4)[1].view(4, 1, 1).expand(4, 3, 3)])
    d_same = obj.diversity("a")(obj.Context(images=torch.zeros(2, 3, 4, 4), acts={"a": same}))
    d_diff = obj.diversity("a")(obj.Context(images=torch.zeros(2, 3, 4, 4), acts={"a": diff}))
    assert (d_diff > d_same).all()


def test_layer_objective_never_runs_later_layers():
    net = TinyConvNet()
    clf = fv.Classifier.wrap(net, labels=list("abcd"), input_size=32)
    before = dict(net.calls)
    render_fn(clf, obj.channel("conv1", 2), size=32, steps=3, transforms=[], seed=0)
    assert net.calls["conv1"] - before["conv1"] == 4  # steps + the initial evaluation
    assert net.calls["conv2"] == before["conv2"] and net.calls["fc"] == before["fc"]


def test_render_is_deterministic_and_increases_the_objective(clf):
    o = obj.channel("blocks.4", 3)
    a = render_fn(clf, o, size=64, steps=12, seed=5)
    b = render_fn(clf, o, size=64, steps=12, seed=5)
    assert torch.equal(a.images, b.images)
    first = render_fn(clf, o, size=64, steps=0, seed=5)
    assert a.scores.item() > first.scores.item() + 0.5
    assert a.images.shape == (1, 3, 64, 64) and a.images.min() >= 0 and a.images.max() <= 1


def test_render_steps_yields_progress_and_snapshots(clf):
    states = list(render_steps(clf, obj.channel("blocks.2", 0), size=48, steps=4, seed=0))
    assert [s.step for s in states] == [0, 1, 2, 3, 4]
    res = render_fn(clf, obj.channel("blocks.2", 0), size=48, steps=4, snapshots=[0, 2, 4])
    assert sorted(res.snapshots) == [0, 2, 4]


def test_fixed_size_transforms_keep_one_shape():
    x = torch.rand(2, 3, 32, 32)
    shapes = {tuple(T.compose(T.fixed_size_transforms())(x, torch.Generator().manual_seed(s)).shape)
              for s in range(20)}
    assert shapes == {(2, 3, 44, 44)}  # pad 12 per side, minus the 8 and 4 px jitter crops: always +12
    zoom = T.random_affine([2.0], [0.0])(torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4), None)
    assert zoom.shape == (1, 3, 4, 4) and zoom[0, 0, 1:3, 1:3].std() < torch.arange(16.0).std()


def test_per_image_generators_draw_per_image_and_match_single_renders():
    x = torch.rand(2, 3, 20, 20)

    def gens():
        return [torch.Generator().manual_seed(s) for s in (3, 4)]

    out = T.compose(T.fixed_size_transforms())(x, gens())
    alone = T.compose(T.fixed_size_transforms())(x[1:], [torch.Generator().manual_seed(4)])
    torch.testing.assert_close(out[1:], alone)  # image 1's draw depends only on its own generator
    same = T.random_crops(12, (0.3, 0.6))(x[:1].expand(2, -1, -1, -1), gens())
    assert not torch.allclose(same[0], same[1])  # the same image, two different draws


def test_random_crops_cut_the_expected_box():
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    full = T.random_crops(8, (1.0, 1.0), 0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(full, x)  # a centred crop of the whole image is the image
    half = T.random_crops(4, (0.5, 0.5), 0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(half, x[..., 2:6, 2:6])  # the centre half, pixel for pixel
    inside = T.random_crops(8, (0.3, 0.5), None)
    for s in range(10):  # loc_std=None keeps every crop inside the image: no black border
        assert inside(x + 1, torch.Generator().manual_seed(s)).min() > 0.5


def test_lucent_transforms_follow_lucent_sizes():
    x = torch.rand(1, 3, 224, 224)
    sizes = {T.compose(T.lucent_transforms())(x, torch.Generator().manual_seed(s)).shape[-1] for s in range(30)}
    assert min(sizes) >= 248 and max(sizes) <= 273 and len(sizes) > 3
    for seed in range(6):
        shifted = T.translate(4)(torch.ones(1, 1, 6, 6), torch.Generator().manual_seed(seed))
        dy, dx = int((shifted[0, 0, :, -1] == 0).sum()), int((shifted[0, 0, -1] == 0).sum())
        assert shifted.shape == (1, 1, 6, 6) and 0 <= dy < 4 and 0 <= dx < 4  # same size, shift of 0..3
        assert shifted[..., dy:, dx:].eq(1).all() and shifted.sum() == (6 - dy) * (6 - dx)  # black fill
