"""HTML reports: one self-contained page from the manifests and results of featvis runs.

Each run folder (from `saliency`, `fool`, `classvis`, `features`, `sanity`, `classify`) becomes a section with
a short introduction saying what the method is and how to read its pictures, the figures, a table of the
numbers, and the parameters, model id and timings from its manifest. No external CSS, JS or fonts.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from featvis.errors import FeatvisError
from featvis.report.sections import SECTIONS, Section

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
figure { margin:1rem 0; } figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:.85rem; }
.table-wrap { overflow-x:auto; } table { border-collapse:collapse; font-size:.88rem; margin:.6rem 0; min-width:60%; }
th, td { border-bottom:1px solid var(--line); padding:.35rem .6rem; text-align:left; white-space:nowrap; }
th { font-weight:600; background:#f7f7f9; } td.num { text-align:right; font-variant-numeric:tabular-nums; }
details { margin:.6rem 0; font-size:.85rem; } pre { white-space:pre-wrap; word-break:break-word; background:#f7f7f9;
     padding:.6rem; border-radius:4px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:12px; }
@media (max-width:600px) { body { font-size:15px; } main { padding:16px 10px 40px; } h1 { font-size:1.5rem; } }
"""


def _img_src(path: Path, out_dir: Path, embed: bool) -> str:
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return os.path.relpath(path, out_dir).replace(os.sep, "/")


def render_section(section: Section, out_dir: Path, embed: bool) -> str:
    parts = [f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>',
             f'<p class="lede">{section.intro}</p>']
    for fig_path, caption in section.figures:
        if not fig_path.exists():
            raise FeatvisError(f"figure {str(fig_path)!r} named by the run is missing; rerun the command")
        parts.append(f'<figure><img src="{_img_src(fig_path, out_dir, embed)}" alt="{html.escape(caption)}" '
                     f'loading="lazy"><figcaption>{html.escape(caption)}</figcaption></figure>')
    for caption, header, rows in section.tables:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
        parts.append(f'<div class="table-wrap"><table data-table="{html.escape(caption)}"><caption '
                     f'class="meta">{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}'
                     "</tbody></table></div>")
    m = section.manifest
    model = (m.get("model") or {}).get("id", "?")
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in (m.get("timings_s") or {}).items())
    seed = m.get("seed")
    parts.append(f'<p class="meta">model <code>{html.escape(model)}</code> · seed {"—" if seed is None else seed} · '
                 f"{timings}</p>")
    parts.append("<details><summary>parameters (from manifest.json)</summary><pre>"
                 f"{html.escape(json.dumps(m.get('params', {}), indent=2, default=str))}</pre></details></section>")
    return "\n".join(parts)


def _cell(v) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.3f}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def build_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, *, title: str = "featvis report",
                 embed: bool = False, intro: str = "", stage_seconds: dict[str, float] | None = None) -> Path:
    """Write `output` (an .html file, or a folder that gets index.html) from earlier run folders."""
    from featvis.runs import atomic_write_text

    out = Path(output)
    out_file = out if out.suffix == ".html" else out / "index.html"
    out_dir = out_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for d in run_dirs:
        d = Path(d)
        manifest_path = d / "manifest.json"
        if not manifest_path.exists():
            raise FeatvisError(f"{str(d)!r} is not a featvis run folder (no manifest.json)")
        manifest = json.loads(manifest_path.read_text("utf-8"))
        command = manifest.get("command")
        if command not in SECTIONS:
            raise FeatvisError(f"run {str(d)!r} is a {command!r} run; reports cover {', '.join(SECTIONS)}")
        sections.append(SECTIONS[command](d, manifest))
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(render_section(s, out_dir, embed) for s in sections)
    stage = ""
    if stage_seconds:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{v:.1f}</td></tr>" for k, v in
                       stage_seconds.items())
        stage = (f'<details><summary>time per stage</summary><div class="table-wrap"><table data-table="stage times">'
                 f"<thead><tr><th>stage</th><th>seconds</th></tr></thead><tbody>{rows}</tbody></table></div></details>")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title><style>{STYLE}</style>'
            f"</head><body><main><h1>{html.escape(title)}</h1><p class='lede'>{intro}</p><nav>{nav}</nav>{stage}"
            f"{body}</main></body></html>\n")
    atomic_write_text(out_file, page)
    return out_file
