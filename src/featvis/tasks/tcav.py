"""The tcav task: does the model's score for a class rely on concepts a person names (TCAV, Kim et al., ICML 2018)?

The items are the class's images. Each batch records, per layer, the gradient of the target logit with respect to
the layer's activations (one backward for the batch, every layer at once), kept as a small partial file: memory stays
flat, a resumed run keeps what it has, and Ray workers each write their batches'. When every image is done the
summary fits the CAVs (one per concept and random set, plus random-vs-random CAVs for the null) from the concept
folders' activations, and scores every image's gradient against all of them in one product.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, ClassTarget, Output, Section, Table, Task, param, register
from featvis.tasks.results import Damaged

PARTIALS = "grads"
ALPHA = 0.05  # significance level before the Bonferroni correction (Kim et al. 2018 use 0.05)


def parse_concepts(specs: tuple[str, ...]) -> dict[str, str]:
    """`name=DIR` pairs as {name: DIR}; a malformed or repeated one is a one-line error."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise FeatvisError(f"concept {spec!r} must be written NAME=FOLDER, e.g. --concept striped=concepts/striped")
        if name.strip() in out:
            raise FeatvisError(f"concept {name.strip()!r} is given twice; give each concept one folder")
        out[name.strip()] = folder.strip()
    return out


@dataclass(frozen=True)
class TcavParams:
    target: int | str | None = param(None, help="The class whose score is explained (name or index): TCAV "
                                     "explains one class, over the input images (of that class).",
                                     short="-t", metavar="CLASS")
    concepts: tuple[str, ...] = param((), help="Concepts as NAME=FOLDER (comma list or repeated); any number.",
                                      flag="--concept", metavar="NAME=DIR")
    random: str = param("", help="A folder of random images (not of the concepts): the counterexample sets are "
                        "drawn from it.", metavar="DIR")
    layers: tuple[str, ...] = param(("blocks.5", "blocks.10"), help="Layers (comma list).", flag="--layer",
                                    short="-l", metavar="NAMES")
    cav: str = param("linear", help="CAV: 'linear' (an SGD linear classifier's normal, Captum's settings), "
                     "'logistic' or 'fast' (FastCAV, the mean difference, Schnake et al. 2025).", metavar="KIND")
    runs: int = param(10, help="Random counterexample sets per concept (and random-vs-random CAVs for the null).",
                      low=2, high=500, metavar="N")
    per_set: int = param(0, help="Images per concept and random set (0: the smallest concept folder's count).",
                         low=0, high=100_000, metavar="N")

    def __post_init__(self) -> None:
        if self.target is None:
            raise FeatvisError("name the class TCAV explains, e.g. --target zebra")
        if self.cav not in ("linear", "logistic", "fast"):
            raise FeatvisError(f"cav must be 'linear', 'logistic' or 'fast', got {self.cav!r}")
        if isinstance(self.concepts, str):
            object.__setattr__(self, "concepts", (self.concepts,))
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(v.strip() for v in self.layers.split(",") if v.strip()))
        object.__setattr__(self, "layers", tuple(dict.fromkeys(self.layers)))
        if not self.layers:
            raise FeatvisError("give at least one layer: --layer blocks.5")
        parse_concepts(self.concepts)
        if not self.concepts:
            raise FeatvisError("give at least one concept folder: --concept NAME=FOLDER")
        if not self.random:
            raise FeatvisError("give a folder of random images for the counterexample sets: --random FOLDER")


@register
class TcavTask(ClassTarget, Task):
    """TCAV scores of named concepts for one class, with a t-test against random CAVs, at several layers."""

    name = "tcav"
    title = "TCAV"
    Params = TcavParams
    default_batch = 16
    TARGET_WORDS = ()

    def prepare(self, clf) -> None:
        from featvis.layers import find_layer

        super().prepare(clf)
        for layer in self.params.layers:
            find_layer(clf, layer)
        for name, folder in (*parse_concepts(self.params.concepts).items(), ("random", self.params.random)):
            _folder_images(name, folder)

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.concepts import layer_gradients

        target = clf.labels.lookup(self.params.target)
        grads = layer_gradients(clf, batch.images, target, self.params.layers)  # {layer: [B, D]}, params' order
        blob = io.BytesIO()
        np.savez(blob, **{f"g{i}": g.cpu().numpy() for i, g in enumerate(grads.values())},
                 keys=np.array([it.key for it in batch.items]))
        rel = f"{PARTIALS}/{batch.items[0].key}.npz"
        outputs = [Output({"partial": rel} if i == 0 else {}, {rel: blob.getvalue()} if i == 0 else {})
                   for i in range(len(batch))]
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        from featvis.concepts import random_subsets, tcav_from_gradients
        from featvis.images import load_images
        from featvis.layers import find_layer

        clf, read = info["clf"], info["read"]
        p = self.params
        grads: dict[str, list[np.ndarray]] = {layer: [] for layer in p.layers}
        for r in records:
            if "partial" in r:
                for layer, g in zip(p.layers, _partial(read, r["partial"], len(p.layers)), strict=True):
                    grads[layer].append(g)
        if not any(grads.values()):
            return {"images": 0, "layers": {}}
        folders = parse_concepts(p.concepts)
        files = {name: _folder_images(name, folder) for name, folder in folders.items()}
        randoms = _folder_images("random", p.random)
        per_set = p.per_set or min(len(v) for v in files.values())
        concept_images = {name: load_images(paths[:per_set], clf) for name, paths in files.items()}
        # each random set draws from the pool without replacement; one image fewer than the pool keeps them distinct
        random_size = min(per_set, len(randoms) - 1)
        if random_size < 2:
            raise FeatvisError(f"the random folder {p.random!r} holds {len(randoms)} images; the random sets need at "
                               "least 3 (tens, as many as a concept folder, are better)")
        seed = int(info.get("seed", 0))
        random_sets = random_subsets(load_images(randoms, clf), p.runs, random_size, seed=seed)
        result = tcav_from_gradients(
            clf, {find_layer(clf, layer)[0]: torch.from_numpy(np.concatenate(g)) for layer, g in grads.items()},
            concept_images, random_sets, p.target, cav=p.cav, seed=seed, alpha=ALPHA)
        return {"images": sum(len(g) for g in grads[p.layers[0]]), "target": clf.labels[clf.labels.lookup(p.target)],
                "per_set": per_set, "random_per_set": random_size, "cav": p.cav, "runs": p.runs, **result.to_dict()}

    @classmethod
    def section(cls, run) -> Section:
        s = run.summary
        sec = Section(f"TCAV: {s.get('target')} ({s.get('images')} images, {s.get('cav')} CAVs)",
                      "The TCAV score is the share of the class's images whose score rises along the concept's CAV "
                      f"(directional derivative > 0). Each concept is scored against {s.get('runs')} random "
                      "counterexample sets; the p-value is a two-sided t-test of those scores against random-vs-"
                      "random CAVs' scores, and 'significant' uses the Bonferroni-corrected level (alpha "
                      f"{ALPHA} over {s.get('tests')} tests).")
        rows = [[c["layer"], c["concept"], c["mean"], c["std"], c["random_mean"], c["p"], c["significant"],
                 c["accuracy"]] for c in s.get("scores", [])]
        sec.tables.append(Table("TCAV scores", ["layer", "concept", "TCAV score", "std over random sets",
                                                "random CAVs' score", "p", "significant (Bonferroni)",
                                                "CAV accuracy"], rows))
        return sec


def _folder_images(name: str, folder: str) -> list[str]:
    from featvis.data import Dataset

    if not Path(folder).expanduser().is_dir():
        raise FeatvisError(f"concept {name!r}: {folder!r} is not a folder; give a folder of its images")
    try:
        items = Dataset.from_inputs([folder])
    except FeatvisError:
        raise FeatvisError(f"concept {name!r}: folder {folder!r} holds no images; put at least 2 images of the "
                           "concept in it") from None
    paths = [it.path for it in items]
    if len(paths) < 2:
        raise FeatvisError(f"concept {name!r}: folder {folder!r} holds {len(paths)} image; TCAV needs at least 2 "
                           "(tens are better)")
    return paths


def _partial(read, rel: str, layers: int) -> list[np.ndarray]:
    try:
        with np.load(io.BytesIO(read(rel)), allow_pickle=False) as z:
            return [z[f"g{i}"] for i in range(layers)]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise Damaged(rel, f"is not a readable gradient file ({type(e).__name__})") from None
