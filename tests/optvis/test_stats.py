import pytest
import torch

import featvis as fv
from featvis.optvis.stats import power_law_noise, radial_power, spectrum_slope


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0, 3.0])
def test_slope_of_power_law_noise(alpha):
    x = power_law_noise(224, alpha, 8, seed=1)
    slope = spectrum_slope(x)
    assert slope.shape == (8,)
    assert (slope + alpha).mean().abs() < 0.05, slope  # unbiased: −α within 0.05 on average over 8 draws
    assert (slope + alpha).abs().max() < 0.15, slope  # and within 0.15 for every draw


def test_slope_ignores_scale_and_offset_and_orders_blur():
    x = power_law_noise(96, 2.0, 1, seed=3).expand(1, 3, 96, 96)
    torch.testing.assert_close(spectrum_slope(3 * x + 7), spectrum_slope(x))
    blurred = fv._ops.gaussian_blur(x, 1.5)
    assert spectrum_slope(blurred) < spectrum_slope(x) - 0.5  # blur removes high frequencies: steeper


def test_radial_power_rings_and_errors():
    freqs, power = radial_power(torch.rand(2, 3, 32, 32))
    assert freqs.shape == (16,) and power.shape == (2, 16) and float(freqs[-1]) == 0.5
    with pytest.raises(fv.FeatvisError, match="band"):
        spectrum_slope(torch.rand(1, 3, 32, 32), band=(0.3, 0.2))
    with pytest.raises(fv.FeatvisError, match="at least 8"):
        spectrum_slope(torch.rand(1, 3, 4, 4))
