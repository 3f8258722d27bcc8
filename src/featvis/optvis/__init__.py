"""Feature visualization: synthesize images that maximize a class, channel, neuron or layer.

Four small parts — objectives (what), parameterizations (how the image is represented), transforms (what it
must survive) — and one render loop. Presets combine them: the lab's class visualization, Lucid's recipe, MACO,
Yosinski et al.'s regularizers, plain pixels. Feature accentuation starts from a photo instead of noise.
"""

from featvis.optvis import objectives, param, stats, transforms
from featvis.optvis.accentuation import AccentuationResult, accentuate
from featvis.optvis.objectives import Objective
from featvis.optvis.presets import PRESETS, RenderSpec, class_visualization, feature_visualization, visualize
from featvis.optvis.render import RenderResult, StepState, render, render_steps
from featvis.optvis.stats import spectrum_slope

__all__ = ["PRESETS", "AccentuationResult", "Objective", "RenderResult", "RenderSpec", "StepState", "accentuate",
           "class_visualization", "feature_visualization", "objectives", "param", "render", "render_steps",
           "spectrum_slope", "stats", "transforms", "visualize"]
