"""The examples task: for every channel of a layer, the data set's images (and receptive-field patches) that excite
it most and least, in one streamed pass over the data (OpenAI Microscope / Lucid's "dataset examples").

Each batch runs the model only up to the layer (`forward_until`) and keeps, for all channels at once, its own top-k
and bottom-k images (by the channel's spatial maximum, or its centre neuron) with the position of the maximum, and
running sums for activation statistics. These per-batch partials are small (k × C) and merge exactly, so memory stays
flat, a resumed run merges what it has, and Ray workers each write their batches' partials.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featvis.errors import FeatvisError
from featvis.layers import layer_label
from featvis.optvis.examples import patch_around, receptive_field, unit_responses
from featvis.tasks.base import Batch, Output, Section, Table, Task, item_name, param, register
from featvis.tasks.results import Damaged

PARTIALS = "partials"
PATCH_PX = 96  # side of a saved patch (patches are resized to this)
TOP_CLASSES = 5


@dataclass(frozen=True)
class ExamplesParams:
    layer: str = param("", help="Layer name (see `featvis layers`).", short="-l", metavar="NAME")
    channels: tuple[int, ...] | str = param("all", help="Channel indices (comma list) or 'all'.", flag="--channel",
                                            short="-c", metavar="C", words=("all",))
    neuron: bool = param(False, help="Rank by the centre neuron, not the spatial maximum.")
    k: int = param(9, help="Examples per channel, top and bottom.", flag="-k", low=1, high=100, metavar="K")
    classes: bool = param(True, help="Record each image's predicted class (a full forward pass; --no-classes runs "
                          "the model only up to the layer).")

    def __post_init__(self) -> None:
        if not self.layer:
            raise FeatvisError("name a layer (see `featvis layers`), e.g. --layer blocks.8")
        if not 1 <= self.k <= 100:
            raise FeatvisError(f"k must be 1..100 examples per channel, got {self.k}")
        if self.channels != "all":
            chans = tuple(int(c) for c in ([self.channels] if isinstance(self.channels, int) else self.channels))
            if not chans or min(chans) < 0:
                raise FeatvisError(f"channels must be non-negative integers or 'all', got {self.channels!r}")
            object.__setattr__(self, "channels", tuple(dict.fromkeys(chans)))


def _layer_info(clf, layer: str) -> tuple[str, tuple[int, ...]]:
    from featvis.layers import find_layer, list_layers

    name = find_layer(clf, layer)[0]
    info = next((i for i in list_layers(clf) if i.name == name), None)
    if info is None or not info.shape:
        raise FeatvisError(f"layer {name!r} produced no tensor output; pick another layer (featvis layers)")
    return name, tuple(info.shape)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@register
class ExamplesTask(Task):
    """Top-k and bottom-k images and patches per channel over a data set, and each channel's activation statistics."""

    name = "examples"
    title = "Dataset examples"
    Params = ExamplesParams
    default_batch = 16

    def _channels(self, clf) -> tuple[str, list[int], tuple[int, ...]]:
        name, shape = _layer_info(clf, self.params.layer)
        count = shape[0]
        chans = list(range(count)) if self.params.channels == "all" else list(self.params.channels)
        bad = [c for c in chans if c >= count]
        if bad:
            raise FeatvisError(f"layer {layer_label(clf, name)!r} has {count} channels (0..{count - 1}); channel "
                               f"{bad[0]} does not exist")
        return name, chans, shape

    def prepare(self, clf) -> None:
        self._channels(clf)

    def run(self, clf, batch: Batch) -> list[Output]:
        from featvis.layers import tap, to_spatial
        from featvis.models.classifier import frozen

        name, chans, _ = self._channels(clf)
        predicted = None
        # One forward on the fast path: the whole model for the predicted classes, else stopped right after the
        # layer (tap ends the block there; `predicted` stays None).
        with torch.no_grad(), frozen(clf), tap(clf, name, stop=not self.params.classes) as seen:
            predicted = clf(batch.images).argmax(-1)
        if not seen:
            raise FeatvisError(f"layer {name} did not run in the forward pass; pick a layer the model uses")
        acts = to_spatial(seen[0], clf)  # [B, C, H, W] or [B, C]
        flat, pos, mean, (h, w) = unit_responses(acts[:, chans].float(), neuron=self.params.neuron)
        b = flat.shape[0]
        k = min(self.params.k, b)
        top_v, top_i = flat.topk(k, dim=0)  # [k, C]
        bot_v, bot_i = flat.topk(k, dim=0, largest=False)
        keys = np.array([it.key for it in batch.items])
        partial = _npz(top_v=top_v.cpu().numpy(), top_key=keys[top_i.cpu().numpy()],
                       top_pos=pos.gather(0, top_i).cpu().numpy(), bot_v=bot_v.cpu().numpy(),
                       bot_key=keys[bot_i.cpu().numpy()], bot_pos=pos.gather(0, bot_i).cpu().numpy(),
                       n=np.array(b), sum=mean.sum(0).cpu().numpy().astype(np.float64),
                       sumsq=(mean.double() ** 2).sum(0).cpu().numpy(), active=(flat > 0).sum(0).cpu().numpy(),
                       peak=flat.max(0).values.cpu().numpy(), grid=np.array([h, w]))
        outputs = []
        for i, item in enumerate(batch.items):
            rec = {"predicted": None if predicted is None else int(predicted[i]),
                   "strongest_channel": int(chans[int(flat[i].argmax())])}
            arts = {f"{PARTIALS}/{batch.items[0].key}.npz": partial} if i == 0 else {}
            if i == 0:
                rec["partial"] = f"{PARTIALS}/{item.key}.npz"
            outputs.append(Output(rec, arts))
        return outputs

    def summarize(self, records: list[dict], info: Mapping[str, Any]) -> dict[str, Any]:
        read = info["read"]
        labels = info.get("labels")
        k = self.params.k
        merged: dict[str, Any] = {}
        for r in records:
            if "partial" not in r:
                continue
            merged = _merge(merged, _partial(read, r["partial"]), k)
        if not merged:
            return {"images": len(records), "channels": []}
        by_key = {r["key"]: r for r in records}
        n = int(merged["n"])
        mean = merged["sum"] / n
        std = np.sqrt(np.maximum(merged["sumsq"] / n - mean**2, 0))
        chans = list(self.params.channels) if self.params.channels != "all" else list(range(len(mean)))
        out = []
        for j, c in enumerate(chans):
            def examples(kind: str, j: int = j) -> list[dict[str, Any]]:
                return [{"key": str(key), "input": by_key.get(str(key), {}).get("input"),
                         "name": by_key.get(str(key), {}).get("name"), "value": float(v), "pos": int(p)}
                        for v, key, p in zip(merged[f"{kind}_v"][:, j], merged[f"{kind}_key"][:, j],
                                             merged[f"{kind}_pos"][:, j], strict=True)]

            top, bottom = examples("top"), examples("bot")
            preds = [p for p in (by_key.get(t["key"], {}).get("predicted") for t in top) if p is not None]
            counts = {}
            for pr in preds:
                counts[pr] = counts.get(pr, 0) + 1
            classes = sorted(counts.items(), key=lambda kv: -kv[1])[:TOP_CLASSES]
            out.append({"channel": c, "mean": float(mean[j]), "std": float(std[j]),
                        "max": float(merged["peak"][j]), "active": float(merged["active"][j] / n),
                        "top": top, "bottom": bottom,
                        "classes_of_top": [{"class": cl, "name": labels[cl] if labels is not None else str(cl),
                                            "count": cnt} for cl, cnt in classes]})
        layer = self._layer_name(info)
        return {"images": n, "layer": layer, "neuron": self.params.neuron, "k": k,
                "grid": [int(v) for v in merged["grid"]], "channels": out}

    def _layer_name(self, info: Mapping[str, Any]) -> str:
        """The layer as people name it (`blocks.8`, not PyTorch's `_blocks.8`)."""
        clf = info.get("clf")
        return layer_label(clf, _layer_info(clf, self.params.layer)[0]) if clf is not None else self.params.layer

    def finalize(self, records: list[dict], summary: dict, info: Mapping[str, Any]) -> dict[str, bytes]:
        """Patches around each top/bottom example's maximum (the unit's receptive field), and a contact sheet."""
        clf = info.get("clf")
        if clf is None or not summary.get("channels"):
            return {}
        from featvis.images import encode_png, load_image

        size = clf.input_size
        h, w = summary["grid"]
        rf = receptive_field(clf, summary["layer"], size) if h * w > 1 else size
        cache: dict[str, torch.Tensor] = {}
        files: dict[str, bytes] = {}
        for ch in summary["channels"]:
            for kind in ("top", "bottom"):
                for i, ex in enumerate(ch[kind]):
                    if ex["input"] is None:
                        continue
                    if ex["input"] not in cache:
                        if len(cache) > 256:
                            cache.clear()
                        cache[ex["input"]] = load_image(ex["input"], clf)[0].cpu()
                    img = cache[ex["input"]]
                    patch = patch_around(img, ex["pos"], (h, w), rf, PATCH_PX)
                    rel = f"patches/{ch['channel']:04d}/{kind}-{i:02d}.png"
                    files[rel] = encode_png(patch)
                    ex["patch"] = rel
        files["examples.json"] = json.dumps(summary["channels"]).encode()
        files["sheet.png"] = _sheet(summary, files)
        summary["receptive_field"] = int(rf)
        return files

    @classmethod
    def section(cls, run) -> Section:
        summ = run.summary
        s = Section(f"Dataset examples: {summ.get('layer')} ({len(summ.get('channels', []))} channels, "
                    f"{summ.get('images')} images)",
                    "For each channel, the images of the data set that excite it most (top) and least (bottom), "
                    "cropped to the unit's receptive field around its strongest response; next to a feature "
                    "visualization they show what the channel answers to in real photos. Top and bottom images are "
                    "ranked by the channel's spatial maximum, so even the least-exciting images can peak far above "
                    "the mean; mean and std are of its spatial mean over every image of the data set.")
        n = summ.get("images")
        if "sheet.png" in run.artifacts:
            s.figures.append(("sheet.png", "top examples per channel (first channels)"))
        s.tables.append(Table("channels", ["channel", f"mean of spatial mean, all {n} images", "std of spatial mean",
                                           f"highest spatial max, {n} images", "share with max > 0", "top image",
                                           "classes of the top images"],
                              [[c["channel"], c["mean"], c["std"], c["max"], c["active"],
                                item_name(c["top"][0]) if c["top"] else "-",
                                ", ".join(f"{x['name']} ×{x['count']}" for x in c["classes_of_top"])]
                               for c in summ.get("channels", [])[:200]]))
        return s


PARTIAL_ARRAYS = ("top_v", "top_key", "top_pos", "bot_v", "bot_key", "bot_pos", "n", "sum", "sumsq", "active", "peak",
                  "grid")


def _partial(read, rel: str) -> dict[str, np.ndarray]:
    """A batch's partial read back; one that is truncated, replaced (a pickle, not a zip) or lacks an array is
    `Damaged`, so the runner redoes that batch."""
    blob = read(rel)
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {name: z[name] for name in PARTIAL_ARRAYS}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:  # what np.load raises on bad bytes
        raise Damaged(rel, f"is not a readable partial ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if arrays["top_v"].shape != arrays["top_key"].shape or arrays["sum"].shape != arrays["peak"].shape:
        raise Damaged(rel, "holds arrays of inconsistent shapes")
    return arrays


def _merge(acc: dict[str, Any], p, k: int) -> dict[str, Any]:
    """Fold one batch's partial into the running top-k / bottom-k and sums (exact)."""
    if not acc:
        return dict(p)
    out = dict(acc)
    for kind, largest in (("top", True), ("bot", False)):
        v = np.concatenate([acc[f"{kind}_v"], p[f"{kind}_v"]])
        keys = np.concatenate([acc[f"{kind}_key"], p[f"{kind}_key"]])
        pos = np.concatenate([acc[f"{kind}_pos"], p[f"{kind}_pos"]])
        # order by value, ties by key (deterministic whatever order the batches arrive in)
        order = np.lexsort((keys, -v if largest else v), axis=0)[:k]
        out[f"{kind}_v"] = np.take_along_axis(v, order, 0)
        out[f"{kind}_key"] = np.take_along_axis(keys, order, 0)
        out[f"{kind}_pos"] = np.take_along_axis(pos, order, 0)
    out["n"] = acc["n"] + p["n"]
    for name in ("sum", "sumsq", "active"):
        out[name] = acc[name] + p[name]
    out["peak"] = np.maximum(acc["peak"], p["peak"])
    return out


def _sheet(summary: dict, files: dict[str, bytes]) -> bytes:
    from PIL import Image

    from featvis.figures import figure_png, render_grid
    from featvis.images import load_image

    chans = summary["channels"][:8]
    k = min(summary["k"], 6)
    tiles, titles = [], []
    for c in chans:
        for i in range(k):
            ex = c["top"][i] if i < len(c["top"]) else None
            if ex is None or "patch" not in ex:
                tiles.append(torch.zeros(3, PATCH_PX, PATCH_PX))
                titles.append("")
                continue
            tiles.append(load_image(Image.open(io.BytesIO(files[ex["patch"]])))[0])
            titles.append(f"ch {c['channel']}: {ex['value']:.2f}")
    return figure_png(render_grid(torch.stack(tiles), titles, cols=k), dpi=80)
