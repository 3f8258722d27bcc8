"""MkDocs hook: the pages that are generated at build time, never copied by hand.

- `cli.md`: every command's `--help`, walked from the typer app (`featvis.cli.app`).
- `performance.md`, `validation.md`: one section per `benchmarks/results/*.json`, its tables drawn from the JSON.
- `<!-- featvis:methods -->` (and `attacks`, `presets`, `metrics`) in any page: the registry's members with their
  summaries, read from the same listing the CLI prints (`featvis methods --json`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# Results that check featvis against a reference or a peer library, or measure the quality of what it makes; the rest
# are timings.
VALIDATION = ("crosscheck", "evaluate", "classvis_quality", "concepts", "robustness", "fooling", "min_norm",
              "universal", "optvis_measures")


def _cli(*args: str) -> str:
    from typer.testing import CliRunner

    from featvis.cli import app

    result = CliRunner().invoke(app, list(args), terminal_width=84, env={"COLUMNS": "84", "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise RuntimeError(f"featvis {' '.join(args)} exited {result.exit_code}: {result.output[-500:]}")
    return result.output


def cli_page() -> str:
    import typer

    from featvis.cli import app

    group = typer.main.get_command(app)
    out = ["# Command-line reference", "",
           "Generated from the `featvis` typer app when the site is built: each command's `--help`, as the "
           "terminal prints it.", "", "```text", _cli("--help").rstrip(), "```", ""]
    for name in sorted(group.commands):  # type: ignore[attr-defined]
        if group.commands[name].hidden:  # type: ignore[attr-defined]
            continue
        out += [f"## featvis {name}", "", "```text", _cli(name, "--help").rstrip(), "```", ""]
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        text = {True: "yes", False: "no", None: "—"}[value]
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    elif isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        text = ", ".join(_cell(v) for v in value) if len(value) <= 12 else f"{len(value)} values"
    elif isinstance(value, (dict, list)):
        text = "…"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _scalar(value: object) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value))


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    """A markdown table: one row per (name, dict); the columns are the dicts' scalar keys, in order of appearance."""
    cols: list[str] = []
    for _, row in rows:
        cols += [k for k, v in row.items() if _scalar(v) and k not in cols]
    head = [first, *cols] if first else cols
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in rows:
        cells = [_cell(row.get(c)) for c in cols]
        out.append("| " + " | ".join([name, *cells] if first else cells) + " |")
    return out


def _section(key: str, value: object, depth: int) -> list[str]:
    """Tables for one JSON value: a list of dicts, a dict of dicts, or a dict of scalars; deeper levels recurse."""
    title = "#" * min(depth, 6) + f" {key}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [title, "", *_table([("", v) for v in value], ""), ""]
    if not isinstance(value, dict) or not value:
        return []
    out: list[str] = []
    scalars = {k: v for k, v in value.items() if _scalar(v)}
    dicts = {k: v for k, v in value.items() if isinstance(v, dict)}
    flat = dicts and all(any(_scalar(x) for x in v.values()) for v in dicts.values())
    if scalars:
        out += ["| field | value |", "| --- | --- |", *(f"| {k} | {_cell(v)} |" for k, v in scalars.items()), ""]
    if flat and len(dicts) > 1:
        out += _table(list(dicts.items()), key)
        out.append("")
        nested = {f"{k} / {kk}": vv for k, v in dicts.items() for kk, vv in v.items() if not _scalar(vv)}
    else:
        nested = dicts
    nested |= {k: v for k, v in value.items() if isinstance(v, list) and not _scalar(v)}
    if depth < 5:
        for k, v in nested.items():
            out += _section(k, v, depth + 1)
    return [title, "", *out] if out else []


def _summary(path: Path) -> list[str]:
    """A benchmark's own markdown summary, its headings moved under this page's (its title becomes a section)."""
    lines = path.read_text("utf-8").splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("# ") else path.stem
    body = [("##" + line) if line.startswith("#") else line for line in lines[1:]]
    return [f"## {title}", "", f"`benchmarks/results/{path.name}`.", "", *body, ""]


def _script(stem: str) -> str:
    """The benchmark that wrote results/STEM.json: the longest script name STEM starts with (evaluate-all →
    evaluate, min_norm_cw → min_norm)."""
    names = [p.stem for p in (ROOT / "benchmarks").glob("*.py") if stem.startswith(p.stem)]
    return max(names, key=len) if names else stem


def results_page(title: str, intro: str, validation: bool) -> str:
    out = [f"# {title}", "", intro, ""]
    for path in sorted(RESULTS.glob("*.md")):
        if any(v in path.stem for v in VALIDATION) == validation:
            out += _summary(path)
    for path in sorted(RESULTS.glob("*.json")):
        if any(v in path.stem for v in VALIDATION) != validation:
            continue
        data = json.loads(path.read_text("utf-8"))
        out += [f"## {path.stem}", "", f"`benchmarks/results/{path.name}`, written by `benchmarks/"
                f"{_script(path.stem)}.py`.", ""]
        machine = data.pop("machine", None) if isinstance(data, dict) else None
        if isinstance(machine, dict):
            out += ["Machine: " + ", ".join(f"{k} {_cell(v)}" for k, v in machine.items()) + ".", ""]
        if isinstance(data, dict):
            scalars = {k: v for k, v in data.items() if _scalar(v)}
            if scalars:
                out += ["| field | value |", "| --- | --- |",
                        *(f"| {k} | {_cell(v)} |" for k, v in scalars.items()), ""]
            for key, value in data.items():
                if not _scalar(value):
                    out += _section(key, value, 3)
        else:
            out += _section("results", data, 3)
    return "\n".join(out)


PAGES = {
    "cli.md": cli_page,
    "changelog.md": lambda: (ROOT / "CHANGELOG.md").read_text("utf-8"),
    "performance.md": lambda: results_page(
        "Performance", "Timings as measured by `benchmarks/*.py` on the project's 2-core CPU machine, drawn from "
        "`benchmarks/results/*.json` when the site is built (a rerun of a benchmark updates this page). Ratios "
        "compare with the bare model's forward+backward (the floor) or a peer library on the same machine.", False),
    "validation.md": lambda: results_page(
        "Validation", "featvis against references and peer libraries (Captum, torchattacks, torch-cam, float64 "
        "reimplementations of the papers' equations) and the measured quality of what it makes, drawn from "
        "`benchmarks/results/*.json` when the site is built.", True),
}


def on_files(files, config):
    for name, make in PAGES.items():
        files.append(File.generated(config, name, content=make()))
    return files


def _registry_table(kind: str) -> str:
    rows = json.loads(_cli(kind, "--json"))
    out = ["| name | what it does | options |", "| --- | --- | --- |"]
    for row in rows:
        name = f"`{row['name']}`" + "".join(f", `{a}`" for a in row.get("aliases", []))
        what = row.get("summary") or row.get("description") or row.get("protocol") or ""
        if kind == "attacks":
            modes = [m for m in ("targeted", "untargeted") if row.get(m)]
            what += f" ({', '.join(modes)}; norms {', '.join(row.get('norms', []))})"
        if kind == "metrics":
            what = f"{row.get('direction', '')} {what} — {row.get('paper', '')}"
        options = ", ".join(f"`{k}`" for k in row.get("options", {}))
        out.append(f"| {name} | {_cell(what)} | {options} |")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    return re.sub(r"<!-- featvis:(methods|attacks|presets|metrics) -->", lambda m: _registry_table(m.group(1)),
                  markdown)
