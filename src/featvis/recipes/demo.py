"""The demo: the whole lab on the bundled photos as a list of tasks, and one report page from their runs.

`featvis demo` is `run_demo`; it is a list of tasks in the library, not a caller of CLI commands. Each stage is a
resumable run in `OUT/runs/<stage>`, so a rerun skips what is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featvis.tasks import ClassifyTask, ClassvisTask, FeaturesTask, FoolTask, RobustnessTask, SaliencyTask, Task
from featvis.tasks.runner import Event, run_task

DEMO_CLASSES = ("tarantula", "snail", "pizza", "gorilla", "tick")
DEMO_LAYERS = ("blocks.2", "blocks.8", "blocks.15")  # early, middle, late

INTRO = ("Everything featvis shows, on {n} bundled public-domain photos and the {model} ImageNet classifier: "
         "what the model predicts, which pixels drive it, how little it takes to fool it, and what it has learned "
         "about classes and single channels. Every section lists the parameters and model id it ran with.")


@dataclass(frozen=True)
class Stage:
    name: str
    task: Task
    photos: bool  # runs on the bundled photos (else the task makes its own items)


def plan(quick: bool = False) -> list[Stage]:
    """The demo's stages: the full lab, or (quick) small sizes and few steps for a run of about a minute."""
    if quick:
        methods, steps, classes, size, lab, lucid = ("gradient", "gradcam"), 8, DEMO_CLASSES[:2], 64, 20, 20
        channels, fsize, fsteps, budgets = (0, 1), 48, 10, ("1/255", "2/255")
    else:
        methods, steps, classes, size, lab, lucid = (("gradient", "smoothgrad", "integrated-gradients", "gradcam"),
                                                     None, DEMO_CLASSES, 224, 100, 200)
        channels, fsize, fsteps, budgets = (0, 1, 2, 3), 128, 128, ("1/255", "2/255", "3/255", "4/255")
    stages = [
        Stage("classify", ClassifyTask(top_k=5), True),
        Stage("saliency", SaliencyTask(methods=methods, metrics=True, metric_steps=steps), True),
        Stage("fool", FoolTask(method="ascent", target="stingray"), True),
        Stage("robustness", RobustnessTask(eps=budgets, target="random"), True),
        Stage("classvis-lab", ClassvisTask(classes=classes, preset="lab", steps=lab, size=size), False),
        Stage("classvis-lucid", ClassvisTask(classes=classes, preset="lucid", steps=lucid, size=size), False),
    ]
    stages += [Stage(f"features-{layer}", FeaturesTask(layer=layer, channels=channels, steps=fsteps, size=fsize),
                     False) for layer in DEMO_LAYERS]
    return stages


def run_demo(clf, out: str | Path, *, quick: bool = False, photos: list[str] | None = None, overwrite: bool = False,
             progress: Callable[[str, int, int, Event], None] | None = None, title: str = "featvis demo",
             embed: bool = False) -> Path:
    """Run every stage into OUT/runs/<stage> and write OUT/index.html; returns the page's path.

    `progress(stage, index, count, event)` gets every runner event of every stage.
    """
    from featvis import samples
    from featvis.report import build_report

    out = Path(out)
    names = photos or (["chelsea", "coffee"] if quick else samples.names())
    files = [str(samples.path(n)) for n in names]
    stages = plan(quick)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, start=1):
        t0 = time.perf_counter()
        listener = (lambda e, s=stage.name, i=i: progress(s, i, len(stages), e)) if progress else None
        run_task(stage.task, files if stage.photos else None, out / "runs" / stage.name, clf=clf,
                 overwrite=overwrite, progress=listener)
        seconds[stage.name] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    return build_report([out / "runs" / s.name for s in stages], out, title=title, embed=embed,
                        intro=INTRO.format(n=len(files), model=clf.name), stage_seconds=seconds)


def describe(quick: bool = False) -> list[dict[str, Any]]:
    """The plan as data (for `featvis demo --json` and the docs)."""
    return [{"stage": s.name, "task": s.task.name, "params": s.task.param_dict()} for s in plan(quick)]
