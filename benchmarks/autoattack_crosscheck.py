"""featvis APGD / FAB / Square / AutoAttack against torchattacks 3.5.1 on EfficientNet-Lite0: robust accuracy at
tiny budgets (L∞ 0.1–1 /255, L2 0.05–0.25), same iterations and queries, model calls counted on both, alternating in
one run.

    PYTHONPATH=src /work/venvs/ta/bin/python benchmarks/autoattack_crosscheck.py [--photos out/evalset] [--steps 10]
        [--sections apgd,fab,fab-t,square,autoattack]

Labels are the model's own predictions on the photos (clean accuracy 100 %), so robust accuracy is the share whose
prediction no attack changes. torchattacks judges the float images; featvis is run both ways: on floats
(`rounding=False`, the reference's judgement) and on the 8-bit images a user keeps (featvis's default; under half an
8-bit level every rounded image of an 8-bit photo is the photo itself, so those budgets are not run 8-bit).

Untargeted FAB: torchattacks linearizes all 1000 classes (1000 backward passes a step), featvis the 9 strongest
other classes, so it runs `--fab-untargeted-steps` (2) steps once per norm, with no budget, and each budget's robust
accuracy is read off the smallest adversarial found (the search never depends on ε without restarts). FAB-T (top-9
targets in turn, each only on the images not yet broken within ε) runs per budget. AutoAttack is the standard
version on both sides (APGD-CE, APGD-T, FAB-T, Square) with `--steps` iterations and `--aa-queries` Square queries
(torchattacks' AutoAttack fixes 5000: its Square is set to the same count). Sections run are merged into the
existing results file.
"""
# ruff: noqa: B023 (every lambda given to _timed runs at once, inside its loop iteration)

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import torchattacks

import featvis as fv
from featvis.adversarial.apgd import _losses, restarts_run
from featvis.adversarial.autoattack import autoattack
from featvis.adversarial.fab import fab_run
from featvis.adversarial.square import square_run

from _common import RESULTS, machine, save

LINF = [0.1 / 255, 0.25 / 255, 0.5 / 255, 1 / 255]
L2 = [0.05, 0.1, 0.25]


class Counter:
    """Counts the classifier's forward calls and the images they carry (an instance-level forward wrapper, so both
    libraries, which call the same Classifier, are counted the same way)."""

    def __init__(self, clf):
        self.calls = self.images = 0
        inner = clf.forward

        def forward(x):
            self.calls += 1
            self.images += x.shape[0]
            return inner(x)

        clf.forward = forward

    def take(self) -> dict:
        out = {"calls": self.calls, "images": self.images}
        self.calls = self.images = 0
        return out


def predict(clf, x):
    with torch.no_grad():
        return clf(x).argmax(-1)


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _ra(r) -> str:
    return "      -" if r is None else f"{float(torch.as_tensor(r).float().mean()):7.0%}"


def _budget(norm: str, eps: float) -> str:
    return f"{norm:5s} {eps * 255 if norm == 'linf' else eps:9.3g}"


def _timed(count, n, fn):
    """(fn(), seconds per image, the model calls it made); fn runs at once, so its loop variables are current."""
    t0 = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - t0) / n, count.take()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=None, help="a folder of extra photos (benchmarks/evalset.py)")
    ap.add_argument("--steps", type=int, default=10, help="APGD / FAB iterations (torchattacks' default is 10)")
    ap.add_argument("--fab-untargeted-steps", type=int, default=2, help="untargeted FAB iterations (torchattacks "
                    "takes 1000 backward passes a step on ImageNet)")
    ap.add_argument("--queries", type=int, default=500, help="Square queries in the Square section")
    ap.add_argument("--aa-queries", type=int, default=1000, help="Square queries inside AutoAttack (standard: 5000)")
    ap.add_argument("--sections", default="apgd,fab,fab-t,square,autoattack", help="comma list of sections to run")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    clf = fv.load_model()
    for p in clf.parameters():
        p.requires_grad_(False)
    x = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    names = list(fv.samples.names())
    if args.photos is not None:
        files = sorted(f for f in args.photos.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg")
                       and f.stem not in names)
        x = torch.cat([x, *(fv.load_image(f, clf) for f in files)])
        names += [f.stem for f in files]
    y = predict(clf, x)
    warm = x.clone().requires_grad_(True)  # build the fast copy before anything is timed
    torch.autograd.grad(clf(warm).logsumexp(-1).sum(), warm)
    count = Counter(clf)
    path = RESULTS / "autoattack_crosscheck.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    out.update({"machine": machine(), "images": names, "steps": args.steps, "torchattacks": torchattacks.__version__,
                "torch": torch.__version__})
    sections = {"apgd": apgd_section, "fab": fab_section, "fab-t": fab_t_section, "square": square_section,
                "autoattack": autoattack_section}
    for name in args.sections.split(","):
        out[name] = []
        sections[name](clf, x, y, count, args, out)
    print(f"saved {save('autoattack_crosscheck', out)}")


def apgd_section(clf, x, y, count, args, out) -> None:
    """APGD-CE, same steps: featvis on floats and on 8 bits, torchattacks judged both ways."""
    n = x.shape[0]
    print(f"{n} images, APGD-CE {args.steps} steps")
    print(f"{'norm':5s} {'eps':>9s} | {'fv float':>8s} {'ta float':>8s} | {'fv 8bit':>7s} {'ta 8bit':>7s} | "
          f"{'fv imgs':>7s} {'ta imgs':>7s} | {'fv s/img':>8s} {'ta s/img':>8s}")
    for norm, grid in (("linf", LINF), ("l2", L2)):
        for eps in grid:
            row = {"norm": norm, "eps": eps, "eps_255": eps * 255 if norm == "linf" else None}
            # featvis on floats: the same iteration, judged as torchattacks judges
            fooled = lambda p, rows: p != y[rows]  # noqa: E731
            adv, row["fv_float_s_per_image"], row["fv_float_calls"] = _timed(count, n, lambda: restarts_run(
                clf, x, _losses("ce", y, None), fooled, eps=eps, norm=norm, steps=args.steps, restarts=1, seed=0,
                rounding=False)[0])
            fv_float = predict(clf, adv) == y
            count.take()
            ta = torchattacks.APGD(clf, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=args.steps,
                                   n_restarts=1, seed=0, loss="ce")
            ta_adv, row["ta_s_per_image"], row["ta_calls"] = _timed(count, n, lambda: ta(x, y))
            ta_float = predict(clf, ta_adv) == y
            ta_8bit = predict(clf, fv.quantize(ta_adv)) == y
            count.take()
            row.update(fv_float_robust=fv_float.tolist(), ta_float_robust=ta_float.tolist(),
                       ta_8bit_robust=ta_8bit.tolist())
            fv8 = None
            if norm == "l2" or eps >= 0.5 / 255:  # featvis's own default: judged on the 8-bit image
                res, row["fv_8bit_s_per_image"], row["fv_8bit_calls"] = _timed(count, n, lambda: fv.fool(
                    clf, x, None, method="apgd", eps=eps, norm=norm, steps=args.steps, seed=0))
                fv8 = ~res.success
                row["fv_8bit_robust"] = fv8.tolist()
            out["apgd"].append(row)
            print(f"{_budget(norm, eps)} | {_ra(fv_float):>8s} {_ra(ta_float):>8s} | {_ra(fv8)} {_ra(ta_8bit)} | "
                  f"{row['fv_float_calls']['images']:7d} {row['ta_calls']['images']:7d} | "
                  f"{row['fv_float_s_per_image']:8.2f} {row['ta_s_per_image']:8.2f}", flush=True)
            save("autoattack_crosscheck", out)
    # each image's smallest breaking budget on the L∞ grid, per library (float judgement, APGD-CE)
    rows = [r for r in out["apgd"] if r["norm"] == "linf"]
    smallest = {who: [next((round(r["eps"] * 255, 3) for r in rows if not r[f"{who}_robust"][i]), None)
                      for i in range(n)] for who in ("fv_float", "ta_float")}
    out["smallest_breaking_linf_255"] = smallest
    print("\nsmallest breaking L∞ budget /255 (APGD-CE, float):")
    for i, name in enumerate(out["images"]):
        print(f"  {name:28s} featvis {smallest['fv_float'][i]}  torchattacks {smallest['ta_float'][i]}")


def fab_section(clf, x, y, count, args, out) -> None:
    """Untargeted FAB, one run per norm without a budget (float judgement); robust accuracy per budget from the
    smallest adversarial found. torchattacks runs at the largest budget (it keeps only adversarials within it)."""
    n, steps = x.shape[0], args.fab_untargeted_steps
    print(f"\nFAB untargeted, {steps} steps (featvis: 9 strongest boundaries; torchattacks: all 1000)")
    for norm, grid in (("linf", LINF), ("l2", L2)):
        (best, size, _), fv_s, fv_calls = _timed(count, n, lambda: fab_run(
            clf, x, y, lambda p, rows: p != y[rows], norm=norm, steps=steps, candidates=9, rounding=False))
        fv_ok = (predict(clf, best) != y) & torch.isfinite(size)
        count.take()
        ta = torchattacks.FAB(clf, norm="Linf" if norm == "linf" else "L2", eps=max(grid), steps=steps, n_restarts=1,
                              seed=0, multi_targeted=False)
        ta_adv, ta_s, ta_calls = _timed(count, n, lambda: ta(x, y))
        ta_ok = predict(clf, ta_adv) != y
        ta_size = torch.where(ta_ok, _norms(ta_adv - x, norm), torch.full_like(size, math.inf))
        count.take()
        for eps in grid:
            row = {"norm": norm, "eps": eps, "fv_robust": (~(fv_ok & (size <= eps))).tolist(),
                   "ta_robust": (~(ta_ok & (ta_size <= eps))).tolist(), "fv_s_per_image": fv_s, "fv_calls": fv_calls,
                   "ta_s_per_image": ta_s, "ta_calls": ta_calls, "fv_norms": size.tolist(),
                   "ta_norms": ta_size.tolist(), "steps": steps}
            out["fab"].append(row)
            print(f"{_budget(norm, eps)} | fv {_ra(row['fv_robust'])} ta {_ra(row['ta_robust'])} | calls "
                  f"{fv_calls['calls']}/{ta_calls['calls']} | s/img {fv_s:.2f}/{ta_s:.2f}", flush=True)
        save("autoattack_crosscheck", out)


def fab_t_section(clf, x, y, count, args, out) -> None:
    """FAB-T (top-9 targets in turn, success on any misclassification), per budget, float judgement."""
    n = x.shape[0]
    print(f"\nFAB-T, 9 targets x {args.steps} steps, per budget")
    for norm, grid in (("linf", LINF), ("l2", L2)):
        for eps in grid:
            row = {"norm": norm, "eps": eps}
            res, row["fv_s_per_image"], row["fv_calls"] = _timed(count, n, lambda: fv.fool(
                clf, x, None, method="fab-t", norm=norm, eps=eps, steps=args.steps, rounding=False))
            norms = torch.tensor(res.params["norms"], dtype=x.dtype)
            fv_rob = ~(norms <= eps)
            ta = torchattacks.FAB(clf, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=args.steps,
                                  n_restarts=1, seed=0, multi_targeted=True, n_classes=10)
            ta_adv, row["ta_s_per_image"], row["ta_calls"] = _timed(count, n, lambda: ta(x, y))
            ta_rob = predict(clf, ta_adv) == y
            count.take()
            row.update(fv_robust=fv_rob.tolist(), ta_robust=ta_rob.tolist(), fv_norms=res.params["norms"])
            out["fab-t"].append(row)
            print(f"{_budget(norm, eps)} | fv {_ra(fv_rob)} ta {_ra(ta_rob)} | calls {row['fv_calls']['calls']}/"
                  f"{row['ta_calls']['calls']} | s/img {row['fv_s_per_image']:.2f}/{row['ta_s_per_image']:.2f}",
                  flush=True)
            save("autoattack_crosscheck", out)


def square_section(clf, x, y, count, args, out) -> None:
    """Square, same query budget, float judgement (featvis rounding=False: float steps of ±ε, as the reference)."""
    n = x.shape[0]
    print(f"\nSquare, {args.queries} queries, per budget")
    for norm, grid in (("linf", LINF), ("l2", L2)):
        for eps in grid:
            row = {"norm": norm, "eps": eps, "queries": args.queries}
            (best, _, used), row["fv_s_per_image"], row["fv_calls"] = _timed(count, n, lambda: square_run(
                clf, x, y, False, eps=eps, norm=norm, queries=args.queries, seed=0, rounding=False))
            fv_rob = predict(clf, best) == y
            count.take()
            ta = torchattacks.Square(clf, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=args.queries,
                                     n_restarts=1, seed=0)
            ta_adv, row["ta_s_per_image"], row["ta_calls"] = _timed(count, n, lambda: ta(x, y))
            ta_rob = predict(clf, ta_adv) == y
            count.take()
            row.update(fv_robust=fv_rob.tolist(), ta_robust=ta_rob.tolist(), fv_queries=used.tolist(),
                       fv_max_norm=float(_norms(best - x, norm).max()),
                       ta_max_norm=float(_norms(ta_adv - x, norm).max()))
            out["square"].append(row)
            print(f"{_budget(norm, eps)} | fv {_ra(fv_rob)} ta {_ra(ta_rob)} | calls {row['fv_calls']['calls']}/"
                  f"{row['ta_calls']['calls']} imgs {row['fv_calls']['images']}/{row['ta_calls']['images']} | s/img "
                  f"{row['fv_s_per_image']:.2f}/{row['ta_s_per_image']:.2f}", flush=True)
            save("autoattack_crosscheck", out)


def autoattack_section(clf, x, y, count, args, out) -> None:
    """The standard AutoAttack on both sides, float judgement (featvis also 8-bit where a level fits the budget)."""
    n = x.shape[0]
    print(f"\nAutoAttack standard (APGD-CE, APGD-T, FAB-T, Square {args.aa_queries}), {args.steps} steps")
    aa_mod = sys.modules["featvis.adversarial.autoattack"]
    versions = dict(aa_mod.VERSIONS)
    aa_mod.VERSIONS["standard"] = [(a, b, {**o, "queries": args.aa_queries} if "queries" in o else o)
                                   for a, b, o in versions["standard"]]
    try:
        for norm, grid in (("linf", LINF), ("l2", L2)):
            for eps in grid:
                row = {"norm": norm, "eps": eps, "square_queries": args.aa_queries}
                r, row["fv_s_per_image"], row["fv_calls"] = _timed(count, n, lambda: autoattack(
                    clf, x, y, eps=eps, norm=norm, steps=args.steps, rounding=False))
                row.update(fv_robust=r.robust.tolist(), fv_broken_by=r.broken_by, fv_attacks=r.attacks,
                           fv_notes=r.notes)
                ta = torchattacks.AutoAttack(clf, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                             version="standard", n_classes=10, seed=0)
                ta._autoattack.attacks[-1].n_queries = args.aa_queries  # its Square; the others take 10 steps
                ta_adv, row["ta_s_per_image"], row["ta_calls"] = _timed(count, n, lambda: ta(x, y))
                ta_rob = predict(clf, ta_adv) == y
                count.take()
                row["ta_robust"] = ta_rob.tolist()
                r8 = None
                if (norm == "linf" and eps >= 0.5 / 255) or (norm == "l2" and eps >= 0.25):
                    r8, row["fv_8bit_s_per_image"], row["fv_8bit_calls"] = _timed(count, n, lambda: autoattack(
                        clf, x, y, eps=eps, norm=norm, steps=args.steps))
                    row["fv_8bit_robust"] = r8.robust.tolist()
                    row["fv_8bit_broken_by"] = r8.broken_by
                out["autoattack"].append(row)
                print(f"{_budget(norm, eps)} | fv {r.robust_accuracy:4.0%} ({row['fv_calls']['calls']} calls, "
                      f"{row['fv_calls']['images']} imgs, {row['fv_s_per_image']:.2f} s/img) | ta "
                      f"{float(ta_rob.float().mean()):4.0%} ({row['ta_calls']['calls']} calls, "
                      f"{row['ta_calls']['images']} imgs, {row['ta_s_per_image']:.2f} s/img) | fv 8-bit "
                      f"{'-' if r8 is None else f'{r8.robust_accuracy:.0%}'}", flush=True)
                save("autoattack_crosscheck", out)
    finally:
        aa_mod.VERSIONS["standard"] = versions["standard"]


if __name__ == "__main__":
    main()
