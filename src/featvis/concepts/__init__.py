"""Concepts: what a classifier has learned, as directions in a layer's activation space that a person can name.

CRAFT (Fel et al., CVPR 2023): `split_at` cuts the classifier into g (images → a non-negative layer) and h (that
layer → logits); `fit_concepts` factorizes the activations of random crops of a class's images into a bank of k
concepts (NMF); `concept_importance` ranks them by total Sobol indices for the class; `concept_maps` shows where
each is present in an image; `concept_deletion` / `concept_insertion` test the ranking against random orders.
TCAV (Kim et al., ICML 2018): concept activation vectors from user concept sets (`linear_cav`, `fast_cav`) and TCAV
scores with a t-test against random CAVs (`tcav`).

Shared arguments: `clf` a `featvis.Classifier`; `split` a `Split` of it; `concepts` a `Concepts` bank fitted at the
split's layer; `images` [B, 3, H, W] in [0, 1]; `class_id` the class index whose logit is explained.

Example:
    >>> split = fv.concepts.split_at(clf)
    >>> bank = fv.concepts.fit_concepts(split, cat_images, k=10)
    >>> importance = fv.concepts.concept_importance(split, bank, cat_images, 281)
"""

# CRAFT
from featvis.concepts.craft import (
    CROP_FRACTION,
    CROPS_PER_IMAGE,
    MIN_IMAGES,
    Concepts,
    factorize,
    fit_concepts,
    fit_concepts_streamed,
    random_crops,
    transform,
)
from featvis.concepts.faithfulness import ConceptCurves, concept_deletion, concept_insertion
from featvis.concepts.maps import concept_maps
from featvis.concepts.sobol import (
    concept_importance,
    concept_importance_per_image,
    jansen_total,
    sobol_design,
)
from featvis.concepts.split import Split, craft_layer, split_at
from featvis.concepts.visual import concept_objective

# isort: split
# --- TCAV (concepts/cav.py, concepts/tcav.py): its names are kept by the TCAV side; add new ones here. ---
from featvis.concepts.cav import CAV, fast_cav, layer_activations, linear_cav, random_subsets
from featvis.concepts.tcav import (
    ConceptScore,
    TCAVResult,
    directional_derivatives,
    layer_gradients,
    tcav,
    tcav_from_gradients,
    ttest,
)

# --- end TCAV ---

__all__ = [
    "CAV",
    "CROPS_PER_IMAGE",
    "CROP_FRACTION",
    "MIN_IMAGES",
    "ConceptCurves",
    "ConceptScore",
    "Concepts",
    "Split",
    "TCAVResult",
    "concept_deletion",
    "concept_importance",
    "concept_importance_per_image",
    "concept_insertion",
    "concept_maps",
    "concept_objective",
    "craft_layer",
    "directional_derivatives",
    "factorize",
    "fast_cav",
    "fit_concepts",
    "fit_concepts_streamed",
    "jansen_total",
    "layer_activations",
    "layer_gradients",
    "linear_cav",
    "random_crops",
    "random_subsets",
    "sobol_design",
    "split_at",
    "tcav",
    "tcav_from_gradients",
    "transform",
    "ttest",
]
