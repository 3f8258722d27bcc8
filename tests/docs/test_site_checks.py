"""The documentation site's generated pages and its checks (docs/hooks/): what `scripts/docs.sh` relies on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load("generate")
check = _load("check_site")


def test_cli_reference_has_every_visible_command():
    import typer

    from featvis.cli import app

    page = generate.cli_page()
    group = typer.main.get_command(app)
    visible = [n for n, c in group.commands.items() if not c.hidden]
    assert len(visible) > 15
    for name in visible:
        assert f"## featvis {name}\n" in page
    assert "--method" in page and "--suite" in page  # the options come from each command's --help


def test_results_pages_draw_every_results_file_once():
    stems = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    pages = generate.results_page("V", "", True) + generate.results_page("P", "", False)
    for stem in stems:
        assert pages.count(f"\n## {stem}\n") == 1, stem
    # the cells are the JSON's values, formatted as the page prints them
    data = json.loads((ROOT / "benchmarks" / "results" / "autoattack_crosscheck.json").read_text())
    assert f"| steps | {data['steps']} |" in pages and f"| torchattacks | {data['torchattacks']} |" in pages


def test_registry_tables_list_every_method_and_attack():
    from featvis.adversarial import ATTACKS
    from featvis.attribution import ATTRIBUTIONS

    methods = generate.on_page_markdown("<!-- featvis:methods -->", None, None, None)
    attacks = generate.on_page_markdown("<!-- featvis:attacks -->", None, None, None)
    for name in ATTRIBUTIONS.names():
        assert f"`{name}`" in methods, name
    for name in ATTACKS.names():
        assert f"`{name}`" in attacks, name
    assert "norms linf" in attacks


def test_site_check_finds_network_resources_and_missing_api(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "featvis.html").write_text('<h1 id="featvis.load_model">x</h1>', "utf-8")
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<script src="//cdn.example.org/x.js"></script><script src="assets/local.js"></script>'
        '<a href="https://github.com/">a link a reader follows is fine</a>', "utf-8")
    (tmp_path / "a.css").write_text("@import url('https://fonts.example.org/f.css'); body{}", "utf-8")
    found = check.remote_resources(tmp_path)
    assert sorted(found) == ["a.css: https://fonts.example.org/f.css", "index.html: //cdn.example.org/x.js",
                             "index.html: https://fonts.googleapis.com/css?family=Roboto"]
    missing = check.missing_api(tmp_path)
    assert "featvis.load_model" not in missing and "featvis.saliency" in missing


def test_example_sections_render_as_code():
    import griffe

    ext = _load("griffe_examples").ExampleSections()
    obj = griffe.Function("f", docstring=griffe.Docstring("Do it.\n\nExample:\n    >>> f(1)\n    2\n"))
    ext.on_instance(obj=obj)
    sections = obj.docstring.parse("google")
    assert [s.kind.value for s in sections] == ["text", "examples"]
