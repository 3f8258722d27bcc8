"""Where classifiers come from: the Classifier wrapper, the model zoo, safe checkpoints and class labels."""

from featvis.models.checkpoint import load_checkpoint
from featvis.models.classifier import Classifier, Prediction, Preprocess, frozen
from featvis.models.labels import Labels, imagenet_labels
from featvis.models.source import ModelSource
from featvis.models.zoo import DEFAULT_MODEL, MODELS, SOURCES, available_models, load_model, rebuild

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "SOURCES",
    "Classifier",
    "Labels",
    "ModelSource",
    "Prediction",
    "Preprocess",
    "available_models",
    "frozen",
    "imagenet_labels",
    "load_checkpoint",
    "load_model",
    "rebuild",
]
