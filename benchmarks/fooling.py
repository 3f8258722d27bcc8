"""Fooling images on the bundled photos × three targets (stingray 6, gorilla 366, pizza 963) at 224 px:
success after 8-bit rounding, steps, L∞ (0–255), L2, PSNR for ascent, the lab's recipe as written and PGD at
three budgets; both ascents on random targets; CW-L2 against PGD-L2; transfer to EfficientNet-Lite2; seconds per
fooled image beside Captum's FGSM/PGD and time per step as a ratio of the bare forward+backward floor.

    python benchmarks/fooling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.adversarial import fool, with_transfer

from _common import floor_step, machine, median_time, save

TARGETS = [6, 366, 963]


def summarize(res) -> dict:
    rows = res.records()
    return {"success": res.success_rate, "median_steps": statistics.median(r["steps"] for r in rows),
            "median_linf_255": statistics.median(r["linf_255"] for r in rows),
            "mean_linf_255": statistics.mean(r["linf_255"] for r in rows),
            "mean_l2": statistics.mean(r["l2"] for r in rows),
            "median_psnr": statistics.median(r["psnr_db"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    fv.tune_allocator()
    clf = fv.load_model()
    photos = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    x = photos.repeat(len(TARGETS), 1, 1, 1)
    t = torch.tensor([c for c in TARGETS for _ in range(photos.shape[0])])
    out = {"machine": machine(), "model": clf.id, "images": x.shape[0], "table": {}}

    runs = {"ascent": dict(method="ascent"),
            "lab (as written)": dict(method="lab"),
            "pgd eps=2/255": dict(method="pgd", eps=2 / 255, steps=20),
            "pgd eps=4/255": dict(method="pgd", eps=4 / 255, steps=20),
            "pgd eps=8/255": dict(method="pgd", eps=8 / 255, steps=20),
            "mifgsm eps=8/255": dict(method="mifgsm", eps=8 / 255)}
    results = {}
    print(f"{'attack':16s} {'success':>8s} {'med steps':>9s} {'med Linf':>8s} {'mean Linf':>9s} {'mean L2':>8s} "
          f"{'med PSNR':>8s} {'s/img':>6s}")
    for name, kw in runs.items():
        t0 = time.perf_counter()
        res = fool(clf, x, t, **kw)
        dt = (time.perf_counter() - t0) / x.shape[0]
        results[name] = res
        s = summarize(res) | {"s_per_image": dt}
        out["table"][name] = s
        print(f"{name:16s} {s['success']:8.0%} {s['median_steps']:9.1f} {s['median_linf_255']:8.1f} "
              f"{s['mean_linf_255']:9.2f} {s['mean_l2']:8.3f} {s['median_psnr']:8.1f} {dt:6.2f}", flush=True)

    # the two ascents on other inputs: the photos and their mirror images, twice, with seeded random targets
    xr = torch.cat([photos, photos.flip(-1)] * 2)
    tr = torch.randint(0, 1000, (xr.shape[0],), generator=torch.Generator().manual_seed(123))
    out["random_targets"] = {}
    print(f"\nrandom targets on {xr.shape[0]} images (photos and mirrors)")
    for name in ("ascent", "lab"):
        s = summarize(fool(clf, xr, tr, method=name))
        out["random_targets"][name] = s
        print(f"  {name:8s} success {s['success']:.0%}  median steps {s['median_steps']:.1f}  mean Linf "
              f"{s['mean_linf_255']:.2f}/255  mean L2 {s['mean_l2']:.3f}  median PSNR {s['median_psnr']:.1f}",
              flush=True)

    # CW-L2 against PGD-L2 on the same images
    sub = slice(0, 6) if args.quick else slice(None)
    cw = fool(clf, x[sub], t[sub], method="cw", steps=50, search_steps=4)
    pgd2 = fool(clf, x[sub], t[sub], method="pgd", norm="l2", eps=2.0, steps=40)
    out["cw_vs_pgd_l2"] = {"cw": summarize(cw), "pgd-l2 eps=2": summarize(pgd2)}
    print("\nCW-L2 vs PGD-L2 (same images)")
    for name, s in out["cw_vs_pgd_l2"].items():
        print(f"  {name:14s} success {s['success']:.0%}  mean L2 {s['mean_l2']:.3f}  "
              f"mean Linf {s['mean_linf_255']:.1f}/255")

    # untargeted minimal changes: DeepFool against CW-L2 and early-stopped PGD-L2 on the six photos
    out["untargeted_l2"] = {}
    print("\nuntargeted, smallest change (six photos)")
    for name, kw in {"deepfool": dict(method="deepfool"), "cw": dict(method="cw", steps=50, search_steps=4),
                     "pgd-l2 eps=1": dict(method="pgd", norm="l2", eps=1.0, steps=10)}.items():
        t0 = time.perf_counter()
        s = summarize(fool(clf, photos, None, **kw)) | {"s_per_image": (time.perf_counter() - t0) / photos.shape[0]}
        out["untargeted_l2"][name] = s
        print(f"  {name:14s} success {s['success']:.0%}  mean L2 {s['mean_l2']:.3f}  mean Linf "
              f"{s['mean_linf_255']:.1f}/255  {s['s_per_image']:.2f} s/img", flush=True)

    # transfer to Lite2
    try:
        lite2 = fv.load_model("efficientnet-lite2")
        out["transfer"] = {}
        print("\ntransfer to efficientnet-lite2 (target predicted by Lite2)")
        for name, res in results.items():
            tr = with_transfer(res, lite2).transfer
            rate = float(tr["success"].float().mean())
            changed = float(tr["changed"].float().mean())
            out["transfer"][name] = {"target_rate": rate, "prediction_changed": changed}
            print(f"  {name:16s} fools Lite2 into the target: {rate:.0%}   Lite2 changes its own "
                  f"prediction: {changed:.0%}")
    except fv.FeatvisError as e:
        print(f"transfer skipped: {e}")

    # speed: seconds per fooled image at batch 1 and 8, featvis vs Captum, time per step vs floor
    import captum.robust as cr

    loss = lambda out_, tt: torch.nn.functional.cross_entropy(out_, tt, reduction="none")  # noqa: E731
    out["speed"] = []
    print("\nspeed (224 px)")
    steps = 10
    for b in (1, 8):
        xb, tb = x[:b], t[:b]
        floor = median_time(floor_step(clf, xb), repeats=3) / b
        for p in clf.parameters():
            p.requires_grad_(True)
        ours = median_time(lambda xb=xb, tb=tb: fool(clf, xb, tb, method="pgd", eps=8 / 255, alpha=2 / 255,
                                                      steps=steps, early_stop=False), repeats=3, warmup=1) / b
        theirs = median_time(lambda xb=xb, tb=tb: cr.PGD(clf, loss, 0, 1).perturb(
            xb, radius=8 / 255, step_size=2 / 255, step_num=steps, target=tb, targeted=True), repeats=3, warmup=1) / b
        f_ours = median_time(lambda xb=xb, tb=tb: fool(clf, xb, tb, method="fgsm"), repeats=3, warmup=1) / b
        f_theirs = median_time(lambda xb=xb, tb=tb: cr.FGSM(clf, loss, 0, 1).perturb(xb, 8 / 255, tb, targeted=True),
                               repeats=3, warmup=1) / b
        t0 = time.perf_counter()
        res = fool(clf, xb, tb, method="ascent")
        asc = (time.perf_counter() - t0) / b
        asc_steps = float(res.steps.float().sum()) / b
        row = {"batch": b, "floor_ms": floor * 1e3, "pgd10_s_per_image": ours, "captum_pgd10_s_per_image": theirs,
               "pgd_step_over_floor": ours / (steps + 1) / floor, "fgsm_s_per_image": f_ours,
               "captum_fgsm_s_per_image": f_theirs, "ascent_s_per_fooled_image": asc,
               "ascent_step_over_floor": asc / max(asc_steps + 1, 1) / floor}
        out["speed"].append(row)
        print(f"  batch {b}: floor {floor * 1e3:.1f} ms/img | PGD-10 featvis {ours:.3f} s/img, Captum {theirs:.3f} "
              f"s/img | per step {row['pgd_step_over_floor']:.2f}x floor | FGSM featvis {f_ours:.3f}, Captum "
              f"{f_theirs:.3f} s/img | ascent {asc:.2f} s per fooled image ({row['ascent_step_over_floor']:.2f}x "
              f"floor per step)", flush=True)
    # every attack at its defaults: seconds per fooled image at batch 1 (first image) and batch 8 (first eight)
    out["per_attack"] = {}
    print("\nseconds per fooled image, each attack at its defaults (targeted; deepfool untargeted)")
    for name, kw in {"ascent": {}, "lab": {}, "fgsm": {}, "pgd": {}, "mifgsm": {},
                     "cw": dict(steps=50, search_steps=4), "deepfool": {}}.items():
        row = {}
        for b in (1, 8):
            t0 = time.perf_counter()
            res = fool(clf, x[:b], None if name == "deepfool" else t[:b], method=name, **kw)
            dt = time.perf_counter() - t0
            won = int(res.success.sum())
            row[f"batch{b}"] = {"s_per_fooled_image": dt / won if won else None, "fooled": won, "images": b}
        out["per_attack"][name] = row
        cells = "  ".join(f"b{b}: {row[f'batch{b}']['s_per_fooled_image'] or float('nan'):.2f} s "
                          f"({row[f'batch{b}']['fooled']}/{b})" for b in (1, 8))
        print(f"  {name:9s} {cells}", flush=True)
    print(f"saved {save('fooling', out)}")


if __name__ == "__main__":
    main()
