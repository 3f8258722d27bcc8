import pytest
import torch
from torch.func import functional_call

import featvis as fv
from featvis.images import quantize
from featvis.optvis import class_visualization
from featvis.optvis import param as P
from featvis.optvis.stats import spectrum_slope


def test_maco_parameterization_gradcheck():
    prm = P.MacoImage(8, 2, seed=[0, 1]).double()
    phase = prm.phase.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda ph: functional_call(prm, {"phase": ph}, ()), (phase,))
    out = prm()
    assert out.shape == (2, 3, 8, 8) and float(out.min()) > 0 and float(out.max()) < 1
    assert not torch.allclose(out[0], out[1])  # per-image seeds


def test_photo_spectrum_starts_at_the_photo_and_is_differentiable():
    photo = fv.samples.load("coffee", size=24)
    assert (P.PhotoSpectrum(photo)() - photo).abs().max() < 2e-3  # exact up to the logit clamp ε = 1e-3
    small = P.PhotoSpectrum(photo[..., :6, :6]).double()
    phase = small.phase.detach().clone().requires_grad_(True)
    gain = (0.1 * torch.randn(phase.shape, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda ph, g: functional_call(small, {"phase": ph, "gain": g}, ()),
                                    (phase, gain))


def test_maco_magnitude_is_the_natural_template_at_any_size():
    template = P.maco_magnitude(256)
    assert template.shape == (3, 256, 129)
    for size in (64, 161, 300):
        mag = P.maco_magnitude(size)
        assert mag.shape == (3, size, size // 2 + 1) and (mag >= 0).all()
        imgs = P.MacoImage(size, 3, seed=[0, 1, 2])().detach()
        slope = spectrum_slope(imgs)
        photos = torch.tensor([-3.1, -1.9])  # the bundled photos measure −2.2 … −3.0 on this band
        assert ((slope > photos[0]) & (slope < photos[1])).all(), (size, slope)


def test_maco_is_seeded_and_batch_independent(clf):
    small = {"steps": 3, "size": 40, "views": 2, "crop_size": 64}
    a = class_visualization(clf, [1, 9], preset="maco", seed=4, **small)
    b = class_visualization(clf, [1, 9], preset="maco", seed=4, **small)
    assert torch.equal(a.images, b.images)
    alone = class_visualization(clf, 9, preset="maco", seed=4, **small)
    torch.testing.assert_close(alone.images[0], a.images[1], atol=1e-3, rtol=0)  # batch-mates do not matter
    other = class_visualization(clf, [1, 9], preset="maco", seed=5, **small)
    assert not torch.allclose(other.images, a.images)
    assert a.transparency.shape == (2, 40, 40) and (a.transparency >= 0).all() and a.transparency.sum() > 0


def test_maco_transparency_follows_the_crops(clf):
    res = class_visualization(clf, 1, preset="maco", steps=2, size=64, views=2, box_min=0.3, box_max=0.3, loc_std=0.0,
                              crop_size=32)
    t = res.transparency[0]
    inside, outside = t[24:40, 24:40].mean(), torch.cat([t[:8].flatten(), t[-8:].flatten()]).mean()
    assert inside > 0 and outside == 0  # a centred 30 % crop never sees the border rows


@pytest.mark.slow
def test_maco_class_visualization_reaches_the_class(clf):
    res = class_visualization(clf, [963], preset="maco", steps=40, size=96, views=2, crop_size=128)  # pizza
    with torch.no_grad():
        p = clf(quantize(res.images)).softmax(-1)[0, 963]
    assert p > 0.5, p  # chance is 0.001
