"""featvis: see what a pretrained image classifier sees, how easily it is fooled, and what it has learned.

Example:
    >>> import featvis as fv
    >>> clf = fv.load_model()                      # EfficientNet-Lite0, shipped ImageNet weights
    >>> x = fv.load_image("cat.jpg", clf)          # [1, 3, 224, 224] in [0, 1]
    >>> clf.predict(x, k=5)
"""

from types import ModuleType as _ModuleType

from featvis import concepts, samples
from featvis._alloc import tune_allocator
from featvis.adversarial import FoolingResult, RobustnessResult, autoattack, fool, robustness
from featvis.attribution import explain, saliency
from featvis.attribution.units import unit
from featvis.concepts import tcav
from featvis.data import Dataset
from featvis.errors import FeatvisError
from featvis.images import load_image, load_images, quantize, save_image
from featvis.layers import capture, default_layer, find_layer, forward_until, list_layers
from featvis.models import Classifier, Labels, Prediction, available_models, imagenet_labels, load_model
from featvis.optvis import (
    AccentuationResult,
    accentuate,
    class_visualization,
    feature_visualization,
    objectives,
    render,
)
from featvis.recipes import EvaluationResult, dataset_examples, evaluate
from featvis.recipes.concepts import concepts as _concepts_recipe
from featvis.tasks import read_run, run_task

__version__ = "0.1.0"


class _ConceptsPackage(_ModuleType):
    """`featvis.concepts` is the algorithms' package (`fv.concepts.split_at`, `fv.concepts.fit_concepts`, ...)
    and, called, the dataset recipe: `fv.concepts(clf, "photos/", "out/")` (`featvis.recipes.concepts.concepts`)."""

    def __call__(self, *args, **kwargs):
        return _concepts_recipe(*args, **kwargs)


concepts.__class__ = _ConceptsPackage

__all__ = [
    "AccentuationResult",
    "Classifier",
    "Dataset",
    "EvaluationResult",
    "FeatvisError",
    "FoolingResult",
    "Labels",
    "Prediction",
    "RobustnessResult",
    "__version__",
    "accentuate",
    "autoattack",
    "available_models",
    "capture",
    "class_visualization",
    "concepts",
    "dataset_examples",
    "default_layer",
    "evaluate",
    "explain",
    "feature_visualization",
    "find_layer",
    "fool",
    "forward_until",
    "imagenet_labels",
    "list_layers",
    "load_image",
    "load_images",
    "load_model",
    "objectives",
    "quantize",
    "read_run",
    "render",
    "robustness",
    "run_task",
    "saliency",
    "samples",
    "save_image",
    "tcav",
    "tune_allocator",
    "unit",
]
