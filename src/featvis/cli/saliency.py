"""`featvis saliency` and `featvis sanity`."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import InputsArg, task_command

MethodOpt = Annotated[str, typer.Option("--method", help="Method name(s), comma-separated (see `featvis methods`).",
                                        metavar="NAMES")]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Class index or name, 'true' (each image's "
                                               "label), or none for the predicted class.", metavar="CLASS")]


def split(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


@task_command(output="featvis-saliency")
def saliency(
    inputs: InputsArg,
    method: MethodOpt = "gradient",
    target: TargetOpt = None,
    metrics: Annotated[bool, typer.Option("--metrics", help="Deletion/insertion AUC per map (RISE protocol).")] = False,
    metric_steps: Annotated[int | None, typer.Option(min=2, help="Deletion/insertion steps (default: the image "
                                                     "side, RISE's protocol).", metavar="N")] = None,
    score: Annotated[str, typer.Option(help="What is explained: logit, log-prob or prob.", metavar="SCORE")] = "logit",
    shared_scale: Annotated[bool, typer.Option("--shared-scale", help="One colour scale across methods.")] = False,
    figures: Annotated[bool, typer.Option(help="A figure per image (~0.4 s each): --no-figures for data sets of "
                                          "thousands (maps, records and summary are still written).")] = True,
    options: dict | None = None,
):
    """Saliency maps: one figure per image (methods side by side), raw maps as .npy, per-image records."""
    from featvis.tasks import SaliencyTask

    return SaliencyTask(methods=split(method), target=target, metrics=metrics, metric_steps=metric_steps,
                        score=score, shared_scale=shared_scale, figures=figures, options=options or {})


@task_command(output="featvis-sanity")
def sanity(
    inputs: InputsArg,
    method: MethodOpt = "gradient,guided-backprop,gradcam",
    target: TargetOpt = None,
    independent: Annotated[bool, typer.Option(help="Also randomize each block alone.")] = True,
    randomization_seed: Annotated[int, typer.Option(help="Seed of the re-initialization.", metavar="N")] = 0,
    options: dict | None = None,
):
    """Do the maps change when the model is destroyed? The model-randomization sanity check of Adebayo and
    colleagues (2018), per image and summarized per method."""
    from featvis.tasks import SanityTask

    return SanityTask(methods=split(method), target=target, independent=independent,
                      randomization_seed=randomization_seed, options=options or {})


@task_command(output="featvis-evaluate")
def evaluate(
    inputs: InputsArg,
    method: MethodOpt = "all",
    metric: Annotated[str, typer.Option("--metric", help="default (every metric but the expensive randomization "
                                        "check), all, or names (see `featvis metrics`).", metavar="NAMES")] = "default",
    target: TargetOpt = None,
    examples: Annotated[int, typer.Option(min=0, max=16, help="Images in the report's example-maps strip.",
                                          metavar="N")] = 4,
    options: dict | None = None,
):
    """Which explanation to trust for this model: every method × every faithfulness metric over the inputs, with
    bootstrap intervals and the random-map baseline (-O method.option=V, -O road.option=V, -O option=V)."""
    from featvis.tasks import EvaluateTask

    return EvaluateTask(methods="all" if method == "all" else split(method),
                        metrics=metric if metric in ("default", "all") else split(metric), target=target,
                        examples=examples, options=options or {})
