"""HTML reports: one page from the results of featvis runs (read through `featvis.tasks.results`).

Each run folder becomes the section its task draws (`Task.section`): an introduction saying what the method is and
how to read its pictures, the figures, tables of the numbers, and the parameters, model id and timings from its
manifest. No external CSS, JS or fonts. A run folder is data that may come from someone else, so every value is
escaped, every file the run names must lie inside its folder, only real PNG files are linked or embedded, and a file
with numbers or nesting no featvis run writes is refused in one line (`featvis._json` says which and why).

Figures are shown at their own pixel size, narrowed to the content column (CONTENT_PX) when wider, so the text the
tasks draw in them (titles, p, L∞, PSNR, AUCs: at least 9 pt at 110 dpi) stays at least MIN_TEXT_PX tall; a click
opens a linked figure at full size.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from featvis.errors import FeatvisError, FeatvisWarning
from featvis.report._html import clip, esc, finite, short, write_page

MAIN_PX, PAD_PX = 1100, 18  # main's max-width and side padding in STYLE (a test checks they agree)
CONTENT_PX = MAIN_PX - 2 * PAD_PX  # the widest a figure is shown, in CSS px
MIN_TEXT_PX = 11  # the smallest text a figure may show at its displayed size (the page's own small print is 13.6 px)
PATH_CHARS = 1024  # a file name longer than this in a run's results is refused before the file system sees it
LARGE = 1e15  # numbers this large are shown in 3 significant digits (a float has 15-17)

STYLE = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#e3e3e6; --bg:#fff; --accent:#3a5ccc; }
* { box-sizing: border-box; }
body { margin:0; font:16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1100px; margin:0 auto; padding:24px 18px 64px; }
h1 { font-size:1.9rem; margin:0 0 .2rem; } h2 { font-size:1.35rem; margin:2.4rem 0 .4rem;
     border-bottom:1px solid var(--line); padding-bottom:.3rem; }
.lede, .meta { color:var(--muted); } .meta { font-size:.85rem; }
nav { display:flex; flex-wrap:wrap; gap:.4rem 1rem; margin:1rem 0; font-size:.95rem; }
nav a, a { color:var(--accent); text-decoration:none; }
figure { margin:1rem 0; } figure img { display:block; max-width:100%; height:auto; border-radius:4px;
     box-shadow:0 0 0 1px var(--line); } figure a { display:inline-block; max-width:100%; cursor:zoom-in; }
figcaption { color:var(--muted); font-size:.85rem; }
.table-wrap { overflow-x:auto; } table { border-collapse:collapse; font-size:.88rem; margin:.6rem 0; min-width:60%; }
th, td { border-bottom:1px solid var(--line); padding:.35rem .6rem; text-align:left; white-space:nowrap; }
th { font-weight:600; background:#f7f7f9; } td.num { text-align:right; font-variant-numeric:tabular-nums; }
details { margin:.6rem 0; font-size:.85rem; } pre { white-space:pre-wrap; word-break:break-word; background:#f7f7f9;
     padding:.6rem; border-radius:4px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:12px; }
.grid figure { margin:0; } .grid figure.wide { grid-column:1 / -1; }
@media (max-width:600px) { body { font-size:15px; } main { padding:16px 10px 40px; } h1 { font-size:1.5rem; } }
"""

ALLOWED_TAGS = ("b", "i", "code")  # the only markup a section's introduction may use


def _intro(text: str) -> str:
    """A section introduction: escaped, then only <b>, <i> and <code> let through."""
    out = html.escape(str(text), quote=True)
    for tag in ALLOWED_TAGS:
        out = out.replace(f"&lt;{tag}&gt;", f"<{tag}>").replace(f"&lt;/{tag}&gt;", f"</{tag}>")
    return out


_e = esc


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) if the file decodes as a PNG (a signature check, then a full verify by PIL), else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a header claiming 10^10 pixels
            with Image.open(path, formats=["PNG"]) as im:
                size = im.size
                im.verify()
        return size
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError):
        return None


def _artifact(run, rel) -> Path:
    """The run's file `rel` (inside its folder, an existing file), or a one-line FeatvisError saying what is wrong."""
    where = f"run {str(run.folder)!r}"
    if not isinstance(rel, str):
        raise FeatvisError(f"{where} names an invalid file {short(rel)} (not a string); rerun the command")
    if len(rel) > PATH_CHARS:
        raise FeatvisError(f"{where} names a file with a {len(rel)}-character name; rerun the command")
    try:
        path = run.file(rel)
        found = path.is_file()
    except FeatvisError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop; ValueError: a lone surrogate
        raise FeatvisError(f"{where} names a file {short(rel)} that cannot be opened ({type(e).__name__}: "
                           f"{clip(e)}); rerun the command") from None
    if not found:
        raise FeatvisError(f"figure {short(rel)} named by {where} is missing; rerun the command")
    if not os.access(path, os.R_OK):
        raise FeatvisError(f"figure {short(rel)} of {where} cannot be read (permission denied); check its "
                           "permissions")
    return path


def _figure(run, rel: str, caption: str, out_dir: Path, embed: bool) -> str:
    """A figure at its own pixel size (narrowed to the column by CSS); linked to itself unless embedded."""
    path = _artifact(run, rel)
    size = _png_size(path)
    if size is None:
        raise FeatvisError(f"figure {short(rel)} of run {str(run.folder)!r} is not a PNG image; refusing to "
                           "include it")
    if embed:  # no link: browsers refuse to open a data: URL from a link
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    else:
        src = _e(os.path.relpath(path, out_dir.resolve()).replace(os.sep, "/"))
    width, height = size
    img = f'<img src="{src}" width="{width}" height="{height}" alt="{_e(caption)}" loading="lazy">'
    if not embed:
        img = f'<a href="{src}" title="open at full size">{img}</a>'
    wide = ' class="wide"' if width > CONTENT_PX // 2 else ""  # wider than half the column: a row of its own
    return f"<figure{wide}>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _cell(v) -> str:
    if isinstance(v, bool):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, float):
        if not math.isfinite(v):
            return '<td class="num">–</td>'
        if abs(v) >= LARGE:
            return f'<td class="num">{v:.3g}</td>'
        return f'<td class="num">{int(v)}</td>' if v.is_integer() and abs(v) >= 1 else f'<td class="num">{v:.3f}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v if abs(v) < LARGE else f"{v:.3g}"}</td>'
    return f"<td>{'–' if v is None else _e(v)}</td>"


def _seconds(v) -> str:
    """Seconds to one decimal, "–" for what is not a finite number (a string, null, 1e999)."""
    v = finite(v)
    if v is None:
        return "–"
    return f"{v:.1f}" if abs(v) < LARGE else f"{v:.3g}"


def _meta(manifest: dict) -> str:
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    timings = manifest.get("timings_s") if isinstance(manifest.get("timings_s"), dict) else {}
    shown = ", ".join(f"{_e(k)} {_seconds(v)} s" for k, v in timings.items())
    seed = manifest.get("seed")
    executor = manifest.get("executor") if isinstance(manifest.get("executor"), dict) else {}
    ran = f" · executor {_e(executor['name'])}" if isinstance(executor.get("name"), str) else ""
    return (f'<p class="meta">model <code>{_e(model.get("id", "?"))}</code> · seed '
            f"{'—' if seed is None else _e(seed)}{ran} · {shown}</p>")


def render_run(run, anchor: str, out_dir: Path, embed: bool) -> tuple[str, str]:
    """(title, HTML) of one run's section."""
    from featvis.tasks import TASKS

    if run.task not in TASKS:
        raise FeatvisError(f"run {str(run.folder)!r} is a {short(run.task)} run; reports cover "
                           f"{', '.join(TASKS)}")
    try:
        section = TASKS.get(run.task).section(run)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as e:
        raise FeatvisError(f"results of run {str(run.folder)!r} are malformed ({type(e).__name__}: "
                           f"{clip(e, 160)}); rerun the command to rewrite them") from None
    parts = [f'<section id="{_e(anchor)}"><h2>{_e(section.title)}</h2>', f'<p class="lede">{_intro(section.intro)}</p>']
    figures = [_figure(run, rel, caption, out_dir, embed) for rel, caption in section.figures]
    if len(figures) > 1:
        parts.append('<div class="grid">' + "".join(figures) + "</div>")
    else:
        parts += figures
    for table in section.tables:
        head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
        parts.append(f'<div class="table-wrap"><table data-table="{_e(table.caption)}"><caption class="meta">'
                     f"{_e(table.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    parts.append(_meta(run.manifest))
    params = json.dumps(run.params, indent=2, default=str)
    parts.append(f"<details><summary>parameters (from manifest.json)</summary><pre>{_e(params)}</pre></details>"
                 "</section>")
    return section.title, "\n".join(parts)


def build_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, *, title: str = "featvis report",
                 embed: bool = False, intro: str = "", stage_seconds: dict[str, float] | None = None) -> Path:
    """Write `output` (an .html file, or a folder that gets index.html) from earlier run folders.

    Args:
        embed: put the images inside the page (one file to share); otherwise the page links them relative to
            itself, so keep the run folders beside it.
    """

    from featvis.tasks.results import numerics_differences, read_run

    out = Path(output)
    out_file = out if out.suffix == ".html" else out / "index.html"
    out_dir = out_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise FeatvisError("name at least one run folder")
    rendered = []
    for i, run in enumerate(runs):
        anchor = f"{run.task}-{hashlib.sha1(Path(run.folder).name.encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"
        anchor += f"-{i}"
        rendered.append((anchor, *render_run(run, anchor, out_dir, embed)))
    nav = " ".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t, _ in rendered)
    body = "\n".join(h for _, _, h in rendered)
    stage = ""
    if stage_seconds:
        rows = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{_seconds(v)}</td></tr>" for k, v in
                       stage_seconds.items())
        stage = ('<details><summary>time per stage</summary><div class="table-wrap"><table data-table="stage times">'
                 f"<thead><tr><th>stage</th><th>seconds</th></tr></thead><tbody>{rows}</tbody></table></div></details>")
    how = "Images are embedded." if embed else "Images are linked from the run folders beside this page."
    differ = numerics_differences(runs)
    if differ:  # runs at other threads/kernels differ in the last bits (issue 22.7): say so where they meet
        warnings.warn("these runs ran with other numerics, so equal inputs can differ in the last bits: "
                      + " | ".join(differ), FeatvisWarning, stacklevel=2)
        how += (" <b>These runs ran with other numerics</b> (their numbers agree to float tolerance, not bit for "
                "bit): " + "; ".join(_e(d) for d in differ) + ".")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{_e(title)}</title><style>{STYLE}</style>'
            f"</head><body><main><h1>{_e(title)}</h1><p class='lede'>{_intro(intro)}</p>"
            f"<p class='meta'>{how}</p><nav>{nav}</nav>{stage}{body}</main></body></html>\n")
    write_page(out_file, page)
    return out_file
