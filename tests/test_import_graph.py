"""No import circle through the base packages this test guards (issue 23: layers → models/classifier →
models/fast → layers was one). Reads every module under src/featvis with `ast`, module-level and deferred
(function-level) imports alike, and looks for strongly connected components.

Run as a script (`python tests/test_import_graph.py`) to print every circle in the package, guarded or not.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
GUARDED = ("featvis.layers", "featvis.models.fast", "featvis.models.classifier", "featvis.models.freeze")


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "featvis").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def graph() -> dict[str, set[str]]:
    """module → the featvis modules importing it runs: each named module and its packages, except the importer's
    own packages (already being imported when it runs)."""
    mods = modules()
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                if not target.startswith("featvis"):
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in mods and dep not in own and dep != name:
                        edges[name].add(dep)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_runs_through_layers_or_the_fast_path():
    through = [c for c in circles(graph()) if any(m.startswith(GUARDED) for m in c)]
    assert through == []


def test_models_never_import_layers():
    edges = graph()
    upward = sorted((m, d) for m, deps in edges.items() if m.startswith("featvis.models") for d in deps
                    if d.startswith("featvis.layers"))
    assert upward == []


if __name__ == "__main__":
    for circle in circles(graph()):
        print(" ↔ ".join(circle))


# The layers of the package, lowest first (README "Extending it"): a module may import its own layer or lower ones.
LAYERS = (
    ("base", ("featvis.errors", "featvis._io", "featvis._json", "featvis._registry", "featvis._ops", "featvis._stats",
              "featvis._alloc", "featvis._progress", "featvis._types", "featvis.images", "featvis.data",
              "featvis.samples", "featvis.models", "featvis.layers")),
    ("algorithms", ("featvis.attribution", "featvis.adversarial", "featvis.optvis", "featvis.concepts")),
    ("figures", ("featvis.figures",)),
    ("tasks", ("featvis.tasks",)),
    ("report", ("featvis.report",)),
    ("recipes", ("featvis.recipes",)),
    ("front ends", ("featvis.cli", "featvis.web")),
)
# The one door up (DESIGN.md): a result draws itself in Jupyter through featvis.figures.draw, imported when drawn.
ALLOWED_UP = {("featvis._types", "featvis.figures")}


def rank(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None  # the package itself (featvis, featvis.__main__): above everything


def test_no_import_circle_anywhere_in_the_package():
    assert circles(graph()) == []


def test_no_module_imports_a_layer_above_it():
    edges = graph()
    assert sorted(m for m in edges if rank(m) is None) == ["featvis", "featvis.__main__"]  # every module has a layer
    assert "featvis.figures" in edges["featvis.tasks.saliency"]  # the graph sees deferred imports too
    upward = sorted((m, d) for m, deps in edges.items() for d in deps
                    if rank(m) is not None and rank(d) is not None and rank(d) > rank(m)
                    and (m, d) not in ALLOWED_UP)
    assert upward == []
