"""Concept Activation Vectors: a direction in a layer's activation space that points from random images to a concept.

Kim et al., "Interpretability Beyond Feature Attribution: Quantitative Testing with Concept Activation Vectors
(TCAV)", ICML 2018: the CAV is the normal of a linear classifier that separates the activations of concept images
from those of random images. FastCAV (Schnake et al., ICML 2025) takes the difference of the concept mean and the
mean of all (concept + random) activations instead: no training, equivalent to an SVM's normal under the paper's
assumptions, and orders of magnitude faster.

Activations are flattened per image ([N, D]); every CAV here is a unit vector [D] pointing towards the concept.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.layers import capture, find_layer, forward_until
from featvis.models.freeze import frozen

LINEAR_METHODS = ("sgd", "logistic")
TEST_FRACTION = 0.33  # share held out to measure a CAV's accuracy: Captum's DefaultClassifier's test_split_ratio
# Captum's DefaultClassifier (captum/concept/_utils/classifier.py): SGDClassifier(alpha=0.01, max_iter=1000,
# tol=1e-3), hinge loss (scikit-learn's default, as tensorflow/tcav's "linear" model). Same settings, so the
# two libraries' CAVs can be compared.
SGD_OPTIONS = {"loss": "hinge", "alpha": 0.01, "max_iter": 1000, "tol": 1e-3}
LOGISTIC_MAX_ITER = 1000  # lbfgs on thousands of features needs more than scikit-learn's default 100


@dataclass(frozen=True)
class CAV:
    """One concept activation vector: a unit direction [D] in a layer's flattened activations.

    `accuracy` is the linear classifier's accuracy on held-out activations (`linear_cav`), or for FastCAV the
    in-sample accuracy of the mean-difference classifier (its boundary through the pooled mean).
    """

    vector: torch.Tensor
    layer: str
    concept: str
    counterexample: str
    method: str
    accuracy: float
    seed: int | None = None


def layer_activations(model: nn.Module, images: torch.Tensor, layers: str | Sequence[str], *,
                      batch_size: int = 32, name: str = "images") -> dict[str, torch.Tensor]:
    """Each layer's activations of `images`, flattened per image: {layer: [N, D]}, one forward per batch.

    One layer: the forward stops right after it (`featvis.layers.forward_until`); several: one full forward
    records them all. A module called several times gives its first call. `name` says which image set an error is about.
    """
    names = [find_layer(model, n)[0] for n in ([layers] if isinstance(layers, str) else layers)]
    check_images(images, name)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad(), frozen(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            if len(names) == 1:  # the forward stops right after the layer
                acts = {names[0]: forward_until(model, batch, names[0])}
            else:  # capture clones what it records: forward_until's later layers could overwrite it in place
                with capture(model, names, detach=True) as cap:
                    model(batch)
                acts = {n: cap.spatial(cap.calls[n][0]) for n in names}
            for n in names:
                parts[n].append(acts[n].flatten(1))  # [b, C, H, W] -> [b, C*H*W]
    return {n: torch.cat(p) for n, p in parts.items()}


def check_images(images: object, name: str) -> None:
    """Raise a one-line error unless `images` is a [N, 3, H, W] tensor with N >= 2 (a CAV needs two per side)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise FeatvisError(f"concept {name!r}: expected images [N, 3, H, W], got {shape}; stack the set's images "
                           "into one tensor")
    if images.shape[0] < 2:
        raise FeatvisError(f"concept {name!r} has {images.shape[0]} image(s); a CAV needs at least 2 (tens are "
                           "better): add images to the set")


def _check_pair(concept_acts: torch.Tensor, random_acts: torch.Tensor, concept: str, counterexample: str) -> None:
    for acts, name in ((concept_acts, concept), (random_acts, counterexample)):
        if not isinstance(acts, torch.Tensor) or acts.ndim != 2:
            shape = list(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise FeatvisError(f"concept {name!r}: expected activations [N, D], got {shape}; flatten them per image "
                               "(acts.flatten(1))")
        if acts.shape[0] < 2:
            raise FeatvisError(f"concept {name!r} has {acts.shape[0]} example(s); a CAV needs at least 2 per side: "
                               "add images to the set")
        if not torch.isfinite(acts).all():
            raise FeatvisError(f"concept {name!r}: its activations hold NaN or inf; check the images and the layer")
    if concept_acts.shape[1] != random_acts.shape[1]:
        raise FeatvisError(f"concept {concept!r} has {concept_acts.shape[1]} features per image but {counterexample!r} "
                           f"has {random_acts.shape[1]}; use the same layer and image size for both sets")


def split_indices(n_concept: int, n_random: int, seed: int, test_fraction: float = TEST_FRACTION
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) row indices into cat([concept, random]): a seeded split stratified per side, at least one
    example of each side in both parts (so the classifier sees both classes and the accuracy means something)."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for offset, n in ((0, n_concept), (n_concept, n_random)):
        order = torch.randperm(n, generator=gen) + offset
        n_test = min(n - 1, max(1, round(test_fraction * n)))
        test.append(order[:n_test])
        train.append(order[n_test:])
    return torch.cat(train), torch.cat(test)


def linear_cav(concept_acts: torch.Tensor, random_acts: torch.Tensor, *, seed: int = 0, method: str = "sgd",
               layer: str = "", concept: str = "concept", counterexample: str = "random") -> CAV:
    """The CAV as the normal of a linear classifier separating concept from random activations (Kim et al. 2018).

    Args:
        concept_acts: [Nc, D] flattened activations of the concept images.
        random_acts: [Nr, D] flattened activations of the counterexample (random) images.
        seed: seeds the train/test split and the SGD shuffling.
        method: "sgd" (scikit-learn SGDClassifier, hinge loss, Captum's and tensorflow/tcav's default settings)
            or "logistic" (LogisticRegression).
        layer: the layer's name, recorded in the CAV.
        concept: the concept's name (recorded, and used in error messages).
        counterexample: the counterexample set's name (recorded, and used in error messages).

    Returns:
        A `CAV` whose `vector` [D] is unit length, pointing towards the concept, with its held-out accuracy.

    Example:
        >>> cav = linear_cav(acts["striped"], acts["random-0"], seed=0)
        >>> cav.vector.shape, cav.accuracy
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    if method not in LINEAR_METHODS:
        raise FeatvisError(f"unknown linear CAV method {method!r}; use one of {', '.join(LINEAR_METHODS)}")
    _check_pair(concept_acts, random_acts, concept, counterexample)
    acts = torch.cat([concept_acts, random_acts]).detach().float().cpu()
    labels = torch.cat([torch.ones(concept_acts.shape[0]), torch.zeros(random_acts.shape[0])]).long()
    train, test = split_indices(concept_acts.shape[0], random_acts.shape[0], seed)
    if method == "sgd":
        model = SGDClassifier(**SGD_OPTIONS, random_state=seed)
    else:
        model = LogisticRegression(max_iter=LOGISTIC_MAX_ITER, random_state=seed)
    # scikit-learn is the edge here: it takes numpy; everything before and after is a tensor.
    x_train, y_train = acts[train].numpy(), labels[train].numpy()
    with warnings.catch_warnings():
        # With Captum's tol, SGD on tens of examples in thousands of dimensions often runs to max_iter (it warns
        # once per CAV there, hundreds of times per run); the held-out accuracy is the check that matters.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    accuracy = float((model.predict(acts[test].numpy()) == labels[test].numpy()).mean())
    # coef_ points towards classes_[1], which is 1 (the concept).
    weights = torch.as_tensor(model.coef_[0], dtype=torch.float64)
    vector = _unit(weights, concept).to(device=concept_acts.device, dtype=_float(concept_acts))
    return CAV(vector, layer, concept, counterexample, method, accuracy, seed)


def fast_cav(concept_acts: torch.Tensor, random_acts: torch.Tensor, *, layer: str = "", concept: str = "concept",
             counterexample: str = "random") -> CAV:
    """FastCAV (Schnake et al., ICML 2025): the concept mean minus the mean of all concept + random activations.

    Args:
        concept_acts: [Nc, D] flattened activations of the concept images.
        random_acts: [Nr, D] flattened activations of the counterexample (random) images.
        layer: the layer's name, recorded in the CAV.
        concept: the concept's name, recorded in the CAV.
        counterexample: the counterexample set's name, recorded in the CAV.

    Returns:
        A `CAV` whose `vector` [D] is unit length; `accuracy` is in-sample, the boundary through the pooled mean.

    Example:
        >>> cav = fast_cav(acts["striped"], acts["random-0"])
    """
    _check_pair(concept_acts, random_acts, concept, counterexample)
    pooled = torch.cat([concept_acts, random_acts]).to(_float(concept_acts))
    center = pooled.mean(0)
    vector = _unit(pooled[:concept_acts.shape[0]].mean(0) - center, concept)
    side = (pooled - center) @ vector > 0  # [N]: which side of the boundary through the pooled mean
    truth = torch.cat([torch.ones(concept_acts.shape[0], dtype=torch.bool, device=side.device),
                       torch.zeros(random_acts.shape[0], dtype=torch.bool, device=side.device)])
    return CAV(vector, layer, concept, counterexample, "fast", float((side == truth).float().mean()), None)


def cav_for(method: str, concept_acts: torch.Tensor, random_acts: torch.Tensor, *, seed: int, layer: str,
            concept: str, counterexample: str) -> CAV:
    """One CAV by `method`: "linear"/"sgd", "logistic" or "fast"."""
    if method == "fast":
        return fast_cav(concept_acts, random_acts, layer=layer, concept=concept, counterexample=counterexample)
    return linear_cav(concept_acts, random_acts, seed=seed, method=CAV_METHODS[method], layer=layer,
                      concept=concept, counterexample=counterexample)


CAV_METHODS: Mapping[str, str] = {"linear": "sgd", "sgd": "sgd", "logistic": "logistic", "fast": "fast"}
"""The names `tcav(cav=...)` accepts, and the method each one runs."""


def random_subsets(pool: torch.Tensor, n_sets: int = 10, size: int | None = None, *, seed: int = 0
                   ) -> list[torch.Tensor]:
    """`n_sets` random subsets of a pool of images (the paper's random counterexample sets), seeded.

    Args:
        pool: [N, 3, H, W] images to draw from (random photos, not of the class or the concepts).
        n_sets: how many sets.
        size: images per set (default half the pool, at least 2).
    """
    check_images(pool, "random pool")
    size = max(2, pool.shape[0] // 2) if size is None else size
    if not 2 <= size <= pool.shape[0]:
        raise FeatvisError(f"random set size {size} must be between 2 and the pool's {pool.shape[0]} images")
    gen = torch.Generator().manual_seed(seed)
    return [pool[torch.randperm(pool.shape[0], generator=gen)[:size].to(pool.device)] for _ in range(n_sets)]


def _float(acts: torch.Tensor) -> torch.dtype:
    return acts.dtype if acts.is_floating_point() else torch.float32


def _unit(vector: torch.Tensor, concept: str) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise FeatvisError(f"concept {concept!r}: its CAV is zero (the concept and random activations do not "
                           "differ at this layer); use other images or another layer")
    return vector / norm
