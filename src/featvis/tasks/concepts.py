"""The concepts task: for every class of a labelled data set, what the model has learned of it, in concepts (CRAFT,
Fel et al., CVPR 2023), one class per item so a run resumes and `--executor ray` spreads classes over workers.

Per class: random crops of its images (streamed in chunks, so memory holds one chunk of images and one row of
pooled activations per crop), a non-negative factorization of their activations at a layer into k concepts, each
concept's importance for the class by total Sobol indices, the crops where each concept is strongest, where it
appears in example images, a feature visualization of its direction, and concept deletion against random orders.
The page (`featvis.report.lens`) is drawn from the records.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featvis.errors import FeatvisError
from featvis.tasks.base import Batch, Output, Section, Table, Task, param, register

MIN_IMAGES = 4  # fewer images of a class than this give too few crops to factorize (CRAFT advises ~500)
CROP_PX = 96  # side of a saved crop
MAP_PX = 96  # side of a saved concept map
CHUNK = 16  # images decoded and cropped at once


@dataclass(frozen=True)
class ConceptsParams:
    classes: tuple[str, ...] | str = param("all", help="Classes of the data set to explain (names or indices, "
                                           "comma list) or 'all'.", metavar="CLASSES", words=("all",))
    layer: str = param("", help="Layer to split the model at (default: the last feature map). CRAFT needs "
                       "non-negative activations (after a ReLU).", short="-l", metavar="NAME")
    k: int = param(10, help="Concepts per class.", flag="-k", low=2, high=50, metavar="K")
    images: int = param(64, help="Images per class at most (a seeded sample); the CRAFT authors advise ~500.",
                        low=MIN_IMAGES, high=100_000, metavar="N")
    crops: int = param(8, help="Random crops per image.", low=1, high=256, metavar="N")
    crop_fraction: float = param(0.4, help="Crop side as a fraction of the image side.", low=0.1, high=1.0,
                                 metavar="F")
    designs: int = param(32, help="Sobol quasi-Monte-Carlo designs (masks = designs × (k + 2)).", low=4,
                         high=4096, metavar="N")
    sobol_images: int = param(16, help="Class images the importance and the deletion curve are computed on.",
                              low=1, high=10_000, metavar="N")
    orders: int = param(20, help="Random concept orders the deletion curve is compared with.", low=1, high=1000,
                        metavar="N")
    top: int = param(8, help="Crops shown per concept.", low=1, high=64, metavar="N")
    examples: int = param(4, help="Class images each concept's map is shown on.", low=0, high=32, metavar="N")
    preset: str = param("lucid", help="Visualization preset of each concept's direction (see featvis presets).",
                        metavar="PRESET")
    steps: int = param(96, help="Visualization steps per concept (0: no visualizations).", low=0, high=10_000,
                       metavar="N")
    size: int = param(128, help="Visualization side in pixels.", low=16, high=1024, metavar="PX")

    def __post_init__(self) -> None:
        from featvis.optvis import PRESETS

        if not 2 <= self.k <= 50:
            raise FeatvisError(f"k must be 2..50 concepts per class, got {self.k}")
        if self.images < MIN_IMAGES:
            raise FeatvisError(f"images must be at least {MIN_IMAGES} per class, got {self.images}")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise FeatvisError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        object.__setattr__(self, "preset", PRESETS.canonical(self.preset))


@register
class ConceptsTask(Task):
    """CRAFT concepts per class: factorization, Sobol importance, crops, maps, visualizations, concept deletion."""

    name = "concepts"
    title = "Concepts (CRAFT)"
    kind = "classes"
    Params = ConceptsParams
    default_batch = 1

    def prepare(self, clf) -> None:
        """An unknown layer, one that cannot be split, or one with negative activations fails here, before any class
        (the check of the sign runs the model on two noise images; the fit checks every crop again)."""
        from featvis.concepts.craft import check_nonnegative
        from featvis.concepts.split import split_at

        split = split_at(clf, self.params.layer or None)
        side = clf.input_size if isinstance(getattr(clf, "input_size", None), int) else 224
        param = next(clf.parameters(), None)
        probe = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            check_nonnegative(split, split.latent(probe.to(param.device if param is not None else "cpu")))

    def units_from(self, data, clf):
        units = data.by_class(clf.labels)
        if self.params.classes == "all":
            return units
        named = [self.params.classes] if isinstance(self.params.classes, str) else self.params.classes
        wanted = {clf.labels.lookup(int(c) if str(c).strip().isdigit() else c) for c in named}
        kept = tuple(it for it in units.items if it.label in wanted)
        missing = sorted(wanted - {it.label for it in kept})
        if missing:
            have = ", ".join(clf.labels[it.label] for it in units.items[:8])
            raise FeatvisError(f"class {clf.labels[missing[0]]!r} has no images in the inputs (they hold {have}"
                               f"{', ...' if len(units.items) > 8 else ''}); name classes the data set has")
        return type(units)(kept, {**units.spec, "classes": [clf.labels[c] for c in sorted(wanted)],
                                  "count": len(kept)})

    def run(self, clf, batch: Batch) -> list[Output]:
        return [self._one_class(clf, item) for item in batch.items]

    def _one_class(self, clf, item) -> Output:
        from featvis import _progress
        from featvis.concepts import fit_concepts_streamed, split_at

        p = self.params
        cls = int(item.value["class"])
        paths = sorted(item.value["images"])
        name = clf.labels[cls]
        if len(paths) < MIN_IMAGES:
            raise FeatvisError(f"class {name!r} has {len(paths)} image(s); concepts need at least {MIN_IMAGES} "
                               f"(CRAFT's authors advise ~500): add images to its folder or leave the class out")
        picked = sorted(random.Random(item.seed).sample(paths, min(p.images, len(paths))))
        split = split_at(clf, p.layer or None)
        t0 = time.perf_counter()
        _progress.update("crops", 0, len(picked))
        concepts = fit_concepts_streamed(split, _image_chunks(picked, clf), k=p.k, crops=p.crops,
                                         crop_fraction=p.crop_fraction, seed=item.seed,
                                         on_chunk=lambda done: _progress.update("crops", done, len(picked)))
        t1 = time.perf_counter()
        sobol_paths = picked[:p.sobol_images]
        images = _load(sobol_paths, clf)
        from featvis.concepts import concept_deletion, concept_importance, concept_insertion, concept_maps

        importance = concept_importance(split, concepts, images, cls, designs=p.designs, seed=item.seed)
        t2 = time.perf_counter()
        order = torch.argsort(importance, descending=True)
        deletion = concept_deletion(split, concepts, images, cls, order=order, orders=p.orders, seed=item.seed)
        insertion = concept_insertion(split, concepts, images, cls, order=order, orders=p.orders, seed=item.seed)
        t3 = time.perf_counter()
        arts: dict[str, bytes] = {}
        folder = f"concepts/{item.key}"
        crops = _top_crops(concepts, picked, clf, p.top)
        shown = images[:p.examples]
        maps = concept_maps(split, concepts, shown) if p.examples else None  # [E, k, H, W]
        visuals = _visualize(clf, split, concepts, p, item.seed) if p.steps else None
        t4 = time.perf_counter()
        total = float(importance.clamp_min(0).sum()) or 1.0
        rows = []
        for rank, j in enumerate(order.tolist()):
            entry: dict[str, Any] = {"id": j, "rank": rank, "importance": float(importance[j]),
                                     "share": float(importance[j].clamp_min(0)) / total, "crops": [], "maps": []}
            for i, crop in enumerate(crops[j]):
                rel = f"{folder}/c{j:02d}-crop{i:02d}.png"
                arts[rel] = _png(crop, CROP_PX)
                entry["crops"].append(rel)
            if maps is not None:
                for e in range(maps.shape[0]):
                    rel = f"{folder}/c{j:02d}-map{e:02d}.png"
                    arts[rel] = _map_png(shown[e], maps[e, j])
                    entry["maps"].append(rel)
            if visuals is not None:
                rel = f"{folder}/c{j:02d}-visual.png"
                arts[rel] = _png(visuals[j], p.size)
                entry["visual"] = rel
            rows.append(entry)
        arts[f"{folder}/bank.npz"] = _npz(W=concepts.W.cpu().numpy(), importance=importance.cpu().numpy())
        record = {"class": cls, "class_name": name, "images": len(picked), "crops": int(concepts.U.shape[0]),
                  "layer": split.label, "concepts": rows,
                  "examples": [p_.rsplit("/", 1)[-1] for p_ in sobol_paths[:p.examples]],
                  "deletion": deletion.to_record(), "insertion": insertion.to_record(), "bank": f"{folder}/bank.npz",
                  "reconstruction_error": float(concepts.reconstruction_error),
                  "seconds": {"factorize": t1 - t0, "importance": t2 - t1, "curves": t3 - t2, "pictures": t4 - t3}}
        return Output(record, arts)

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        return {"classes": len(records), "layer": records[0]["layer"] if records else self.params.layer,
                "k": self.params.k,
                "mean_deletion_auc": _mean([r["deletion"]["auc"] for r in records]),
                "mean_random_auc": _mean([r["deletion"]["random_auc"] for r in records]),
                "mean_insertion_auc": _mean([r["insertion"]["auc"] for r in records if "insertion" in r]),
                "mean_random_insertion_auc": _mean([r["insertion"]["random_auc"] for r in records if "insertion" in r]),
                "faithful_classes": sum(bool(r["deletion"]["beats_random"]) for r in records), "page": "index.html"}

    @classmethod
    def section(cls, run) -> Section:
        s = run.summary
        sec = Section(f"Concepts: {s.get('classes')} classes at {s.get('layer')}",
                      "For each class, k concepts found by CRAFT (non-negative factorization of the activations of "
                      "random crops of its images), ranked by their total Sobol importance for the class score. "
                      "Deletion AUC: the class logit as concepts are removed, most important first (lower: the "
                      "importances are faithful), against random orders; insertion: as they are added to an empty "
                      "activation (higher is faithful); 'beats random' when the intervals (95 % bootstrap over "
                      "images) are apart. The browsable page is index.html in the run folder.")
        ins = [r.get("insertion") or {} for r in run.items]
        sec.tables.append(Table("classes", ["class", "images", "top concept share", "deletion AUC",
                                            "random-order AUC", "deletion beats random", "insertion AUC",
                                            "random-order insertion", "insertion beats random", "seconds"],
                                [[r["class_name"], r["images"], r["concepts"][0]["share"] if r["concepts"] else None,
                                  r["deletion"]["auc"], r["deletion"]["random_auc"], r["deletion"]["beats_random"],
                                  i.get("auc"), i.get("random_auc"), i.get("beats_random"),
                                  sum(r["seconds"].values())] for r, i in zip(run.items, ins, strict=True)]))
        return sec

    @classmethod
    def previews(cls, record: Mapping[str, Any]) -> dict[str, str]:
        out = {}
        for c in record.get("concepts", [])[:3]:
            if c.get("crops"):
                out[f"concept {c['id']}"] = c["crops"][0]
        return out


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _load(paths: list[str], clf) -> torch.Tensor:
    from featvis.images import load_image

    return torch.cat([load_image(path, clf) for path in paths])


def _image_chunks(paths: list[str], clf):
    """Chunks of CHUNK decoded images (an unreadable file is an error naming it, from load_image)."""
    for i in range(0, len(paths), CHUNK):
        yield _load(paths[i:i + CHUNK], clf)


def _top_crops(concepts, paths: list[str], clf, top: int) -> list[list[torch.Tensor]]:
    """For each concept, the `top` crops with its largest coefficient (one per image at most), cut again from their
    images (crops are not kept in memory while factorizing)."""
    U, boxes = concepts.U, concepts.boxes  # [N, k], [N, 4] (image index, top, left, side)
    out: list[list[torch.Tensor]] = []
    cache: dict[int, torch.Tensor] = {}
    for j in range(U.shape[1]):
        chosen, used = [], set()
        for n in torch.argsort(U[:, j], descending=True).tolist():
            img_i = int(boxes[n, 0])
            if img_i in used:
                continue
            used.add(img_i)
            chosen.append(n)
            if len(chosen) == top:
                break
        crops = []
        for n in chosen:
            img_i, y, x, side = (int(v) for v in boxes[n])
            if img_i not in cache:
                cache[img_i] = _load([paths[img_i]], clf)[0]
            crops.append(cache[img_i][:, y:y + side, x:x + side])
        out.append(crops)
    return out


def _visualize(clf, split, concepts, p: ConceptsParams, seed: int) -> torch.Tensor:
    """One feature visualization per concept: its direction in the layer's channel space (objectives.direction)."""
    from featvis.concepts import concept_objective
    from featvis.optvis import visualize

    res = visualize(clf, concept_objective(split, concepts), preset=p.preset, size=p.size, batch=concepts.k,
                    steps=p.steps, seed=seed)
    return res.images


def _png(image: torch.Tensor, side: int) -> bytes:
    import torch.nn.functional as F

    from featvis.images import encode_png

    small = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return encode_png(small[0].clamp(0, 1))


def _map_png(image: torch.Tensor, heat: torch.Tensor) -> bytes:
    import torch.nn.functional as F

    from featvis.figures import overlay
    from featvis.images import encode_png

    small = F.interpolate(image[None].float(), size=(MAP_PX, MAP_PX), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    h = F.interpolate(heat[None, None].float(), size=(MAP_PX, MAP_PX), mode="bilinear", align_corners=False)[0, 0]
    h = (h / h.max()).nan_to_num(0.0) if float(h.max()) > 0 else torch.zeros_like(h)
    return encode_png(torch.from_numpy(overlay(small.cpu(), h.cpu().numpy())).permute(2, 0, 1).float() / 255)


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
