"""`featvis demo` (everything on the bundled photos, as one HTML page) and `featvis report` (a page from runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from featvis.cli._common import DeviceOpt, ModelOpt, QuietOpt, Ui, app, err_console
from featvis.models import DEFAULT_MODEL

DEMO_CLASSES = ["tarantula", "snail", "pizza", "gorilla", "tick"]
DEMO_LAYERS = ["blocks.2", "blocks.8", "blocks.15"]  # early, middle, late

INTRO = ("Everything featvis shows, on {n} bundled public-domain photos and the {model} ImageNet classifier: "
         "what the model predicts, which pixels drive it, how little it takes to fool it, and what it has learned "
         "about classes and single channels. Every section lists the parameters and model id it ran with.")


def demo_plan(quick: bool) -> dict:
    """Sizes and steps for the full demo and for --quick (well under a minute, for CI)."""
    if quick:
        return {"photos": ["chelsea", "coffee"], "methods": "gradient,gradcam", "metric_steps": 8,
                "classes": DEMO_CLASSES[:2], "class_size": 64, "lab_steps": 20, "lucid_steps": 20,
                "channels": "0,1", "feature_size": 48, "feature_steps": 10, "budgets": "1/255,2/255"}
    return {"photos": None, "methods": "gradient,smoothgrad,integrated-gradients,gradcam", "metric_steps": None,
            "classes": DEMO_CLASSES, "class_size": 224, "lab_steps": 100, "lucid_steps": 200,
            "channels": "0,1,2,3", "feature_size": 128, "feature_steps": 128, "budgets": "1/255,2/255,3/255,4/255"}


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the report and its runs.")] =
    Path("featvis-demo"),
    model: ModelOpt = DEFAULT_MODEL,
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes and few steps (under a minute).")] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Redo stages already in the folder.")] = False,
) -> None:
    """Run the whole lab on the bundled photos and write one self-contained HTML report (index.html)."""
    from featvis import samples
    from featvis.cli import core, fool, optvis, saliency
    from featvis.report import build_report

    ui = Ui(quiet=quiet)
    plan = demo_plan(quick)
    names = plan["photos"] or samples.names()
    photos = [samples.path(n) for n in names]
    runs = output / "runs"
    common = {"model": model, "device": device, "quiet": True, "overwrite": overwrite}
    stages = [
        ("classify", lambda d: core.classify(photos, top_k=5, output=d, **common)),
        ("saliency", lambda d: saliency.saliency(photos, method=plan["methods"], metrics=True,
                                                 metric_steps=plan["metric_steps"], output=d, **common)),
        ("fool", lambda d: fool.fool(photos, target="stingray", method="ascent", output=d, **common)),
        ("robustness", lambda d: fool.robustness(photos, eps=plan["budgets"], target="random", output=d, **common)),
        ("classvis-lab", lambda d: optvis.classvis(plan["classes"], preset="lab", steps=plan["lab_steps"],
                                                   size=plan["class_size"], output=d, **common)),
        ("classvis-lucid", lambda d: optvis.classvis(plan["classes"], preset="lucid", steps=plan["lucid_steps"],
                                                     size=plan["class_size"], output=d, **common)),
    ]
    for layer in DEMO_LAYERS:
        stages.append((f"features-{layer}", lambda d, layer=layer: optvis.features(
            layer=layer, channel=plan["channels"], steps=plan["feature_steps"], size=plan["feature_size"],
            output=d, **common)))
    seconds: dict[str, float] = {}
    total = time.perf_counter()
    for i, (name, run) in enumerate(stages, start=1):
        ui.info(f"[{i}/{len(stages)}] {name} …")
        t0 = time.perf_counter()
        run(runs / name)
        seconds[name] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - total
    page = build_report([runs / n for n, _ in stages], output, title="featvis demo",
                        intro=INTRO.format(n=len(photos), model=model), stage_seconds=seconds)
    err_console.print(f"report: {page}", markup=False, highlight=False)
    typer.echo(str(page.resolve()))


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (from saliency, fool, classvis, features, "
                                                    "sanity, classify -o).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="An .html file or a folder for index.html.")] =
    Path("featvis-report"),
    title: Annotated[str, typer.Option(help="Page title.")] = "featvis report",
    embed: Annotated[bool, typer.Option(help="Embed the images in the page (one file to share).")] = False,
) -> None:
    """Build one HTML page from earlier runs, using their manifests."""
    from featvis.report import build_report

    page = build_report(runs, output, title=title, embed=embed)
    typer.echo(str(page.resolve()))


@app.command()
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback an access token is required.")] =
    "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option(help="Access token (generated and printed when binding beyond "
                                                   "loopback).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the JSON API (`/api/...`, OpenAPI at /openapi.json) for one model. Needs the [web] extra."""
    import ipaddress
    import secrets

    from featvis.cli._common import load_classifier
    from featvis.errors import FeatvisError
    from featvis.models.zoo import is_installed

    if not (is_installed("fastapi") and is_installed("uvicorn") and is_installed("multipart")):
        raise FeatvisError("featvis serve needs the web extra; run: pip install 'featvis[web]'")
    import uvicorn

    from featvis.web.app import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if token is None and not loopback:
        token = secrets.token_urlsafe(24)
    clf = load_classifier(model, device)
    app_ = create_app(clf, token=token)
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    err_console.print(f"featvis API for {clf.id} at {url}", markup=False, highlight=False, soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")
