"""`featvis saliency` and `featvis sanity`."""

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

MethodOpt = Annotated[str, typer.Option("--method", help="Method name(s), comma-separated (see `featvis methods`).")]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Class index or name (default: predicted).")]


def parse_methods(text: str) -> list[str]:
    from featvis.attribution import ATTRIBUTIONS

    names = [ATTRIBUTIONS.canonical(m) for m in text.split(",") if m.strip()]
    return list(dict.fromkeys(names)) or ["gradient"]


def save_npy(path: Path, array) -> None:
    import numpy as np

    from featvis.runs import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@app.command()
def methods(json: JsonOpt = False) -> None:
    """List the attribution methods (for --method)."""
    from featvis.attribution import ATTRIBUTIONS

    rows = [{"name": n, "summary": (ATTRIBUTIONS.get(n).__doc__ or "").strip().splitlines()[0]}
            for n in ATTRIBUTIONS.names()]
    Ui(json=json).emit(rows)
    if not json:
        table = Table("method", "what it computes")
        for r in rows:
            table.add_row(r["name"], r["summary"])
        out_console.print(table)


@app.command()
def saliency(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    method: MethodOpt = "gradient",
    target: TargetOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    output: OutOpt = Path("featvis-saliency"),
    metrics: Annotated[bool, typer.Option("--metrics", help="Deletion/insertion AUC per map (RISE protocol).")] = False,
    shared_scale: Annotated[bool, typer.Option("--shared-scale", help="One colour scale across methods.")] = False,
    metric_steps: Annotated[int | None, typer.Option(min=2, help="Deletion/insertion steps (default: the image "
                                                     "side, RISE's protocol).")] = None,
    score: Annotated[str, typer.Option(help="logit, log-prob or prob.")] = "logit",
    batch_size: BatchOpt = 8,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> int:
    """Saliency maps for images: one figure per image (methods side by side), raw maps as .npy, a manifest."""
    import torch

    from featvis.attribution import ATTRIBUTIONS, resolve_targets
    from featvis.attribution import metrics as mx
    from featvis.figures import compare_methods, saliency_panels, save_figure
    from featvis.images import image_files
    from featvis.runs import Job, atomic_write_json, item_key

    ui = Ui(quiet=quiet, json=json)
    names = parse_methods(method)
    files = image_files(images)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    if target is not None:
        clf.labels.lookup(target)  # fail before any work
    params = {"methods": names, "target": target, "score": score, "metrics": metrics, "shared_scale": shared_scale,
              "metric_steps": metric_steps}
    job = Job.open(output, "saliency", {"model": model, **params}, clf=clf, overwrite=overwrite)
    keys = {item_key(f): f for f in files}
    todo = job.pending(list(keys))
    if job.skipped:
        ui.info(f"resuming: {job.skipped} of {len(keys)} images already done in {output}")
    failed = []
    with ui.progress("saliency", len(todo) * len(names)) as advance:
        for batch_keys in chunks(todo, batch_size):
            good, x, bad = load_batch([keys[k] for k in batch_keys], clf, ui)
            failed += bad
            if x is None:
                continue
            targets = resolve_targets(clf, x, target)
            with torch.no_grad():
                probs = clf(x).softmax(-1)
            maps = {}
            for name in names:
                with job.timed(name):
                    maps[name] = ATTRIBUTIONS.get(name)(clf, x, targets, score=score)
                advance(len(good))
            curves = {}
            if metrics:
                with job.timed("metrics"):
                    for name in [*names, "random"]:
                        m = mx.random_maps(x) if name == "random" else maps[name]
                        pps = -(-x.shape[-1] * x.shape[-2] // metric_steps) if metric_steps else None
                        curves[name] = (mx.deletion(clf, x, m, pixels_per_step=pps),
                                        mx.insertion(clf, x, m, pixels_per_step=pps))
            for i, path in enumerate(good):
                key = item_key(path)
                t = int(targets[i])
                title = f"{clf.labels[t]} ({t}) p={probs[i, t]:.3f}"
                for name in names:
                    save_npy(job.out_dir / "maps" / key / f"{name}.npy", maps[name][i].cpu().numpy())
                scores = {n: f"del {curves[n][0].auc[i]:.3f} · ins {curves[n][1].auc[i]:.3f}" for n in names} \
                    if metrics else None
                if len(names) == 1:
                    fig = saliency_panels(x[i:i + 1], maps[names[0]][i:i + 1], [title], method=names[0],
                                          shared_scale=shared_scale)
                else:
                    fig = compare_methods(x[i], {n: maps[n][i] for n in names}, title, shared_scale=shared_scale,
                                          scores=scores)
                save_figure(fig, job.out_dir / "figures" / f"{key}.png")
                rec = {"image": str(path), "target": t, "target_name": clf.labels[t], "prob": float(probs[i, t]),
                       "figure": f"figures/{key}.png",
                       "maps": {n: f"maps/{key}/{n}.npy" for n in names}}
                if metrics:
                    rec["deletion_auc"] = {n: float(c[0].auc[i]) for n, c in curves.items()}
                    rec["insertion_auc"] = {n: float(c[1].auc[i]) for n, c in curves.items()}
                job.done(key, rec)
    records = [job.record(k) for k in keys if job.is_done(k)]
    summary = {"model": clf.id, "methods": names, "images": len(records), "skipped": job.skipped,
               "failed": [{"image": str(p), "error": e} for p, e in failed], "results": records}
    if metrics and records:
        summary["mean_auc"] = {n: {"deletion": sum(r["deletion_auc"][n] for r in records) / len(records),
                                   "insertion": sum(r["insertion_auc"][n] for r in records) / len(records)}
                               for n in [*names, "random"]}
    atomic_write_json(job.out_dir / "results.json", summary)
    job.finish(images=len(keys))
    ui.emit(summary)
    if not json and not quiet:
        ui.info(f"wrote {len(records)} figure(s) and maps to {job.out_dir}")
        if "mean_auc" in summary:
            table = Table("method", "deletion AUC ↓", "insertion AUC ↑", title="faithfulness (RISE protocol)")
            for n, v in summary["mean_auc"].items():
                table.add_row(n, f"{v['deletion']:.3f}", f"{v['insertion']:.3f}")
            out_console.print(table)
    return 1 if failed else 0


@app.command()
def sanity(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    method: MethodOpt = "gradient,guided-backprop,gradcam",
    target: TargetOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    output: OutOpt = Path("featvis-sanity"),
    independent: Annotated[bool, typer.Option(help="Also randomize each block alone.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the re-initialization.")] = 0,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Model-randomization sanity check (Adebayo et al. 2018): do the maps change when the model is destroyed?"""
    from featvis.attribution.sanity import sanity_check
    from featvis.figures import sanity_curves, save_figure
    from featvis.images import image_files, load_images
    from featvis.runs import Job, atomic_write_json

    ui = Ui(quiet=quiet, json=json)
    names = parse_methods(method)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    x = load_images(image_files(images), clf)
    job = Job.open(output, "sanity", {"model": model, "methods": names, "target": target, "seed": seed,
                                      "images": [str(p) for p in image_files(images)]}, clf=clf, seed=seed,
                   overwrite=overwrite)
    results = []
    with ui.progress("sanity", len(names)) as advance:
        for name in names:
            with job.timed(name):
                results.append(sanity_check(clf, x, target, method=name, independent=independent, seed=seed))
            advance(1)
    save_figure(sanity_curves(results), job.out_dir / "sanity.png")
    summary = {"model": clf.id, "units": results[0].units, "methods": {
        r.method: {"flagged": r.flagged,
                   "spearman_abs": r.spearman_abs.mean(1).tolist(),
                   "spearman_signed": r.spearman_signed.mean(1).tolist(),
                   "ssim": r.ssim.mean(1).tolist(),
                   "independent_spearman_abs": r.independent_spearman_abs.mean(1).tolist() if independent else None}
        for r in results}, "figure": "sanity.png"}
    atomic_write_json(job.out_dir / "sanity.json", summary)
    job.finish()
    ui.emit(summary)
    if not json and not quiet:
        table = Table("method", "after logits", "after top half", "all randomized", "SSIM (all)", "verdict",
                      title="Spearman rank correlation of |map| with the original (cascading randomization)")
        half = max(0, len(results[0].units) // 2 - 1)
        for r in results:
            s = r.spearman_abs.mean(1)
            table.add_row(r.method, f"{s[0]:.2f}", f"{s[half]:.2f}", f"{s[-1]:.2f}", f"{r.ssim.mean(1)[-1]:.2f}",
                          "[red]fails (insensitive)[/]" if r.flagged else "passes")
        out_console.print(table)
        ui.info(f"figure: {job.out_dir / 'sanity.png'}")
