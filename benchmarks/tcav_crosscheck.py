"""featvis TCAV against Captum's `captum.concept.TCAV`: same model, layer, concept and random sets, target and inputs.

efficientnet-lite0 (shipped weights), layer blocks.5, target "tabby" (281). Class images: seeded random crops and
flips of the bundled chelsea photo. Concepts: seeded synthetic textures made with torch (striped gratings, dotted
grids, checkerboards). Random sets: seeded subsets of a pool of random crops of the other bundled photos and noise
images. Every TCAV run tests the concepts against each random set plus the random-vs-random null (random-0 against
the others), as `featvis.concepts.tcav` does; Captum gets the same experimental sets.

Compared:
- "same": Captum with a concept classifier that trains exactly as featvis's linear CAV (its split, SGD settings
  and seeds): CAV cosines and TCAV scores must agree exactly; this checks the rest of the pipeline.
- "default": Captum's own DefaultClassifier (SGD with the same options, its own random split, unseeded SGD
  shuffling made reproducible by seeding Python's and numpy's global RNGs): how close two independent trainings
  land (CAV cosines, score differences, and the significance calls of scipy's t-test on both).
- FastCAV against featvis's linear CAV: cosine and score differences.
Timings: whole runs, alternating featvis linear / featvis fast / Captum default, `--repeats` rounds, medians; Captum
gets a fresh save_path each run (it caches activations and CAVs on disk, which would skip work in later rounds).

    python benchmarks/tcav_crosscheck.py     # writes benchmarks/results/tcav_crosscheck.json and .md
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import numpy as np
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.concepts.cav import fast_cav, layer_activations, linear_cav, random_subsets
from featvis.concepts.tcav import tcav, ttest
from featvis.layers import find_layer

from _captum import same_classifier
from _common import RESULTS, machine, save

TARGET = "tabby"
RANDOM_ID = 100  # Captum concept ids: concepts 0.., random set i is 100 + i
SEED_OFFSET = 1000  # a second featvis linear CAV per pair, seeded apart from the run's (seed 0 + i)


def textures(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    """n seeded [3, size, size] textures in [0, 1]: "striped" gratings, "dotted" grids, "chequered" boards."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for _ in range(n):
        a, b = torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen)
        period = 8 + 24 * torch.rand((), generator=gen)
        theta = math.pi * torch.rand((), generator=gen)
        if kind == "striped":
            u = xs * torch.cos(theta) + ys * torch.sin(theta)
            mask = (torch.sin(2 * math.pi * u / period) > 0).float()
        elif kind == "dotted":
            cx, cy = xs % period - period / 2, ys % period - period / 2
            mask = ((cx ** 2 + cy ** 2).sqrt() < period * 0.3).float()
        else:
            mask = (((xs // period) + (ys // period)) % 2).float()
        out.append(a * mask + b * (1 - mask))
    return torch.stack(out)


def crops(photo: torch.Tensor, n: int, size: int, seed: int) -> torch.Tensor:
    """n seeded random crops (40-100 % of the side) of a [1, 3, H, W] photo, resized to size, half flipped."""
    gen = torch.Generator().manual_seed(seed)
    h, w = photo.shape[-2:]
    out = []
    for _ in range(n):
        side = int(min(h, w) * (0.4 + 0.6 * torch.rand((), generator=gen)))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = F.interpolate(photo[:, :, top:top + side, left:left + side], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        out.append(crop.flip(-1) if torch.rand((), generator=gen) < 0.5 else crop)
    return torch.cat(out).clamp(0, 1)


def data(clf, args):
    size = clf.input_size
    class_images = crops(fv.samples.load("chelsea", clf), args.class_images, size, seed=1)
    concepts = {kind: textures(kind, args.concept_images, size, seed=10 + i)
                for i, kind in enumerate(("striped", "dotted", "chequered"))}
    others = [n for n in fv.samples.names() if n != "chelsea"]
    gen = torch.Generator().manual_seed(3)
    pool = [crops(fv.samples.load(n, clf), 8, size, seed=20 + i) for i, n in enumerate(others)]
    pool.append(torch.rand(8, 3, size, size, generator=gen))
    pool.append(F.interpolate(torch.rand(8, 3, size // 16, size // 16, generator=gen), size=(size, size),
                              mode="bicubic", align_corners=False).clamp(0, 1))
    randoms = random_subsets(torch.cat(pool), args.random_sets, args.concept_images, seed=4)
    return class_images, concepts, randoms


def run_captum(clf, layer, class_images, concepts, randoms, target, classifier, batch_size):
    """Captum's TCAV on the same experimental sets: {(concept, random i): score}, {(concept, i): CAV [D]}."""
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    theirs = [Concept(i, n, DataLoader(x, batch_size=batch_size)) for i, (n, x) in enumerate(concepts.items())]
    rands = [Concept(RANDOM_ID + i, f"random-{i}", DataLoader(x, batch_size=batch_size)) for i, x in enumerate(randoms)]
    sets = [[c, r] for c in theirs for r in rands] + [[rands[0], r] for r in rands[1:]]
    random.seed(0)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        captum = TCAV(clf, [layer], classifier=classifier, save_path=tmp)
        scores = captum.interpret(class_images, sets, target=target)
        out_scores, out_cavs = {}, {}
        for c, r in sets:
            key = f"{c.id}-{r.id}"
            out_scores[(c.name, r.id - RANDOM_ID)] = float(scores[key][layer]["sign_count"][0])
            cav_stats = captum.cavs[key][layer].stats
            row = list(np.asarray(cav_stats["classes"]).tolist()).index(c.id)
            out_cavs[(c.name, r.id - RANDOM_ID)] = cav_stats["weights"][row].float()
    return out_scores, out_cavs


def compare(ours, captum_scores, captum_cavs, layer, names):
    cosines, diffs, per_concept = [], [], {}
    for c in [*names, "random-0"]:
        runs = ours.cavs[layer][c]
        ours_scores = ours.scores[layer][c].scores if c in names else ours.random_scores[layer]
        theirs = []
        for cav, score in zip(runs, ours_scores, strict=True):
            i = int(cav.counterexample.removeprefix("random-"))
            w = captum_cavs[(c, i)]
            cosines.append(float(torch.dot(cav.vector, w / w.norm())))
            diffs.append(abs(score - captum_scores[(c, i)]))
            theirs.append(captum_scores[(c, i)])
        per_concept[c] = {"featvis_mean": statistics.fmean(ours_scores), "captum_mean": statistics.fmean(theirs),
                          "captum_scores": theirs}
    null = per_concept["random-0"]["captum_scores"]
    for c in names:
        p = ttest(per_concept[c]["captum_scores"], null)  # scipy.stats.ttest_ind, as for featvis's scores
        per_concept[c].update(featvis_p=ours.scores[layer][c].p_value, captum_p=p,
                              featvis_significant=ours.scores[layer][c].significant,
                              captum_significant=bool(p < ours.alpha / ours.n_tests))
    return {"cav_cosine_min": min(cosines), "cav_cosine_mean": statistics.fmean(cosines),
            "score_max_abs_diff": max(diffs), "score_mean_abs_diff": statistics.fmean(diffs),
            "per_concept": per_concept}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", default="blocks.5")
    parser.add_argument("--class-images", type=int, default=16)
    parser.add_argument("--concept-images", type=int, default=12)
    parser.add_argument("--random-sets", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clf = fv.load_model("efficientnet-lite0")
    layer = find_layer(clf, args.layer)[0]
    captum_layer = f"net.{layer}"  # Captum names modules from the model it is given: the Classifier
    target = clf.labels.lookup(TARGET)
    class_images, concepts, randoms = data(clf, args)
    names = list(concepts)

    def ours(cav):
        return tcav(clf, class_images, concepts, randoms, target, layer, cav=cav, seed=0, batch_size=args.batch_size)

    def theirs(classifier):
        from captum.concept._utils.classifier import DefaultClassifier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DefaultClassifier warns that it keeps the sets in memory
            made = DefaultClassifier() if classifier == "default" else same_classifier()
        return run_captum(clf, captum_layer, class_images, concepts, randoms, target, made, args.batch_size)

    times = {"featvis-linear": [], "featvis-fast": [], "captum-default": []}
    results = {}
    for _ in range(args.repeats):  # alternating, so drift on a shared machine hits all three alike
        for name, fn in (("featvis-linear", lambda: ours("linear")), ("featvis-fast", lambda: ours("fast")),
                         ("captum-default", lambda: theirs("default"))):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    same_scores, same_cavs = theirs("same")
    linear, fast = results["featvis-linear"], results["featvis-fast"]
    medians = {k: statistics.median(v) for k, v in times.items()}

    # CAV training alone, on activations computed once: what FastCAV replaces.
    acts = {n: layer_activations(clf, x, layer, batch_size=args.batch_size)[layer] for n, x in
            [*concepts.items(), *((f"random-{i}", r) for i, r in enumerate(randoms))]}
    pairs = [(c, f"random-{i}", i) for c in names for i in range(len(randoms))]
    t0 = time.perf_counter()
    reseeded = [linear_cav(acts[c], acts[r], seed=SEED_OFFSET + i) for c, r, i in pairs]
    t_linear = (time.perf_counter() - t0) / len(pairs)
    # How far a linear CAV moves with its seed alone (split and SGD order): the scale for the Captum-default cosines.
    seed_cosines = [float(torch.dot(again.vector, linear.cavs[layer][c][i].vector))
                    for again, (c, _r, i) in zip(reseeded, pairs, strict=True)]
    t0 = time.perf_counter()
    for _ in range(5):
        for c, r, _i in pairs:
            fast_cav(acts[c], acts[r])
    t_fast = (time.perf_counter() - t0) / len(pairs) / 5

    fast_vs_linear = {"cav_cosine": [float(torch.dot(a.vector, b.vector)) for c in names
                                     for a, b in zip(linear.cavs[layer][c], fast.cavs[layer][c], strict=True)],
                      "per_concept": {c: {"linear_mean": linear.scores[layer][c].mean,
                                          "fast_mean": fast.scores[layer][c].mean,
                                          "linear_p": linear.scores[layer][c].p_value,
                                          "fast_p": fast.scores[layer][c].p_value,
                                          "fast_significant": fast.scores[layer][c].significant} for c in names}}
    fast_vs_linear["cav_cosine_mean"] = statistics.fmean(fast_vs_linear["cav_cosine"])
    seeds = {"cav_cosine_min": min(seed_cosines), "cav_cosine_mean": statistics.fmean(seed_cosines)}
    report = {
        "setup": {"model": "efficientnet-lite0", "layer": layer, "features": int(acts[names[0]].shape[1]),
                  "target": f"{TARGET} ({target})", "class_images": args.class_images,
                  "concepts": {c: args.concept_images for c in names}, "random_sets": args.random_sets,
                  "random_set_size": args.concept_images, "cavs_per_run": len(names) * args.random_sets
                  + args.random_sets - 1, "repeats": args.repeats, "machine": machine()},
        "captum_same_classifier": compare(linear, same_scores, same_cavs, layer, names),
        "captum_default_classifier": compare(linear, *theirs("default"), layer, names),
        "fast_vs_linear": fast_vs_linear, "featvis_linear_seed_vs_seed": seeds,
        "featvis_linear": linear.rows(), "featvis_fast": fast.rows(), "note": linear.note,
        "seconds": {"runs": times, "median": medians,
                    "captum_over_featvis_linear": medians["captum-default"] / medians["featvis-linear"],
                    "captum_over_featvis_fast": medians["captum-default"] / medians["featvis-fast"],
                    "featvis_linear_over_fast": medians["featvis-linear"] / medians["featvis-fast"],
                    "cav_training_per_pair": {"linear": t_linear, "fast": t_fast, "speedup": t_linear / t_fast}},
    }
    path = save("tcav_crosscheck", report)
    (RESULTS / "tcav_crosscheck.md").write_text(summary(report))
    print(path)
    print(summary(report))


def summary(r) -> str:
    same, default, fvl, s = (r["captum_same_classifier"], r["captum_default_classifier"], r["fast_vs_linear"],
                             r["seconds"])
    seeds = r["featvis_linear_seed_vs_seed"]
    lines = [
        "# TCAV: featvis vs Captum (`benchmarks/tcav_crosscheck.py`)", "",
        f"{r['setup']['model']}, layer {r['setup']['layer']} ({r['setup']['features']} features), target "
        f"{r['setup']['target']}; {r['setup']['class_images']} class images (crops of chelsea), concepts "
        f"{', '.join(r['setup']['concepts'])} ({r['setup']['random_set_size']} synthetic textures each), "
        f"{r['setup']['random_sets']} random sets of {r['setup']['random_set_size']}; {r['setup']['cavs_per_run']} "
        f"CAVs per run (with the random-vs-random null). {r['setup']['machine']['threads']} CPU threads.", "",
        "| comparison | CAV cosine (min / mean) | TCAV score max abs diff (mean) |", "| --- | --- | --- |",
        f"| Captum, featvis's classifier settings and split | {same['cav_cosine_min']:.6f} / "
        f"{same['cav_cosine_mean']:.6f} | {same['score_max_abs_diff']:.4f} ({same['score_mean_abs_diff']:.4f}) |",
        f"| Captum DefaultClassifier (own split, SGD) | {default['cav_cosine_min']:.3f} / "
        f"{default['cav_cosine_mean']:.3f} | {default['score_max_abs_diff']:.4f} "
        f"({default['score_mean_abs_diff']:.4f}) |",
        f"| featvis linear, seed 0 + i vs seed {SEED_OFFSET} + i | {seeds['cav_cosine_min']:.3f}"
        f" / {seeds['cav_cosine_mean']:.3f} | |",
        f"| featvis FastCAV vs featvis linear | {min(fvl['cav_cosine']):.3f} / {fvl['cav_cosine_mean']:.3f} | "
        "see below |",
        "", "| concept | featvis linear mean (p) | Captum default mean (p) | FastCAV mean (p) |",
        "| --- | --- | --- | --- |",
    ]
    for c, v in default["per_concept"].items():
        if c.startswith("random-"):
            lines.append(f"| null (random-0 vs others) | {v['featvis_mean']:.3f} | {v['captum_mean']:.3f} | "
                         f"{r['featvis_fast'][0]['random_mean']:.3f} |")
            continue
        f = fvl["per_concept"][c]
        lines.append(f"| {c} | {v['featvis_mean']:.3f} ({v['featvis_p']:.2g}{'*' if v['featvis_significant'] else ''})"
                     f" | {v['captum_mean']:.3f} ({v['captum_p']:.2g}{'*' if v['captum_significant'] else ''}) | "
                     f"{f['fast_mean']:.3f} ({f['fast_p']:.2g}{'*' if f['fast_significant'] else ''}) |")
    m = s["median"]
    lines += [
        "", f"\\* significant after Bonferroni. {r['note']}.", "",
        f"Whole run, median of {r['setup']['repeats']} alternating rounds: featvis linear {m['featvis-linear']:.2f} s, "
        f"featvis FastCAV {m['featvis-fast']:.2f} s, Captum (default classifier) {m['captum-default']:.2f} s: Captum "
        f"takes {s['captum_over_featvis_linear']:.2f}x featvis linear and {s['captum_over_featvis_fast']:.2f}x featvis "
        f"FastCAV. CAV training alone: linear {s['cav_training_per_pair']['linear'] * 1e3:.1f} ms per pair, FastCAV "
        f"{s['cav_training_per_pair']['fast'] * 1e3:.2f} ms ({s['cav_training_per_pair']['speedup']:.0f}x).", "",
        "Reading: with the same classifier settings, split and seeds, Captum and featvis give the same CAVs and the "
        "same scores, so activations, layer gradients, flattening and the sign count agree. Captum's own "
        "DefaultClassifier lands as far from featvis's CAVs as featvis's linear CAV does from itself with another "
        "seed: an SGD CAV from tens of images in thousands of dimensions moves with its split and shuffling, which "
        "is what the random-run t-test is for. The linear runs spend most of their time in SGD (Captum's settings "
        "often reach max_iter); FastCAV removes that.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
