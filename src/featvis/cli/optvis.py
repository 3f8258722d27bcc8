"""`featvis classvis` and `featvis features`: class and feature visualization, resumable in batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from featvis.cli._common import (
    BatchOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    TrustOpt,
    Ui,
    WeightsOpt,
    app,
    chunks,
    load_classifier,
    out_console,
)
from featvis.models import DEFAULT_MODEL

PresetOpt = Annotated[str, typer.Option(help="lab, lucid, pixel, yosinski-1..4 (see `featvis presets`).")]
StepsOpt = Annotated[int | None, typer.Option(min=0, help="Optimization steps (default: the preset's).")]
SizeOpt = Annotated[int | None, typer.Option(min=16, max=1024, help="Image side in pixels.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initial image and the random transforms.")]


@app.command()
def presets(json: JsonOpt = False) -> None:
    """List the visualization presets."""
    from featvis.optvis import PRESETS

    rows = [{"name": n, "steps": PRESETS.get(n).steps, "description": PRESETS.get(n).description}
            for n in PRESETS.names()]
    Ui(json=json).emit(rows)
    if not json:
        table = Table("preset", "default steps", "what it does")
        for r in rows:
            table.add_row(r["name"], str(r["steps"]), r["description"])
        out_console.print(table)


def _run(ui: Ui, job, items: list[tuple[str, object]], batch_size: int, draw: Callable, clf, label: str) -> list[dict]:
    """Render pending items in batches; each finished image is saved and recorded before the next batch."""
    import torch

    from featvis.figures import render_grid, save_figure
    from featvis.images import quantize, save_image

    keys = [k for k, _ in items]
    todo = set(job.pending(keys))
    pending = [(k, v) for k, v in items if k in todo]
    if job.skipped:
        ui.info(f"resuming: {job.skipped} of {len(keys)} images already done in {job.out_dir}")
    with ui.progress(label, len(pending)) as advance:
        for batch in chunks(pending, batch_size):
            with job.timed("render"):
                res = draw([v for _, v in batch])
            with torch.no_grad():
                probs = clf(quantize(res.images)).softmax(-1)
            for i, (key, value) in enumerate(batch):
                png = save_image(res.images[i], job.out_dir / "images" / f"{key}.png")
                rec = {"key": key, "value": value, "title": res.titles[i], "score": float(res.scores[i]),
                       "image": str(png.relative_to(job.out_dir)), "ms_per_step": res.ms_per_step / len(batch),
                       "top1": int(probs[i].argmax()), "top1_name": clf.labels[int(probs[i].argmax())],
                       "top1_prob": float(probs[i].max())}
                if isinstance(value, int) and label == "classvis":
                    rec["target_prob"] = float(probs[i, value])
                job.done(key, rec)
            advance(len(batch))
    records = [job.record(k) for k in keys if job.is_done(k)]
    shown = records[:100]
    if shown:
        from featvis.images import load_image

        imgs = torch.cat([load_image(job.out_dir / r["image"]) for r in shown])
        titles = [f"{r['title']}\n" + (f"p={r['target_prob']:.3f}" if "target_prob" in r else f"{r['score']:.2f}")
                  for r in shown]
        save_figure(render_grid(imgs, titles), job.out_dir / "grid.png")
    return records


def _finish(ui: Ui, job, records: list[dict], clf, what: str) -> None:
    from featvis.runs import atomic_write_json

    atomic_write_json(job.out_dir / "results.json", {"model": clf.id, "results": records})
    job.finish(images=len(records))
    ui.emit({"model": clf.id, "skipped": job.skipped, "results": records, "grid": "grid.png"})
    if not ui.json and not ui.quiet:
        table = Table(what, "score", "model's top-1", "p(target)" if what == "class" else "top-1 prob")
        for r in records[:50]:
            table.add_row(r["title"], f"{r['score']:.2f}", f"{r['top1_name']} ({r['top1']})",
                          f"{r.get('target_prob', r['top1_prob']):.3f}")
        out_console.print(table)
        ui.info(f"images and grid.png in {job.out_dir}")


@app.command()
def classvis(
    classes: Annotated[list[str] | None, typer.Argument(help="Class names or indices.", show_default=False)] = None,
    all_classes: Annotated[bool, typer.Option("--all-classes", help="Every class of the model.")] = False,
    preset: PresetOpt = "lucid",
    steps: StepsOpt = None,
    size: SizeOpt = None,
    seed: SeedOpt = 0,
    model: ModelOpt = DEFAULT_MODEL,
    output: OutOpt = Path("featvis-classvis"),
    batch_size: BatchOpt = 8,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Synthesize an image per class that the model scores highly (class visualization)."""
    from featvis.errors import FeatvisError
    from featvis.optvis import PRESETS, class_visualization
    from featvis.runs import Job

    ui = Ui(quiet=quiet, json=json)
    name = PRESETS.canonical(preset)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    if all_classes:
        idx = list(range(len(clf.labels)))
    elif classes:
        idx = list(dict.fromkeys(clf.labels.lookup(c) for c in classes))
    else:
        raise FeatvisError("name at least one class (e.g. `featvis classvis tarantula`) or pass --all-classes")
    job = Job.open(output, "classvis", {"model": model, "preset": name, "steps": steps, "size": size,
                                        "seed": seed, "classes": idx}, clf=clf, seed=seed, overwrite=overwrite)
    items = [(f"{i:04d}-{clf.labels[i].replace(' ', '_').replace('/', '_')}", i) for i in idx]
    records = _run(ui, job, items, batch_size,
                   lambda vals: class_visualization(clf, vals, preset=name, steps=steps, size=size, seed=seed),
                   clf, "classvis")
    _finish(ui, job, records, clf, "class")


@app.command()
def features(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see `featvis layers`).")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="Channel index or a comma list.")] = "0",
    neuron: Annotated[bool, typer.Option("--neuron", help="Only the centre neuron of each channel.")] = False,
    preset: PresetOpt = "lucid",
    steps: StepsOpt = None,
    size: SizeOpt = 128,
    seed: SeedOpt = 0,
    model: ModelOpt = DEFAULT_MODEL,
    output: OutOpt = Path("featvis-features"),
    batch_size: BatchOpt = 8,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Visualize what channels (or centre neurons) of a layer respond to."""
    from featvis.errors import FeatvisError
    from featvis.layers import find_layer
    from featvis.optvis import PRESETS, feature_visualization
    from featvis.runs import Job

    ui = Ui(quiet=quiet, json=json)
    name = PRESETS.canonical(preset)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    canonical = find_layer(clf, layer)[0]
    try:
        chans = [int(c) for c in channel.split(",") if c.strip()]
    except ValueError:
        raise FeatvisError(f"--channel {channel!r} must be integers separated by commas, e.g. 7 or 0,5,9") from None
    job = Job.open(output, "features", {"model": model, "layer": canonical, "channels": chans, "neuron": neuron,
                                        "preset": name, "steps": steps, "size": size, "seed": seed}, clf=clf,
                   seed=seed, overwrite=overwrite)
    items = [(f"{canonical}-{c:04d}{'-neuron' if neuron else ''}", c) for c in chans]
    records = _run(ui, job, items, batch_size,
                   lambda vals: feature_visualization(clf, canonical, vals, neuron=neuron, preset=name, steps=steps,
                                                      size=size, seed=seed),
                   clf, "features")
    _finish(ui, job, records, clf, "channel")
