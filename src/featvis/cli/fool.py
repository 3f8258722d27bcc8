"""`featvis fool`: fooling images with the lab's ascent or a standard attack."""

from __future__ import annotations

import csv
import io
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
    load_classifier,
    out_console,
    parse_budget,
    pending_image_batches,
)
from featvis.errors import FeatvisError
from featvis.models import DEFAULT_MODEL

CSV_FIELDS = ["image", "method", "success", "steps", "original_class", "original_name", "target", "target_name",
              "predicted", "predicted_name", "original_prob_before", "original_prob_after", "target_prob_before",
              "target_prob_after", "l2", "linf", "l2_255", "linf_255", "psnr_db", "reloaded_predicted",
              "transfer_model", "transfer_predicted", "transfer_success", "transfer_changed"]


@app.command()
def fool(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Class index or name, 'random' (the "
                                               "default; deepfool: 'none'), or 'none' (untargeted).",
                                               show_default=False)] = None,
    method: Annotated[str, typer.Option(help="ascent (the lab's step, capped), lab (as written), fgsm, pgd, "
                                        "mifgsm, cw or deepfool.")] = "ascent",
    eps: Annotated[str | None, typer.Option(help="Budget in [0, 1] units or 8-bit levels (0.0314 or 8/255): fgsm, "
                                            "pgd, mifgsm, or ascent's cap per pixel (3/255; 'inf' for none).",
                                            show_default=False)] = None,
    score: Annotated[str | None, typer.Option(help="ascent: log-prob (default) or logit (the lab's).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Maximum steps (ascent: 100, pgd: 20, cw: per c).")]
    = None,
    lr: Annotated[float | None, typer.Option(help="Step length for ascent / Adam rate for cw.")] = None,
    norm: Annotated[str | None, typer.Option(help="linf (default) or l2 (fgsm, pgd).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="For --target random and random starts.")] = 0,
    model: ModelOpt = DEFAULT_MODEL,
    check_model: Annotated[str | None, typer.Option(help="A second model to test transfer on.")] = None,
    output: OutOpt = Path("featvis-fool"),
    batch_size: BatchOpt = 8,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> int:
    """Fool the model: write the fooled PNGs, the lab's four-panel figure, per-image CSV/JSON and a manifest."""
    from featvis.adversarial import ATTACKS
    from featvis.adversarial import fool as run_attack
    from featvis.figures import fooling_panels, save_figure
    from featvis.images import image_files, load_image, save_image
    from featvis.runs import Job, atomic_write_json, atomic_write_text, item_key

    ui = Ui(quiet=quiet, json=json)
    name = ATTACKS.canonical(method)
    target = target if target is not None else "none" if name == "deepfool" else "random"
    tgt = None if target.strip().lower() == "none" else target
    files = image_files(images)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    if tgt is not None and tgt.strip().lower() != "random":
        clf.labels.lookup(tgt)
    other = load_classifier(check_model, device) if check_model else None
    options = {"seed": seed} | _attack_options(name, steps=steps, lr=lr, eps=None if eps is None else parse_budget(eps),
                                               score=score, norm=norm)
    job = Job.open(output, "fool", {"model": model, "method": name, "target": target, "options": options,
                                    "check_model": check_model}, clf=clf, seed=seed, overwrite=overwrite)
    keys = {item_key(f): f for f in files}
    failed: list = []
    for good, x in pending_image_batches(job, keys, clf, ui, f"fool ({name})", batch_size, failed):
        with job.timed("attack"):
            res = run_attack(clf, x, tgt, method=name, check_model=other, **options)
        for i, (path, rec) in enumerate(zip(good, res.records(), strict=True)):
            key = item_key(path)
            png = save_image(res.images[i], job.out_dir / "fooled" / f"{key}.png")
            reloaded = load_image(png).to(clf.device)  # what the user keeps, read back
            rec["reloaded_predicted"] = clf.predict(reloaded, k=1)[0][0].index
            save_figure(fooling_panels(res.select(i)), job.out_dir / "figures" / f"{key}.png")
            rec.update(image=str(path), fooled_png=f"fooled/{key}.png", figure=f"figures/{key}.png")
            job.done(key, rec)
    records = [job.record(k) for k in keys if job.is_done(k)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(job.out_dir / "results.csv", buf.getvalue())
    summary = _summary(records)
    atomic_write_json(job.out_dir / "results.json", {"model": clf.id, "method": name, "summary": summary,
                                                     "results": records})
    job.finish(images=len(keys), summary=summary)
    ui.emit({"model": clf.id, "method": name, "summary": summary, "skipped": job.skipped, "results": records,
             "failed": [{"image": str(p), "error": e} for p, e in failed]})
    if not json and not quiet:
        table = Table("image", "target", "fooled", "steps", "L∞ /255", "L2", "PSNR dB", title=f"{name} on {clf.id}")
        for r in records:
            table.add_row(Path(r["image"]).name, str(r["target_name"] or "(untargeted)"),
                          "yes" if r["success"] else "no", str(r["steps"]), str(r["linf_255"]), f"{r['l2']:.3f}",
                          f"{r['psnr_db']:.1f}")
        out_console.print(table)
        ui.info(f"success {summary['success_rate']:.0%}; fooled PNGs and figures in {job.out_dir}")
    return 1 if failed else 0


def _option_keyword(attack: str, option: str) -> str | None:
    """The keyword under which attack `attack` takes CLI option `option` (--steps is `max_steps` for the
    ascents), read from its signature; None when it does not take it."""
    import inspect

    from featvis.adversarial import ATTACKS

    params = inspect.signature(ATTACKS.get(attack).fn).parameters
    names = ("max_steps", "steps") if option == "steps" else (option,)
    return next((n for n in names if n in params), None)


def _attack_options(name: str, **given) -> dict:
    """The keyword arguments for attack `name` from the CLI options given; an option it does not take is an error
    (silently ignoring `--eps` would report a budget that was never applied)."""
    from featvis.adversarial import ATTACKS

    options = {}
    for opt, value in given.items():
        if value is None:
            continue
        keyword = _option_keyword(name, opt)
        if keyword is None:
            takers = [a for a in ATTACKS.names() if _option_keyword(a, opt)]
            raise FeatvisError(f"--{opt} does not apply to --method {name}; it applies to {', '.join(takers)}")
        options[keyword] = value
    return options


def _summary(records: list[dict]) -> dict:
    import statistics

    if not records:
        return {"images": 0, "success_rate": 0.0}
    return {"images": len(records),
            "success_rate": sum(r["success"] for r in records) / len(records),
            "median_steps": statistics.median(r["steps"] for r in records),
            "median_linf_255": statistics.median(r["linf_255"] for r in records),
            "mean_linf_255": statistics.mean(r["linf_255"] for r in records),
            "mean_l2": statistics.mean(r["l2"] for r in records),
            "median_psnr_db": statistics.median(r["psnr_db"] for r in records),
            "reloaded_agrees": all(r["reloaded_predicted"] == r["predicted"] for r in records),
            "transfer_rate": (sum(r["transfer_success"] for r in records) / len(records)
                              if "transfer_success" in records[0] else None)}


ROBUSTNESS_FIELDS = ["image", "method", "norm", "fooled", "min_eps", "min_eps_255", "original_class", "original_name",
                     "target", "target_name", "predicted", "predicted_name"]


@app.command()
def robustness(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    eps: Annotated[str, typer.Option(help="Budgets, comma-separated, in [0, 1] units or 8-bit levels.")]
    = "1/255,2/255,3/255,4/255,6/255,8/255",
    method: Annotated[str, typer.Option(help="pgd, fgsm, mifgsm or ascent.")] = "pgd",
    target: Annotated[str, typer.Option("--target", "-t", help="'none' (make the model change its mind), a class, "
                                        "or 'random'.")] = "none",
    norm: Annotated[str, typer.Option(help="linf, or l2 for fgsm/pgd (then --eps is an L2 size).")] = "linf",
    steps: Annotated[int | None, typer.Option(min=1, help="Attack steps per budget.")] = None,
    seed: Annotated[int, typer.Option(help="For --target random.")] = 0,
    model: ModelOpt = DEFAULT_MODEL,
    output: OutOpt = Path("featvis-robustness"),
    batch_size: BatchOpt = 8,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> int:
    """How easily is the model fooled: the share of images fooled at each budget and each image's smallest
    fooling budget (curve.png, results.csv/json, the fooled PNG at that budget, manifest; resumable)."""
    from featvis.adversarial import ATTACKS
    from featvis.adversarial import robustness as measure
    from featvis.adversarial.robustness import fooled_rates, median_budget
    from featvis.figures import robustness_curve, save_figure
    from featvis.images import image_files, save_image
    from featvis.runs import Job, atomic_write_json, atomic_write_text, item_key

    ui = Ui(quiet=quiet, json=json)
    name = ATTACKS.canonical(method)
    grid = sorted({parse_budget(e) for e in eps.split(",") if e.strip()})
    tgt = None if target.strip().lower() == "none" else target
    files = image_files(images)
    clf = load_classifier(model, device, weights, trust_checkpoint)
    if tgt is not None and tgt.strip().lower() != "random":
        clf.labels.lookup(tgt)
    options = _attack_options(name, steps=steps)
    job = Job.open(output, "robustness", {"model": model, "method": name, "norm": norm, "eps": grid,
                                          "target": target, "options": options}, clf=clf, seed=seed,
                   overwrite=overwrite)
    keys = {item_key(f): f for f in files}
    failed: list = []
    for good, x in pending_image_batches(job, keys, clf, ui, f"robustness ({name})", batch_size, failed):
        with job.timed("attack"):
            res = measure(clf, x, tgt, eps=grid, method=name, norm=norm, seed=seed, **options)
        for i, (path, rec) in enumerate(zip(good, res.records(), strict=True)):
            key = item_key(path)
            if rec["fooled"]:
                save_image(res.images[i], job.out_dir / "fooled" / f"{key}.png")
                rec["fooled_png"] = f"fooled/{key}.png"
            job.done(key, rec | {"image": str(path)})
    records = [job.record(k) for k in keys if job.is_done(k)]
    curve = {"eps": grid, "norm": norm, "fooled_rate": fooled_rates([r["min_eps"] for r in records], grid)}
    save_figure(robustness_curve({f"{name} on {clf.name}": curve}), job.out_dir / "curve.png")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROBUSTNESS_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(job.out_dir / "results.csv", buf.getvalue())
    summary = {"images": len(records), "curve": curve, "fooled_rate_max_eps": curve["fooled_rate"][-1],
               "median_min_eps": median_budget(r["min_eps"] for r in records)}
    atomic_write_json(job.out_dir / "results.json", {"model": clf.id, "method": name, "summary": summary,
                                                     "figure": "curve.png", "results": records})
    job.finish(images=len(keys), summary=summary)
    ui.emit({"model": clf.id, "method": name, "summary": summary, "skipped": job.skipped, "results": records,
             "failed": [{"image": str(p), "error": e} for p, e in failed]})
    if not json and not quiet:
        unit = "/255" if norm == "linf" else ""
        scale = 255 if norm == "linf" else 1
        table = Table("budget ε", "images fooled", title=f"{name} ({norm}) on {clf.id}, target {target}")
        for e, r in zip(grid, curve["fooled_rate"], strict=True):
            table.add_row(f"{e * scale:.3g}{unit}", f"{r:.0%}")
        out_console.print(table)
        ui.info(f"curve and per-image smallest budgets in {job.out_dir}")
    return 1 if failed else 0
