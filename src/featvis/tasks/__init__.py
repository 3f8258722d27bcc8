"""Tasks: one execution layer under the CLI, the web API, the demo and the report.

A task (classify, saliency, sanity, fool, robustness, classvis, features, ...) declares typed parameters, runs a
batch, and says how its run is summarized and drawn. `run_task` runs one over inputs into a run folder, resumable
and on any executor ("local" or "ray"); `read_run` reads a folder back in the documented results format.

Example:
    >>> from featvis.tasks import FoolTask, run_task
    >>> run = run_task(FoolTask(method="pgd", target=None), ["photos/"], "out/fool", clf=clf)
    >>> run.summary["success_rate"]
"""

from featvis.tasks import ray_executor as _ray  # noqa: F401  (registers the "ray" executor; imports no Ray)
from featvis.tasks.base import TASKS, Batch, Output, Section, Table, Task, register
from featvis.tasks.classify import ClassifyTask
from featvis.tasks.concepts import ConceptsTask
from featvis.tasks.evaluate import EvaluateTask
from featvis.tasks.examples import ExamplesTask
from featvis.tasks.executors import EXECUTORS, Executor
from featvis.tasks.fool import FoolTask
from featvis.tasks.optvis import AccentuateTask, ClassvisTask, FeaturesTask
from featvis.tasks.results import SCHEMA, Run, read_run
from featvis.tasks.robustness import RobustnessTask
from featvis.tasks.runner import Event, run_task
from featvis.tasks.saliency import SaliencyTask, SanityTask
from featvis.tasks.tcav import TcavTask

__all__ = [
           "EXECUTORS",
           "SCHEMA",
           "TASKS",
           "AccentuateTask",
           "Batch",
           "ClassifyTask",
           "ClassvisTask",
           "ConceptsTask",
           "EvaluateTask",
           "Event",
           "ExamplesTask",
           "Executor",
           "FeaturesTask",
           "FoolTask",
           "Output",
           "RobustnessTask",
           "Run",
           "SaliencyTask",
           "SanityTask",
           "Section",
           "Table",
           "Task",
           "TcavTask",
           "read_run",
           "register",
           "run_task",
]
