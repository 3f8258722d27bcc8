"""Checks of the built site (scripts/docs.sh runs it after `mkdocs build --strict`).

1. Every public function and class (each documented module's `__all__`) has its entry in the API reference.
2. The site loads nothing from the network: no `src`/`href` of a script, stylesheet, font or image points off the
   site, and no stylesheet imports one.
3. In headless Chromium (Debian's, through Playwright's executable_path; skipped with a note when absent) each page
   opened from file:// makes no request off file:// and logs no error; screenshots go to `--shots`.

    python docs/hooks/check_site.py out/site [--shots out/site-shots]
"""

from __future__ import annotations

import argparse
import html.parser
import importlib
import inspect
import re
import shutil
import sys
from pathlib import Path

# The modules the API pages document (docs/api/*.md), with the page each belongs on.
DOCUMENTED = ("featvis", "featvis.attribution", "featvis.adversarial", "featvis.optvis", "featvis.concepts",
              "featvis.tasks", "featvis.models", "featvis.images", "featvis.layers", "featvis.samples")
# The pages the screenshots show (the note's evidence), at desktop width.
SHOTS = ("index.html", "saliency.html", "cli.html", "api/featvis.html", "validation.html",
         "tutorials/quickstart.html")
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def public_objects(module: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [n for n, v in vars(mod).items() if not n.startswith("_")
                                              and getattr(v, "__module__", None) == module]
    out = []
    for name in names:
        obj = getattr(mod, name)
        if name.startswith("__") or inspect.ismodule(obj):
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((f"{module}.{name}", obj))
    return out


def missing_api(site: Path) -> list[str]:
    ids: set[str] = set()
    for page in (site / "api").glob("*.html"):
        ids |= set(re.findall(r'id="(featvis[\w.]*)"', page.read_text("utf-8")))
    missing = []
    for module in DOCUMENTED:
        for dotted, obj in public_objects(module):
            defined = f"{obj.__module__}.{obj.__qualname__}"  # documented where it is defined, or re-exported
            if dotted not in ids and defined not in ids:
                missing.append(dotted)
    return sorted(set(missing))


class _Resources(html.parser.HTMLParser):
    """The URLs a page loads (scripts, stylesheets, icons, images, media), not the links a reader may follow."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "source", "video", "audio", "iframe", "embed") and a.get("src"):
            self.urls.append(a["src"] or "")
        if tag == "link" and a.get("href") and a.get("rel", "") not in ("canonical", "alternate", "next", "prev"):
            self.urls.append(a["href"] or "")


def remote_resources(site: Path) -> list[str]:
    found = []
    for page in site.rglob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text("utf-8"))
        found += [f"{page.relative_to(site)}: {u}" for u in parser.urls if REMOTE.match(u)]
    for sheet in site.rglob("*.css"):
        text = sheet.read_text("utf-8", errors="replace")
        found += [f"{sheet.relative_to(site)}: {u}" for u in re.findall(r"@import\s+(?:url\()?['\"]?([^'\")]+)", text)
                  if REMOTE.match(u)]
        found += [f"{sheet.relative_to(site)}: {u}" for u in re.findall(r"url\(['\"]?(https?://[^'\")]+)", text)]
    return sorted(set(found))


def browse(site: Path, shots: Path) -> list[str]:
    """Open every page from file:// in headless Chromium; return the problems seen (requests off file://, errors)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("   chromium not found: the browser check is skipped")
        return []
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    shots.mkdir(parents=True, exist_ok=True)
    site = site.resolve()
    pages = sorted(site.rglob("*.html"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for path in pages:
            rel = path.relative_to(site).as_posix()
            page = context.new_page()
            page.on("request", lambda r, rel=rel: None if r.url.startswith(("file://", "data:", "blob:"))
                    else problems.append(f"{rel}: requested {r.url}"))
            page.on("pageerror", lambda e, rel=rel: problems.append(f"{rel}: script error {e}"))
            page.goto(path.as_uri(), wait_until="load")
            if not page.locator("h1").count():
                problems.append(f"{rel}: no heading rendered")
            if rel in SHOTS:
                page.screenshot(path=str(shots / (rel.replace("/", "-").removesuffix(".html") + ".png")))
            page.close()
        browser.close()
    print(f"   chromium opened {len(pages)} pages from file://; screenshots in {shots}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--shots", type=Path, default=Path("out/site-shots"))
    args = ap.parse_args(argv)
    failures = [f"not in the API reference: {n}" for n in missing_api(args.site)]
    failures += [f"loads from the network: {u}" for u in remote_resources(args.site)]
    if not failures:
        failures += browse(args.site, args.shots)
    for line in failures:
        print(f"   {line}")
    print(f"   site check: {'passed' if not failures else f'{len(failures)} problems'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
