"""`featvis demo` (the whole lab on the bundled photos, as one HTML page), `featvis report` and `featvis serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featvis.cli._common import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    ProgressView,
    QuietOpt,
    app,
    emit,
    err_console,
    load_classifier,
    say,
)
from featvis.errors import FeatvisError
from featvis.models import DEFAULT_MODEL


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the report and its runs.",
                                         metavar="DIR")] = Path("featvis-demo"),
    model: ModelOpt = DEFAULT_MODEL,
    quick: Annotated[bool, typer.Option("--quick", help="Two photos, small sizes and few steps (about a minute).")]
    = False,
    embed: Annotated[bool, typer.Option(help="Embed the images in index.html (one file to share); by default the "
                                             "page links the PNGs in DIR/runs/.")] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    json: JsonOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Redo stages already in the folder.")] = False,
) -> None:
    """Run the whole lab on the bundled photos and write one HTML report, DIR/index.html (the full run takes 4-7
    minutes on 2 CPU cores, more on a busy machine; --quick about a minute)."""
    import time

    from featvis.cli._progress_view import duration
    from featvis.recipes.demo import describe, run_demo

    clf = load_classifier(model, device)
    show = not quiet and not json and err_console().is_terminal
    views: dict[str, ProgressView] = {}
    t0 = time.perf_counter()

    def progress(stage: str, i: int, n: int, event) -> None:
        if event.kind == "start" and stage not in views:
            views[stage] = ProgressView(f"[{i}/{n}] {stage}", show, speak=not quiet and not json).__enter__()
        view = views.get(stage)
        if view is not None:
            view(event)
            if event.kind == "done":
                view.__exit__(None, None, None)
                if show:  # a log got its line from the view; a terminal's bar shows the time, and this the total
                    say(f"[{i}/{n}] {stage} done; {duration(time.perf_counter() - t0)} since the demo started")

    page = run_demo(clf, output, quick=quick, overwrite=overwrite, progress=progress, embed=embed)
    if json:
        emit({"report": str(page.resolve()), "stages": describe(quick),
              "seconds": round(time.perf_counter() - t0, 1)})
    else:
        if not quiet:
            say(f"report: {page} (the demo took {duration(time.perf_counter() - t0)})")
        typer.echo(str(page.resolve()))


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (from any featvis command's -o).",
                                               show_default=False, metavar="RUN_DIRS")],
    output: Annotated[Path, typer.Option("--output", "-o", help="An .html file or a folder for index.html.",
                                         metavar="PATH")] = Path("featvis-report"),
    title: Annotated[str, typer.Option(help="Page title.", metavar="TEXT")] = "featvis report",
    embed: Annotated[bool, typer.Option(help="Embed the images in the page (one file to share).")] = False,
) -> None:
    """Build one HTML page from earlier runs, using their manifests and results."""
    from featvis.report import build_report

    page = build_report(runs, output, title=title, embed=embed)
    typer.echo(str(page.resolve()))


def server_url(host: str, port: int, token: str | None) -> str:
    """The URL to open for a server bound to `host`: an IPv6 address in brackets; for every interface (0.0.0.0,
    ::) this machine's loopback, with a note that other machines use its own address."""
    every = host in ("0.0.0.0", "::", "")
    shown = ("[::1]" if host == "::" else "127.0.0.1") if every else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    return url + (" (bound to every interface: from another machine use this one's address)" if every else "")


@app.command()
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback an access token is required.",
                                      metavar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, metavar="PORT")] = 8000,
    token: Annotated[str | None, typer.Option(help="Access token (generated and printed when binding beyond "
                                                   "loopback).", metavar="TOKEN")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the web page at / and the JSON API under /api (OpenAPI at /openapi.json). Needs the web extra:
    pip install 'featvis[web]'."""
    import ipaddress
    import secrets

    from featvis.models.zoo import is_installed

    if not (is_installed("fastapi") and is_installed("uvicorn") and is_installed("multipart")):
        raise FeatvisError("featvis serve needs the web extra; run: pip install 'featvis[web]'")
    if token is not None and not token.strip():
        raise FeatvisError("--token is empty (an unset shell variable?); give a real token or leave --token out")
    import uvicorn

    from featvis.web.app import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if token is None and not loopback:
        token = secrets.token_urlsafe(24)
    clf = load_classifier(model, device)
    app_ = create_app(clf, token=token, host=host, port=port)
    say(f"featvis API for {clf.id} at {server_url(host, port, token)}")
    uvicorn.run(app_, host=host, port=port, log_level="warning")
