"""Listing commands (models, methods, attacks, presets, layers) and classify."""

from __future__ import annotations

from typing import Annotated

import typer

from featvis.cli._common import (
    DeviceOpt,
    InputsArg,
    JsonOpt,
    ModelOpt,
    TrustOpt,
    WeightsOpt,
    app,
    load_classifier,
    print_rows,
    say,
    task_command,
    task_from,
)
from featvis.models import DEFAULT_MODEL
from featvis.tasks import ClassifyTask


@app.command()
def models(json: JsonOpt = False) -> None:
    """List the models featvis knows and whether each is installed."""
    from featvis.models import available_models

    rows = available_models()
    print_rows(["name", "installed", "extra", "description"],
               [[r["name"], r["installed"], r["extra"], r["description"]] for r in rows], json, rows)


def _per_mode(option, by_mode: dict | None) -> dict:
    """{mode: default} for an option left None in the signature whose default the mode picks (`mode_defaults`,
    {mode: {name: value}}), else {}."""
    return {m: d[option.name] for m, d in (by_mode or {}).items() if option.default is None and option.name in d}


def _options_text(options, by_mode: dict | None = None) -> str:
    """`name=default, ...`; an option whose default depends on the attack's mode shows each, `steps=10 targeted/8
    untargeted`."""
    def shown(o) -> str:
        per_mode = _per_mode(o, by_mode)
        return "/".join(f"{v!r} {m}" for m, v in per_mode.items()) if per_mode else repr(o.default)

    return ", ".join(f"{o.name}={shown(o)}" for o in options.values()) or "-"


@app.command()
def methods(json: JsonOpt = False) -> None:
    """List the attribution methods (for --method) with their options (for -O KEY=VALUE)."""
    from featvis.attribution import ATTRIBUTIONS

    specs = [ATTRIBUTIONS.get(n) for n in ATTRIBUTIONS.names()]
    records = [{"name": s.name, "aliases": ATTRIBUTIONS.aliases(s.name), "summary": s.summary,
                "options": {k: {"default": o.default, "kind": o.kind, "help": o.help} for k, o in s.options.items()}}
               for s in specs]
    rows = [[s.name, s.summary, _options_text(s.options)] for s in specs]
    for prefix, summary in ATTRIBUTIONS.prefixes().items():  # smooth:METHOD, ...: one row per family, not per method
        example, plain = ATTRIBUTIONS.get(f"{prefix}:gradient"), ATTRIBUTIONS.get("gradient")
        own = {k: o for k, o in example.options.items() if k not in plain.options}  # the family's own options
        rows.append([f"{prefix}:METHOD", summary, _options_text(own) + " and METHOD's"])
        records.append({"name": f"{prefix}:METHOD", "parametric": True, "summary": summary,
                        "aliases": [f"{a}:METHOD" for a in ATTRIBUTIONS.family_aliases(prefix)],
                        "options": {k: {"default": o.default, "kind": o.kind, "help": o.help} for k, o in own.items()}})
    print_rows(["method", "what it computes", "options (-O)"], rows, json, records)


@app.command()
def attacks(json: JsonOpt = False) -> None:
    """List the attacks (for `fool --method`) with what they can do and their options."""
    from featvis.adversarial import ATTACKS

    specs = [ATTACKS.get(n) for n in ATTACKS.names()]

    def option_record(s, o) -> dict:
        per_mode = _per_mode(o, s.info.get("mode_defaults"))
        return {"default": o.default, "kind": o.kind, "help": o.help,
                **({"default_by_mode": per_mode} if per_mode else {})}

    records = [{"name": s.name, "summary": s.summary, **{k: v for k, v in s.info.items()},
                "options": {k: option_record(s, o) for k, o in s.options.items()}} for s in specs]
    modes = lambda s: "/".join(m for m in ("targeted", "untargeted") if s.info.get(m))  # noqa: E731
    print_rows(["attack", "targets", "budget", "what it does", "options (-O)"],
               [[s.name, modes(s), "/".join(s.info.get("norms", ())) or "none", s.summary,
                 _options_text(s.options, s.info.get("mode_defaults"))] for s in specs], json, records)


@app.command()
def presets(json: JsonOpt = False) -> None:
    """List the visualization presets (for --preset) with their default steps and options."""
    from featvis.optvis import PRESETS
    from featvis.tasks.optvis import preset_options

    rows, records = [], []
    for n in PRESETS.names():
        spec, opts = PRESETS.get(n), preset_options(n)
        rows.append([n, spec.steps, spec.description, _options_text(opts)])
        records.append({"name": n, "steps": spec.steps, "description": spec.description,
                        "options": {k: {"default": o.default, "kind": o.kind, "help": o.help} for k, o in
                                    opts.items()}})
    print_rows(["preset", "default steps", "what it does", "options (-O)"], rows, json, records)


@task_command(ClassifyTask, output=None, batch=16)
def classify(inputs: InputsArg, fields: dict, options: dict):
    """Top-k classes of each image (with labels: accuracy, per-class accuracy, the mistakes)."""
    return task_from(ClassifyTask, fields, options)


@app.command()
def layers(
    model: ModelOpt = DEFAULT_MODEL,
    filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only names/types containing TEXT.",
                                               metavar="TEXT")] = None,
    size: Annotated[int | None, typer.Option(help="Input side for the output shapes (default: native).",
                                             metavar="PX")] = None,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "cpu",
    json: JsonOpt = False,
) -> None:
    """List a model's layers (dotted names) with output shapes; the default Grad-CAM layer is marked."""
    from featvis.layers import default_layer, layer_label, list_layers

    clf = load_classifier(model, device, weights, trust_checkpoint)
    infos = list_layers(clf, size=size, filter=filter)
    try:
        default = default_layer(clf)
    except ValueError:
        default = None
    label = lambda name: layer_label(clf, name) if name else name  # noqa: E731  (the one name users type)
    record = {"model": clf.id, "default_layer": label(default), "layers": [
        {"name": label(i.name), "module": i.name, "type": i.type, "shape": i.shape, "calls": i.calls,
         "params": i.params} for i in infos]}
    if not json:
        say(f"{clf.id}; default layer (marked *): {label(default)}")
    print_rows(["name", "type", "output [C, H, W]", "calls", "params"],
               [[label(i.name) + (" *" if i.name == default else ""), i.type, "×".join(map(str, i.shape)) if i.shape
                 else "-", i.calls, f"{i.params:,}"] for i in infos], json, record)


@app.command()
def metrics(json: JsonOpt = False) -> None:
    """List the evaluation metrics (for `featvis evaluate --metric`) with their direction, paper and protocol."""
    from featvis.attribution.metric import METRICS, default_metrics

    specs = [METRICS.get(n) for n in METRICS.names()]
    defaults = default_metrics()
    records = [{"name": m.name, "direction": m.direction, "paper": m.paper, "protocol": m.protocol,
                "default": m.name in defaults} for m in specs]
    print_rows(["metric", "better", "default", "paper", "protocol"],
               [[m.name, m.direction, m.name in defaults, m.paper, m.protocol] for m in specs], json, records)
