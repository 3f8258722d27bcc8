"""Recipes: what combines tasks and pages, above both — the demo (every task on the bundled photos and one report),
the atlas (visualizations and dataset examples of every channel, one browsable page), and the public functions that
run a task over inputs and hand back its result (`evaluate`, `dataset_examples`). Front ends call these; tasks and
the report never import them.
"""

from featvis.recipes.evaluate import EvaluationResult, evaluate
from featvis.recipes.examples import dataset_examples

__all__ = ["EvaluationResult", "dataset_examples", "evaluate"]
