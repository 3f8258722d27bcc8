"""The atlas page: one static HTML file (no external resources) over a features (or classvis) run and, optionally,
an examples run. The grid is built by a few lines of script from data embedded in the page, its images load lazily
(so a layer of 1,280 channels opens at once), and a click (or #12 in the address) opens a channel's panel: the
larger image, its top and bottom dataset examples, its strongest classes and its activation statistics, each saying
what it is over (the examples task ranks images by a channel's spatial maximum, or its centre neuron, and keeps
statistics of its spatial mean).

The runs' files may be damaged: a missing or non-PNG image is shown as missing and counted in the header, a record
of the wrong shape is a one-line error, and every value reaches the page as text (escaped by the script).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from featvis.errors import FeatvisError
from featvis.report._html import clip, finite, script_json, short, write_page

LABEL_CHARS = 200  # a label or name from a run is cut to this (a tile shows about 15 characters)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError)


def _asset(name: str) -> str:
    from importlib import resources

    return resources.files("featvis.report").joinpath(f"static/{name}").read_text("utf-8")


def _rel(path: Path, page_dir: Path) -> str:
    return os.path.relpath(path, page_dir).replace(os.sep, "/")


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _picture(run, rel: Any, page_dir: Path, missing: list[str]) -> str | None:
    """The page-relative path of one of the run's PNGs, or None (and `rel` added to `missing`) when the file is
    absent, unreadable or not a PNG. A name that leaves the run folder is refused (run.file)."""
    if not isinstance(rel, str) or not rel:
        missing.append(short(rel))
        return None
    try:
        path = run.file(rel)
        with open(path, "rb") as f:
            ok = f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop; ValueError: a lone surrogate
        ok = False
    if not ok:
        missing.append(rel)
        return None
    return _rel(path, page_dir)


def _stats_words(examples) -> tuple[int | None, str, str]:
    """(images in the data set, what ranks an image, what the mean and std are of) for the examples run."""
    summ = examples.summary
    images = summ.get("images") if type(summ.get("images")) is int else None
    flat = list(summ.get("grid") or []) == [1, 1]  # a layer without spatial positions
    ranking = "centre neuron" if summ.get("neuron") else "activation" if flat else "spatial maximum"
    return images, ranking, "its activation" if flat else "its spatial mean"


def _unit(r: dict, vis, ex: dict | None, examples, weight_classes, page: Path, missing: list[str]) -> dict[str, Any]:
    value = int(r["value"])
    score = finite(r.get("score"))
    unit: dict[str, Any] = {"id": str(value), "label": _text(r["title"]),
                            "image": _picture(vis, r["image"], page, missing), "score": score}
    if vis.task == "classvis":
        unit["stats"] = {"objective score": score, "p(class) on the image": finite(r.get("target_prob")),
                         "model's top-1": _text(f"{r['top1_name']} ({r['top1']})")}
    else:
        unit["stats"] = {"objective reached (feature visualization)": score}
    if ex is not None:
        n, ranking, of = _stats_words(examples)
        count = "the" if n is None else f"the {n}"
        unit["stats"] |= {f"mean of {of}, over all {'' if n is None else f'{n} '}dataset images": finite(ex["mean"]),
                          f"std of {of}, over {count} images": finite(ex["std"]),
                          f"highest {ranking}, over {count} images": finite(ex["max"]),
                          f"share of {count} images with {ranking} > 0": finite(ex["active"])}
        top_value = finite(ex["top"][0]["value"]) if ex["top"] else None
        if ex["top"]:
            unit["stats"]["reached ÷ top example"] = score / top_value if score is not None and top_value else None
        shown: set = set()
        for kind in ("top", "bottom"):
            # a data set smaller than top-k + bottom-k has images in both lists: each is shown once, at the top
            unit[kind] = []
            for e in ex[kind]:
                if not e.get("patch") or (e["input"], e["value"]) in shown:
                    continue
                patch = _picture(examples, e["patch"], page, missing)
                if patch is not None:
                    name = Path(e["input"]).name if isinstance(e["input"], str) else ""
                    unit[kind].append({"patch": patch, "value": finite(e["value"]),
                                       "input": None if e["input"] is None else _text(e["input"]),
                                       "name": _text(name)})
            shown |= {(e["input"], e["value"]) for e in ex[kind]}
    if weight_classes is not None and value in weight_classes:
        unit["classes"] = [{"name": _text(c["name"]), "value": finite(c["weight"])} for c in weight_classes[value]]
    elif ex is not None:
        unit["classes"] = [{"name": _text(c["name"]), "value": finite(c["count"])} for c in ex["classes_of_top"]]
    return unit


def build_atlas(out: Path, vis, examples=None, weight_classes: dict[int, list[dict[str, Any]]] | None = None) -> Path:
    """Write `out`/index.html for a visualization run (features or classvis) and an optional examples run."""
    out = Path(out)
    page = out / "index.html"
    reading = examples
    missing: list[str] = []
    try:
        ex_by_channel: dict[int, dict[str, Any]] = {}
        if examples is not None:
            ex_by_channel = {int(c["channel"]): c for c in examples.summary.get("channels", [])}
        reading = vis
        units = [_unit(r, vis, ex_by_channel.get(int(r["value"])), examples, weight_classes, out, missing)
                 for r in vis.items]
    except MALFORMED as e:
        raise FeatvisError(f"results of run {str(reading.folder)!r} are malformed ({type(e).__name__}: "
                           f"{clip(e, 160)}); rerun featvis atlas with --overwrite to rewrite them") from None
    classes_by = "weight into the logit" if weight_classes is not None else \
        "how many of the top examples the model calls it" if examples is not None else "–"
    what = f"classes ({len(units)})" if vis.task == "classvis" else \
        f"{_text(vis.params.get('layer'))}: {len(units)} channels"
    n, ranking = (None, None) if examples is None else _stats_words(examples)[:2]
    data = {"units": units, "classes_by": classes_by,
            "examples": None if examples is None else {"images": n, "ranking": ranking}}
    params = vis.params
    source = f"with dataset examples from {n if n is not None else 'the'} images" if examples else "no dataset"
    meta = (f"model {html.escape(_text(vis.model_id))} · preset {html.escape(_text(params.get('preset')))} · "
            f"{html.escape(_text(params.get('steps') or 'default'))} steps · {source}")
    warn = ""
    if missing:
        warn = (f'<p class="meta missing">{len(missing)} of the page\'s files are missing or not PNG images (first: '
                f"{html.escape(short(missing[0]))}); rerun featvis atlas with --overwrite to redraw them.</p>")
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
           f'content="width=device-width, initial-scale=1"><title>featvis atlas: {html.escape(what)}</title>'
           f"<style>{_asset('atlas.css')}</style></head><body><header><h1>Atlas of {html.escape(what)}</h1>"
           f'<p class="meta">{meta}. Click a tile for its examples, classes and statistics.</p>{warn}</header>'
           '<input id="filter" type="search" placeholder="filter by name or number" aria-label="filter">'
           '<main id="grid"></main><div id="panel" role="dialog" aria-modal="true"><div id="card">'
           '<button id="close" aria-label="close">×</button><div id="card-body"></div></div></div>'
           f'<script type="application/json" id="atlas-data">{script_json(data)}</script>'
           f"<script>{_asset('atlas.js')}</script></body></html>\n")
    write_page(page, doc)
    return page
