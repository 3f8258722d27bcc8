"""Minimal-norm attacks side by side on EfficientNet-Lite0: featvis cw, fmn, ddn and deepfool against torchattacks
3.5.1's CW and DeepFool and adv_lib 0.2.8's fmn, ddn and carlini_wagner_l2, targeted (seeded random targets) and
untargeted, on the same 8 photos, alternating in one run.

    PYTHONPATH=src /work/venvs/ta/bin/python benchmarks/min_norm.py [--photos out/evalset] [--repeats 3]

For each method: success rate, median L2 of the successful adversarials, s/image (the median over `--repeats`
alternating rounds: every method runs once per round, in the same order, on the same batch) and model forward passes
per image (images through the classifier / images attacked). featvis judges and measures the 8-bit image it returns;
the peers return floats, judged both on the floats (their own judgement) and after rounding to 8 bits (what a saved
PNG would do), with the L2 of each. Speed is reported as a ratio to torchattacks' CW in the same mode and round,
because the machine is shared. torchattacks' DeepFool differentiates all 1000 logits one by one (1000 backward
passes per step), so it runs in the first round only (`--deepfool-images` of them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.modules.setdefault("visdom", types.ModuleType("visdom"))  # adv_lib imports it for its optional plot logger
import torchattacks
from adv_lib.attacks import carlini_wagner_l2, ddn, fmn
from autoattack_crosscheck import Counter, predict

import featvis as fv
from featvis.adversarial._base import resolve_attack_targets
from featvis.adversarial.cw import cw as fv_cw
from featvis.adversarial.ddn import ddn as fv_ddn
from featvis.adversarial.deepfool import deepfool as fv_deepfool
from featvis.adversarial.fmn import fmn as fv_fmn

from _common import machine, save

EXTRA = ("sklearn-china.jpg", "sklearn-flower.jpg")  # the two photos of evalset.py after the 6 bundled ones
STEPS = 100  # FMN/DDN iterations for both libraries (featvis's default; adv_lib's DDN default too)


def methods(clf, steps: int) -> list[tuple[str, str, bool, object]]:
    """(name, library, targeted, run(x, cls) -> FoolingResult or float adversarials); cls is the target or label."""
    def ta_cw(targeted):
        def run(x, cls):
            atk = torchattacks.CW(clf)  # its defaults: c=1, kappa=0, steps=50, lr=0.01
            if targeted:
                atk.set_mode_targeted_by_label(quiet=True)
            return atk(x, cls)
        return run

    out = []
    for targeted in (True, False):
        t = targeted
        out += [
            ("cw", "featvis", t, lambda x, c, t=t: fv_cw(clf, x, c.tolist() if t else None)),
            ("cw 3x10", "featvis", t, lambda x, c, t=t: fv_cw(clf, x, c.tolist() if t else None, search_steps=3,
                                                              steps=10, lr=0.005)),
            (f"fmn-l2 {steps}", "featvis", t, lambda x, c, t=t: fv_fmn(clf, x, c.tolist() if t else None,
                                                                      norm="l2", steps=steps)),
            (f"ddn {steps}", "featvis", t, lambda x, c, t=t: fv_ddn(clf, x, c.tolist() if t else None, steps=steps)),
            ("CW", "torchattacks", t, ta_cw(t)),
            (f"fmn-l2 {steps}", "adv_lib", t, lambda x, c, t=t: fmn(clf, x, c, norm=2, targeted=t, steps=steps)),
            (f"ddn {steps}", "adv_lib", t, lambda x, c, t=t: ddn(clf, x, c, targeted=t, steps=steps)),
            ("cw-l2 5x10", "adv_lib", t, lambda x, c, t=t: carlini_wagner_l2(
                clf, x, c, targeted=t, initial_const=1.0, binary_search_steps=5, max_iterations=10)),
            (f"fmn-linf {steps}", "featvis", t, lambda x, c, t=t: fv_fmn(clf, x, c.tolist() if t else None,
                                                                        norm="linf", steps=steps)),
            (f"fmn-linf {steps}", "adv_lib", t, lambda x, c, t=t: fmn(clf, x, c, norm=float("inf"), targeted=t,
                                                                      steps=steps)),
            (f"fmn-l1 {steps}", "featvis", t, lambda x, c, t=t: fv_fmn(clf, x, c.tolist() if t else None,
                                                                      norm="l1", steps=steps)),
        ]
    out.append(("deepfool", "featvis", False, lambda x, c: fv_deepfool(clf, x, None)))
    return out


def judge(clf, x, adv, cls, targeted) -> dict:
    """Success and the L2/L∞/L1 of each image, per judgement (float and 8-bit)."""
    rows = {}
    for kind, img in (("float", adv), ("8bit", fv.quantize(adv))):
        p = predict(clf, img)
        ok = (p == cls) if targeted else (p != cls)
        d = (img - x).flatten(1)
        rows[kind] = {"success": ok.tolist(), "l2": d.norm(dim=1).tolist(),
                      "linf": d.abs().amax(1).tolist(), "l1": d.abs().sum(1).tolist()}
    return rows


def median_of_successes(j: dict, norm: str = "l2") -> float | None:
    vals = [v for v, ok in zip(j[norm], j["success"], strict=True) if ok]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=Path("out/evalset"), help="where evalset.py put its photos")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--steps", type=int, default=STEPS, help="FMN/DDN iterations, both libraries")
    ap.add_argument("--deepfool-images", type=int, default=8, help="images torchattacks' DeepFool runs on")
    ap.add_argument("--only", default="", help="comma list of 'library:name' to run (default all)")
    ap.add_argument("--out", default="min_norm", help="results/<OUT>.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    clf = fv.load_model("efficientnet-lite0")
    for p in clf.parameters():
        p.requires_grad_(False)
    names = list(fv.samples.names())
    x = torch.cat([fv.samples.load(n, clf) for n in names])
    extra = [args.photos / f for f in EXTRA if (args.photos / f).exists()]
    if extra:
        x = torch.cat([x, *(fv.load_image(f, clf) for f in extra)])
        names += [f.stem for f in extra]
    n = x.shape[0]
    y = predict(clf, x)
    targets, _, _ = resolve_attack_targets(clf, x, "random", seed=0)
    warm = x.clone().requires_grad_(True)  # build the fast copy before anything is timed
    torch.autograd.grad(clf(warm).logsumexp(-1).sum(), warm)
    count = Counter(clf)
    todo = methods(clf, args.steps)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        todo = [m for m in todo if f"{m[1]}:{m[0]}" in keep]
    out = {"machine": machine(), "images": names, "labels": y.tolist(), "targets": targets.tolist(),
           "torchattacks": torchattacks.__version__, "adv_lib": "0.2.8", "steps": args.steps,
           "repeats": args.repeats, "methods": []}
    records = {(lib, name, t): {"method": name, "library": lib, "targeted": t, "times": []}
               for name, lib, t, _ in todo}
    print(f"{n} images ({', '.join(names)}), {args.repeats} alternating rounds", flush=True)
    for r in range(args.repeats):
        for name, lib, targeted, run in todo:
            rec = records[(lib, name, targeted)]
            cls = targets if targeted else y
            count.take()
            t0 = time.perf_counter()
            res = run(x, cls)
            rec["times"].append((time.perf_counter() - t0) / n)
            calls = count.take()
            if r == 0:  # every method here is deterministic: quality from the first round
                rec["forward_images_per_image"] = calls["images"] / n
                rec["forward_calls"] = calls["calls"]
                if lib == "featvis":
                    j = judge(clf, x, res.images, cls, targeted)["8bit"]
                    assert j["success"] == res.success.tolist()
                    rec["8bit"] = j
                else:
                    rec.update(judge(clf, x, res, cls, targeted))
                count.take()
            print(f"round {r} {lib:12s} {name:14s} {'T' if targeted else 'U'} {rec['times'][-1]:7.2f} s/img",
                  flush=True)
    if args.deepfool_images:  # one round: 1000 backward passes per step and image
        k = min(args.deepfool_images, n)
        rec = records[("torchattacks", "DeepFool", False)] = {"method": "DeepFool", "library": "torchattacks",
                                                                "targeted": False, "times": [], "images": k}
        count.take()
        t0 = time.perf_counter()
        adv = torchattacks.DeepFool(clf)(x[:k], y[:k])  # its defaults: steps=50, overshoot=0.02
        rec["times"].append((time.perf_counter() - t0) / k)
        calls = count.take()
        rec["forward_images_per_image"], rec["forward_calls"] = calls["images"] / k, calls["calls"]
        rec.update(judge(clf, x[:k], adv, y[:k], False))
        count.take()
        print(f"torchattacks DeepFool U {rec['times'][-1]:7.2f} s/img", flush=True)
    ref = {t: records.get(("torchattacks", "CW", t)) for t in (True, False)}
    print(f"\n{'library':12s} {'method':14s} {'mode':4s} | {'succ float':>10s} {'succ 8bit':>9s} | "
          f"{'L2 float':>8s} {'L2 8bit':>8s} | {'s/img':>6s} {'×CW':>5s} | {'fwd/img':>7s}")
    for rec in records.values():
        for kind in ("float", "8bit"):
            if kind in rec:
                rec[f"success_{kind}"] = sum(rec[kind]["success"]) / len(rec[kind]["success"])
                rec[f"median_l2_{kind}"] = median_of_successes(rec[kind])
                rec[f"median_linf_{kind}"] = median_of_successes(rec[kind], "linf")
                rec[f"median_l1_{kind}"] = median_of_successes(rec[kind], "l1")
        rec["s_per_image"] = statistics.median(rec["times"])
        cw_ref = ref[rec["targeted"]]
        if cw_ref is not None and len(rec["times"]) == len(cw_ref["times"]):
            # per round, then the median: both ran in the same minute of the shared machine
            pairs = zip(rec["times"], cw_ref["times"], strict=True)
            rec["ratio_to_torchattacks_cw"] = statistics.median(a / b for a, b in pairs)
        elif cw_ref is not None:
            rec["ratio_to_torchattacks_cw"] = rec["s_per_image"] / cw_ref["times"][0]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{rec['library']:12s} {rec['method']:14s} {'T' if rec['targeted'] else 'U':4s} | "
              f"{fmt(rec.get('success_float'), '10.0%')} {fmt(rec.get('success_8bit'), '9.0%')} | "
              f"{fmt(rec.get('median_l2_float'), '8.3f')} {fmt(rec.get('median_l2_8bit'), '8.3f')} | "
              f"{rec['s_per_image']:6.2f} {fmt(rec.get('ratio_to_torchattacks_cw'), '5.2f')} | "
              f"{rec['forward_images_per_image']:7.1f}")
        out["methods"].append(rec)
    print(f"saved {save(args.out, out)}")


if __name__ == "__main__":
    main()
