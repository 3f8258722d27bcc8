"""`featvis saliency`, `featvis sanity` and `featvis evaluate`: their options are the tasks' parameters."""

from __future__ import annotations

from featvis.cli._common import InputsArg, task_command, task_from
from featvis.tasks import EvaluateTask, SaliencyTask, SanityTask


@task_command(SaliencyTask, output="featvis-saliency")
def saliency(inputs: InputsArg, fields: dict, options: dict):
    """Saliency maps: one figure per image (methods side by side), raw maps as .npy, per-image records."""
    return task_from(SaliencyTask, fields, options)


@task_command(SanityTask, output="featvis-sanity")
def sanity(inputs: InputsArg, fields: dict, options: dict):
    """Do the maps change when the model is destroyed? The model-randomization sanity check of Adebayo and
    colleagues (2018), per image and summarized per method."""
    return task_from(SanityTask, fields, options)


@task_command(EvaluateTask, output="featvis-evaluate")
def evaluate(inputs: InputsArg, fields: dict, options: dict):
    """Which explanation to trust for this model: every method × every faithfulness metric over the inputs, with
    bootstrap intervals and the random-map baseline (-O method.option=V, -O road.option=V, -O option=V)."""
    return task_from(EvaluateTask, fields, options)
