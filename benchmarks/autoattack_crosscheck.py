"""featvis APGD / AutoAttack against torchattacks 3.5.1 on EfficientNet-Lite0: robust accuracy at tiny budgets
(L∞ 0.1–1 /255, L2 0.05–0.25), same loss and iterations, model calls counted on both, alternating in one run.

    PYTHONPATH=src /work/venvs/ta/bin/python benchmarks/autoattack_crosscheck.py [--photos out/evalset] [--steps 10]

Labels are the model's own predictions on the photos (clean accuracy 100 %), so robust accuracy is the share whose
prediction no attack changes. torchattacks judges the float images; featvis is run both ways: on floats
(`rounding=False`, the reference's judgement) and on the 8-bit images a user keeps (featvis's default; under half an
8-bit level every rounded image of an 8-bit photo is the photo itself, so those budgets are not run 8-bit).
"""

from __future__ import annotations

import argparse
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

from _common import machine, save

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=None, help="a folder of extra photos (benchmarks/evalset.py)")
    ap.add_argument("--steps", type=int, default=10, help="APGD iterations (torchattacks' default is 10)")
    ap.add_argument("--full-aa", default="", help="comma list of L∞ budgets in /255 at which torchattacks' full "
                    "AutoAttack (with FAB-T and Square 5000) also runs")
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
    n = x.shape[0]
    out = {"machine": machine(), "images": names, "steps": args.steps, "torchattacks": torchattacks.__version__,
           "torch": torch.__version__, "apgd": [], "autoattack": []}
    print(f"{n} images, APGD-CE {args.steps} steps")
    hdr = (f"{'norm':5s} {'eps':>9s} | {'fv float':>8s} {'ta float':>8s} | {'fv 8bit':>7s} {'ta 8bit':>7s} | "
           f"{'fv imgs':>7s} {'ta imgs':>7s} | {'fv s/img':>8s} {'ta s/img':>8s}")
    print(hdr)
    for norm, grid in (("linf", LINF), ("l2", L2)):
        for eps in grid:
            row = {"norm": norm, "eps": eps, "eps_255": eps * 255 if norm == "linf" else None}
            # featvis on floats: the same iteration, judged as torchattacks judges
            t0 = time.perf_counter()
            fooled = lambda p, rows: p != y[rows]  # noqa: E731
            adv, _, _ = restarts_run(clf, x, _losses("ce", y, None), fooled, eps=eps, norm=norm, steps=args.steps,
                                     restarts=1, seed=0, rounding=False)
            row["fv_float_s_per_image"] = (time.perf_counter() - t0) / n
            row["fv_float_calls"] = count.take()
            fv_float = predict(clf, adv) == y
            count.take()
            # torchattacks APGD (CE), same steps
            t0 = time.perf_counter()
            ta = torchattacks.APGD(clf, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=args.steps,
                                   n_restarts=1, seed=0, loss="ce")
            ta_adv = ta(x, y)
            row["ta_s_per_image"] = (time.perf_counter() - t0) / n
            row["ta_calls"] = count.take()
            ta_float = predict(clf, ta_adv) == y
            ta_8bit = predict(clf, fv.quantize(ta_adv)) == y
            count.take()
            row.update(fv_float_robust=fv_float.tolist(), ta_float_robust=ta_float.tolist(),
                       ta_8bit_robust=ta_8bit.tolist())
            fv8 = None
            if norm == "l2" or eps >= 0.5 / 255:  # featvis's own default: judged on the 8-bit image
                t0 = time.perf_counter()
                res = fv.fool(clf, x, None, method="apgd", eps=eps, norm=norm, steps=args.steps, seed=0)
                row["fv_8bit_s_per_image"] = (time.perf_counter() - t0) / n
                row["fv_8bit_calls"] = count.take()
                fv8 = ~res.success
                row["fv_8bit_robust"] = fv8.tolist()
            out["apgd"].append(row)
            ra = lambda r: f"{float(r.float().mean()):8.0%}"  # noqa: E731
            print(f"{norm:5s} {eps * 255 if norm == 'linf' else eps:9.3g} | {ra(fv_float)} {ra(ta_float)} | "
                  f"{ra(fv8)[1:] if fv8 is not None else '      -'} {ra(ta_8bit)[1:]} | "
                  f"{row['fv_float_calls']['images']:7d} {row['ta_calls']['images']:7d} | "
                  f"{row['fv_float_s_per_image']:8.2f} {row['ta_s_per_image']:8.2f}", flush=True)
            save("autoattack_crosscheck", out)
    print("\nAutoAttack (APGD-CE + APGD-T; FAB-T/Square where registered), float judgement, same steps")
    full = {float(v) / 255 for v in args.full_aa.split(",") if v.strip()}
    for norm, grid in (("linf", LINF), ("l2", L2)):
        for eps in grid:
            row = {"norm": norm, "eps": eps}
            t0 = time.perf_counter()
            r = autoattack(clf, x, y, eps=eps, norm=norm, steps=args.steps, rounding=False)
            row["fv_s_per_image"] = (time.perf_counter() - t0) / n
            row["fv_calls"] = count.take()
            row.update(fv_robust=r.robust.tolist(), fv_broken_by=r.broken_by, fv_attacks=r.attacks, fv_notes=r.notes)
            ta_norm = "Linf" if norm == "linf" else "L2"
            t0 = time.perf_counter()
            multi = torchattacks.MultiAttack([
                torchattacks.APGD(clf, norm=ta_norm, eps=eps, steps=args.steps, seed=0, loss="ce"),
                torchattacks.APGDT(clf, norm=ta_norm, eps=eps, steps=args.steps, seed=0, n_classes=10)])
            ta_adv = multi(x, y)
            row["ta_s_per_image"] = (time.perf_counter() - t0) / n
            row["ta_calls"] = count.take()
            ta_rob = predict(clf, ta_adv) == y
            count.take()
            row["ta_robust"] = ta_rob.tolist()
            r8 = None
            if norm == "l2" or eps >= 0.5 / 255:
                t0 = time.perf_counter()
                r8 = autoattack(clf, x, y, eps=eps, norm=norm, steps=args.steps)
                row["fv_8bit_s_per_image"] = (time.perf_counter() - t0) / n
                row["fv_8bit_calls"] = count.take()
                row["fv_8bit_robust"] = r8.robust.tolist()
                row["fv_8bit_broken_by"] = r8.broken_by
            if norm == "linf" and any(math.isclose(eps, f) for f in full):
                t0 = time.perf_counter()
                aa = torchattacks.AutoAttack(clf, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
                full_rob = predict(clf, aa(x, y)) == y
                row["ta_full_s_per_image"] = (time.perf_counter() - t0) / n
                row["ta_full_calls"] = count.take()
                row["ta_full_robust"] = full_rob.tolist()
            out["autoattack"].append(row)
            print(f"{norm:5s} {eps * 255 if norm == 'linf' else eps:9.3g} | fv {r.robust_accuracy:4.0%} "
                  f"({row['fv_calls']['images']} imgs, {row['fv_s_per_image']:.2f} s/img) | ta "
                  f"{float(ta_rob.float().mean()):4.0%} ({row['ta_calls']['images']} imgs, "
                  f"{row['ta_s_per_image']:.2f} s/img) | fv 8-bit "
                  f"{'-' if r8 is None else f'{r8.robust_accuracy:.0%}'}"
                  + (f" | ta full AA {float(full_rob.float().mean()):.0%}" if "ta_full_robust" in row else ""),
                  flush=True)
            save("autoattack_crosscheck", out)
    # each image's smallest breaking budget on the L∞ grid, per library (float judgement, APGD-CE)
    rows = [r for r in out["apgd"] if r["norm"] == "linf"]
    smallest = {}
    for who in ("fv_float", "ta_float"):
        smallest[who] = [next((round(r["eps"] * 255, 3) for r in rows if not r[f"{who}_robust"][i]), None)
                         for i in range(n)]
    out["smallest_breaking_linf_255"] = smallest
    print("\nsmallest breaking L∞ budget /255 (APGD-CE, float):")
    for i, name in enumerate(names):
        print(f"  {name:28s} featvis {smallest['fv_float'][i]}  torchattacks {smallest['ta_float'][i]}")
    print(f"saved {save('autoattack_crosscheck', out)}")


if __name__ == "__main__":
    main()
