"""The saliency and fooling figures as the report shows them: an informative difference panel, readable text.

(figures.py is drawn for the report; its tests live beside the report's.)
"""

from __future__ import annotations

import dataclasses
import io

import matplotlib.text
import numpy as np
import pytest
import torch
from PIL import Image

import featvis as fv
from featvis.adversarial import fool
from featvis.figures import compare_methods, figure_png, fooling_panels, saliency_panels
from featvis.images import to_uint8
from featvis.report import CONTENT_PX, MIN_TEXT_PX

from _models import TinyConvNet

TASK_DPI = 110  # the dpi the saliency and fool tasks save their figures at (tasks/saliency.py, tasks/fool.py)


@pytest.fixture(scope="module")
def tiny():
    return fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=32)


@pytest.fixture(scope="module")
def fooled(tiny):
    x = torch.stack([fv.samples.load("coffee", tiny)[0], fv.samples.load("chelsea", tiny)[0]])
    return fool(tiny, x, None, method="pgd", eps=3 / 255, steps=3)


def _smallest_text_px(fig, dpi: int = TASK_DPI) -> tuple[float, int]:
    """(size in CSS px of the figure's smallest text where the report shows it, the PNG's width)."""
    fig.canvas.draw()
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text)
             if t.get_text().strip() and t.get_visible() and (t.axes is None or t.axes.axison or t is t.axes.title)]
    width = Image.open(io.BytesIO(figure_png(fig, dpi=dpi))).width
    shown = min(width, CONTENT_PX)  # the report shows a figure at its pixel size, narrowed to the content column
    return min(sizes) * dpi / 72 * shown / width, width


def test_fooling_difference_panel_is_auto_scaled_and_says_by_how_much(fooled):
    fig = fooling_panels(fooled)
    rows = np.array(fig.axes).reshape(2, 4)
    for i in range(2):
        delta = fooled.images[i] - fooled.original[i]
        gain = 0.5 / float(delta.abs().max())
        auto = rows[i, 2].images[0].get_array()
        assert np.array_equal(auto, to_uint8((0.5 + gain * delta).clamp(0, 1)))
        assert int(auto.max()) - int(auto.min()) >= 200  # the plain 0.5 + Δ spanned 7 grey levels at ±3/255
        assert rows[i, 2].get_title().startswith(f"difference ×{gain:.3g}")
        ten = rows[i, 3].images[0].get_array()
        assert np.array_equal(ten, to_uint8((0.5 + 10 * delta).clamp(0, 1)))
        assert rows[i, 3].get_title().startswith("difference ×10")
    assert "largest change" in fig.get_suptitle()


def test_fooling_difference_panel_with_no_change_is_plain_grey(fooled):
    one = fooled.select(0)
    same = dataclasses.replace(one, images=one.original.clone())
    fig = fooling_panels(same)
    assert (fig.axes[2].images[0].get_array() == to_uint8(torch.full((3, 1, 1), 0.5))[0, 0]).all()
    assert fig.axes[2].get_title().startswith("difference ×1 ")


@pytest.mark.parametrize("methods", [1, 2, 4, 7])
def test_saliency_figure_text_is_readable_in_the_report(fooled, methods):
    x = fooled.original[0]
    maps = {f"method-{i}": torch.rand(32, 32, generator=torch.Generator().manual_seed(i)) for i in range(methods)}
    if methods == 1:
        fig = saliency_panels(x[None], maps["method-0"][None], ["tabby cat (281) p=0.912"], method="gradient")
    else:
        fig = compare_methods(x, maps, "tabby cat (281) p=0.912", scores={m: "del 0.123 · ins 0.456" for m in maps})
    px, width = _smallest_text_px(fig)
    assert px >= MIN_TEXT_PX, f"smallest text {px:.1f} px at {width} px wide"


def test_fooling_figure_text_is_readable_in_the_report(fooled):
    px, width = _smallest_text_px(fooling_panels(fooled))
    assert px >= MIN_TEXT_PX and width <= CONTENT_PX
