"""Foundation commands: models, classify, layers."""

from __future__ import annotations

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
    load_batch,
    load_classifier,
    out_console,
)
from featvis.models import DEFAULT_MODEL


@app.command()
def models(json: JsonOpt = False) -> None:
    """List the models featvis knows and whether each is installed."""
    from featvis.models import available_models

    rows = available_models()
    ui = Ui(json=json)
    ui.emit(rows)
    if not json:
        table = Table("name", "installed", "extra", "description")
        for r in rows:
            table.add_row(str(r["name"]), "yes" if r["installed"] else "no", str(r["extra"]), str(r["description"]))
        out_console.print(table)


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes per image.")] = 5,
    output: OutOpt = None,
    batch_size: BatchOpt = 16,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> int:
    """Top-k classes of each image. With -o, results are saved per image and a rerun resumes."""
    from featvis.images import image_files
    from featvis.runs import Job, atomic_write_json, item_key

    ui = Ui(quiet=quiet, json=json)
    files = image_files(images)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    keys = {item_key(f): f for f in files}
    job = None
    todo = list(keys)
    if output is not None:
        job = Job.open(output, "classify", {"model": model, "top_k": top_k, "weights": weights}, clf=clf,
                       overwrite=overwrite)
        todo = job.pending(todo)
        if job.skipped:
            ui.info(f"resuming: {job.skipped} of {len(keys)} images already done in {output}")
    results: dict[str, dict] = {}
    failed = []
    with ui.progress("classify", len(todo)) as advance:
        for batch_keys in chunks(todo, batch_size):
            paths = [keys[k] for k in batch_keys]
            good, x, bad = load_batch(paths, clf, ui)
            failed += bad
            preds = clf.predict(x, k=top_k) if x is not None else []
            for path, top in zip(good, preds, strict=True):
                key = item_key(path)
                rec = {"image": str(path), "predictions": [
                    {"index": p.index, "name": p.name, "prob": round(p.prob, 6)} for p in top]}
                results[key] = rec
                if job is not None:
                    job.done(key, rec)
            advance(len(batch_keys))
    if job is not None:
        for k in keys:
            if k not in results and job.is_done(k):
                results[k] = job.record(k)
    ordered = [results[k] for k in keys if k in results]
    if job is not None:
        atomic_write_json(job.out_dir / "results.json", ordered)
        job.finish(images=len(keys), failed=[str(p) for p, _ in failed])
    if json:
        ui.emit({"results": ordered, "skipped": job.skipped if job else 0,
                 "failed": [{"image": str(p), "error": e} for p, e in failed], "model": clf.id})
    elif not quiet:
        table = Table("image", *(f"top-{i + 1}" for i in range(min(top_k, 3))), title=f"{clf.id}")
        for rec in ordered:
            table.add_row(Path(rec["image"]).name, *(f"{p['name']} ({p['index']}) {p['prob']:.3f}"
                                                     for p in rec["predictions"][:3]))
        out_console.print(table)
    if failed and not ordered:
        return 2
    return 1 if failed else 0


@app.command()
def layers(
    model: ModelOpt = DEFAULT_MODEL,
    filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only names/types containing TEXT.")] = None,
    size: Annotated[int | None, typer.Option(help="Input side for the output shapes (default: native).")] = None,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "cpu",
    json: JsonOpt = False,
) -> None:
    """List a model's layers (dotted names) with output shapes; the default Grad-CAM layer is marked."""
    from featvis.layers import default_layer, list_layers

    clf = load_classifier(model, device, weights, trust_checkpoint)
    infos = list_layers(clf, size=size, filter=filter)
    try:
        default = default_layer(clf)
    except ValueError:
        default = None
    ui = Ui(json=json)
    ui.emit({"model": clf.id, "default_layer": default, "layers": [
        {"name": i.name, "type": i.type, "shape": i.shape, "calls": i.calls, "params": i.params} for i in infos]})
    if not json:
        table = Table("name", "type", "output [C, H, W]", "calls", "params",
                      title=f"{clf.id} (default layer: {default})")
        for i in infos:
            mark = " *" if i.name == default else ""
            table.add_row(i.name + mark, i.type, "×".join(map(str, i.shape)) if i.shape else "-",
                          str(i.calls), f"{i.params:,}")
        out_console.print(table)
