"""The atlas page: one static HTML file (no external resources) over a features (or classvis) run and, optionally,
an examples run. The grid is built by a few lines of script from data embedded in the page, its images load lazily
(so a layer of 1,280 channels opens at once), and a click (or #12 in the address) opens a channel's panel: the
larger image, its top and bottom dataset examples, its strongest classes and its activation statistics."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from featvis._io import atomic_write_text


def _asset(name: str) -> str:
    from importlib import resources

    return resources.files("featvis.report").joinpath(f"static/{name}").read_text("utf-8")



def _rel(path: Path, page_dir: Path) -> str:
    return os.path.relpath(path, page_dir).replace(os.sep, "/")


def build_atlas(out: Path, vis, examples=None, weight_classes: dict[int, list[dict[str, Any]]] | None = None) -> Path:
    """Write `out`/index.html for a visualization run (features or classvis) and an optional examples run."""
    out = Path(out)
    page = out / "index.html"
    ex_by_channel: dict[int, dict[str, Any]] = {}
    if examples is not None:
        ex_by_channel = {int(c["channel"]): c for c in examples.summary.get("channels", [])}
    units = []
    for r in vis.items:
        value = int(r["value"])
        unit: dict[str, Any] = {"id": str(value), "label": r["title"], "image": _rel(vis.file(r["image"]), out),
                                "score": r["score"]}
        if vis.task == "classvis":
            unit["stats"] = {"objective score": r["score"], "p(class) on the image": r.get("target_prob"),
                             "model's top-1": f"{r['top1_name']} ({r['top1']})"}
        else:
            unit["stats"] = {"objective reached": r["score"]}
        ex = ex_by_channel.get(value)
        if ex is not None:
            unit["stats"] |= {"mean over the data": ex["mean"], "std": ex["std"], "max": ex["max"],
                              "share of images active": ex["active"]}
            if ex["top"]:
                unit["stats"]["reached ÷ top example"] = r["score"] / ex["top"][0]["value"] \
                    if ex["top"][0]["value"] else None
            shown = set()
            for kind, key in (("top", "top"), ("bottom", "bottom")):
                # a data set smaller than top-k + bottom-k has images in both lists: each is shown once, at the top
                unit[key] = [{"patch": _rel(examples.file(e["patch"]), out), "value": e["value"],
                              "input": e["input"], "name": Path(e["input"]).name if e["input"] else ""}
                             for e in ex[kind] if e.get("patch") and (e["input"], e["value"]) not in shown]
                shown |= {(e["input"], e["value"]) for e in ex[kind]}
        if weight_classes is not None and value in weight_classes:
            unit["classes"] = [{"name": c["name"], "value": c["weight"]} for c in weight_classes[value]]
        elif ex is not None:
            unit["classes"] = [{"name": c["name"], "value": c["count"]} for c in ex["classes_of_top"]]
        units.append(unit)
    classes_by = "weight into the logit" if weight_classes is not None else \
        "how many of the top examples the model calls it" if examples is not None else "–"
    what = f"classes ({len(units)})" if vis.task == "classvis" else \
        f"{vis.params.get('layer')}: {len(units)} channels"
    data = {"units": units, "classes_by": classes_by}
    blob = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the data
    params = vis.params
    source = f"with dataset examples from {examples.summary.get('images')} images" if examples else "no dataset"
    meta = (f"model {html.escape(vis.model_id)} · preset {html.escape(str(params.get('preset')))} · "
            f"{html.escape(str(params.get('steps') or 'default'))} steps · {source}")
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width, initial-scale=1"><title>featvis atlas: {html.escape(what)}</title>'
           f"<style>{_asset('atlas.css')}</style></head><body><header><h1>Atlas of {html.escape(what)}</h1>"
           f'<p class="meta">{meta}. Click a tile for its examples, classes and statistics.</p></header>'
           '<input id="filter" type="search" placeholder="filter by name or number" aria-label="filter">'
           '<main id="grid"></main><div id="panel" role="dialog" aria-modal="true"><div id="card">'
           '<button id="close" aria-label="close">×</button><div id="card-body"></div></div></div>'
           f'<script type="application/json" id="atlas-data">{blob}</script>'
           f"<script>{_asset('atlas.js')}</script></body></html>\n")
    atomic_write_text(page, doc)
    return page
