"""The concepts page (LENS-style, after the CRAFT authors' LENS project): one static HTML file over a concepts run.

An index of the run's classes; a click (or #0281-tabby_cat in the address) opens a class: its concepts ranked by
importance, each with the crops where it is strongest, its feature visualization and where it appears in example
images, and the class's concept-deletion curve against random orders with bootstrap intervals. Images load lazily;
every value reaches the page as text (escaped by the script); a missing or non-PNG file is shown as missing and
counted in the header.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from featvis.errors import FeatvisError
from featvis.report._html import clip, finite, script_json, short, write_page
from featvis.report.atlas import MALFORMED, _asset, _picture, _text


def _numbers(values: Any) -> list[float | None]:
    return [finite(v) for v in values] if isinstance(values, list) else []


def _deletion(d: Any) -> dict[str, Any] | None:
    if not isinstance(d, dict):
        return None
    return {"curve": _numbers(d["curve"]), "random_mean": _numbers(d["random_mean"]),
            "random_low": _numbers(d["random_low"]), "random_high": _numbers(d["random_high"]),
            "auc": finite(d["auc"]), "auc_ci": _numbers(d["auc_ci"]), "random_auc": finite(d["random_auc"]),
            "random_ci": _numbers(d["random_ci"]), "orders": finite(d["orders"]), "images": finite(d["images"])}


def _class(r: dict, run, page: Path, missing: list[str]) -> dict[str, Any]:
    concepts = []
    for c in r["concepts"]:
        concepts.append({"id": int(c["id"]), "importance": finite(c["importance"]), "share": finite(c["share"]),
                         "crops": [_picture(run, p, page, missing) for p in c["crops"]],
                         "visual": _picture(run, c["visual"], page, missing) if c.get("visual") else None,
                         "maps": [_picture(run, p, page, missing) for p in c.get("maps", [])]})
    return {"key": _text(r["key"]), "name": _text(r["class_name"]), "images": int(r["images"]),
            "crops": int(r["crops"]), "concepts": concepts, "examples": [_text(e) for e in r.get("examples", [])],
            "deletion": _deletion(r.get("deletion")), "insertion": _deletion(r.get("insertion"))}


def build_lens(out: Path, run) -> Path:
    """Write `out`/index.html for a concepts run (`featvis.tasks.results.Run` of the concepts task)."""
    out = Path(out)
    page = out / "index.html"
    missing: list[str] = []
    try:
        classes = [_class(r, run, out, missing) for r in run.items]
    except MALFORMED as e:
        raise FeatvisError(f"results of run {str(run.folder)!r} are malformed ({type(e).__name__}: {clip(e, 160)}); "
                           "rerun featvis concepts with --overwrite to rewrite them") from None
    p = run.params
    data = {"classes": classes, "layer": _text(run.summary.get("layer") or p.get("layer") or "the default layer"),
            "importance_words": "the total Sobol index of the concept's coefficient for the class score "
                                "(Fel et al. 2023), over the class's crops",
            "deletion_words": "Concept deletion (concepts removed from the factorized activation, most important "
                              "first; the class logit after each removal):",
            "insertion_words": "Concept insertion (concepts added to an empty activation, most important first):",
            "band_words": "2.5th–97.5th percentile",
            "visual_words": f"feature visualization of the concept's direction ({_text(p.get('preset'))} preset)"}
    warn = ""
    if missing:
        warn = (f'<p class="meta missing">{len(missing)} of the page\'s files are missing or not PNG images (first: '
                f"{html.escape(short(missing[0]))}); rerun featvis concepts with --overwrite to redraw them.</p>")
    meta = (f"model {html.escape(_text(run.model_id))} · layer {html.escape(data['layer'])} · "
            f"{html.escape(_text(p.get('k')))} concepts per class · "
            f"seed {html.escape(_text(run.manifest.get('seed')))}")
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width, initial-scale=1"><title>featvis concepts: {len(classes)} classes</title>'
           f"<style>{_asset('lens.css')}</style></head><body><header><h1>What the model learned: concepts of "
           f"{len(classes)} classes</h1><p class=\"meta\">{meta}. Click a class for its concepts.</p>{warn}</header>"
           '<input id="filter" type="search" placeholder="filter classes" aria-label="filter">'
           '<main id="index"></main><main id="class" hidden></main>'
           f'<script type="application/json" id="lens-data">{script_json(data)}</script>'
           f"<script>{_asset('lens.js')}</script></body></html>\n")
    write_page(page, doc)
    return page
