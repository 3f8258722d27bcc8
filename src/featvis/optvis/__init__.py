"""Feature visualization: synthesize images that maximize a class, channel, neuron or layer.

Four small parts — objectives (what), parameterizations (how the image is represented), transforms (what it
must survive) — and one render loop. Presets combine them: the lab's class visualization, Lucid's recipe,
Yosinski et al.'s regularizers, plain pixels.
"""

from featvis.optvis import objectives, param, transforms
from featvis.optvis.objectives import Objective
from featvis.optvis.presets import PRESETS, class_visualization, feature_visualization, visualize
from featvis.optvis.render import RenderResult, StepState, render, render_steps

__all__ = ["PRESETS", "Objective", "RenderResult", "StepState", "class_visualization", "feature_visualization",
           "objectives", "param", "render", "render_steps", "transforms", "visualize"]
