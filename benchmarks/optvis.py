"""Class visualization quality judged by a model the image was not optimized for (EfficientNet-Lite2), speed as a
ratio of the bare forward+backward floor, transformation robustness, and forward_until's speed-up.

Judge protocol (the issue's): the saved 8-bit PNG, bicubic to Lite2's native 260 px, normalized as Lite2 expects,
softmax probability of the target.

    python benchmarks/optvis.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.images import quantize, resize
from featvis.optvis import class_visualization, objectives
from featvis.optvis.render import evaluate
from featvis.optvis.transforms import compose, jitter, pad, random_rotate, random_scale

from _common import floor_step, machine, median_time, save

CLASSES = [76, 78, 113, 366, 963]  # tarantula, tick, snail, gorilla, pizza


def probs(model, images, classes):
    x = resize(quantize(images), model.input_size, model.preprocess.crop_fraction)
    with torch.no_grad():
        return model(x).softmax(-1)[torch.arange(len(classes)), torch.tensor(classes)]


def robustness(clf, images, classes, draws=16, seed=0):
    """How often the target stays top-1 under random pad/jitter/scale/rotate draws."""
    gen = torch.Generator().manual_seed(seed)
    t = compose([pad(16), jitter(16), random_scale([0.9, 0.95, 1.0, 1.05, 1.1]), random_rotate(range(-10, 11))])
    kept = torch.zeros(len(classes))
    for _ in range(draws):
        with torch.no_grad():
            top = clf(t(quantize(images), gen)).argmax(-1)
        kept += (top == torch.tensor(classes)).float()
    return (kept / draws).tolist()


def main() -> None:
    fv.tune_allocator()
    clf = fv.load_model()
    lite2 = fv.load_model("efficientnet-lite2")
    out = {"machine": machine(), "model": clf.id, "judge": lite2.id, "classes": CLASSES, "quality": {}}
    b = len(CLASSES)
    floors = {s: median_time(floor_step(clf, torch.rand(b, 3, s, s)), repeats=3) / b for s in (128, 224)}
    for p in clf.parameters():
        p.requires_grad_(True)
    out["floor_ms_per_image"] = {s: v * 1e3 for s, v in floors.items()}
    print(f"floor (batch {b}): " + ", ".join(f"{s}px {v * 1e3:.1f} ms/img" for s, v in floors.items()))
    for preset in ("lab", "lucid"):
        res = class_visualization(clf, CLASSES, preset=preset, steps=200, size=224, snapshots=[100])
        for steps, imgs in ((100, res.snapshots[100]), (200, res.images)):
            p0, p2 = probs(clf, imgs, CLASSES), probs(lite2, imgs, CLASSES)
            row = {"lite0": p0.tolist(), "lite2": p2.tolist(), "lite0_mean": float(p0.mean()),
                   "lite2_mean": float(p2.mean()), "ms_per_step": res.ms_per_step,
                   "ratio_to_floor": res.ms_per_step / 1e3 / b / floors[224]}
            out["quality"][f"{preset}@{steps}"] = row
            print(f"{preset:6s} {steps:4d} steps 224px: Lite0 mean {row['lite0_mean']:.3f}  Lite2 mean "
                  f"{row['lite2_mean']:.3f}  {[round(v, 3) for v in row['lite2']]}  {res.ms_per_step:.0f} ms/step "
                  f"(batch {b}) = {row['ratio_to_floor']:.2f}x floor", flush=True)
        fv.save_image(torch.cat(list(res.images), 2), os.path.join(os.path.dirname(__file__), "results",
                                                                    f"classvis-{preset}.png"))
    out["speed"] = {}
    for preset in ("lab", "lucid", "pixel", "yosinski-3"):
        for size in (128, 224):
            res = class_visualization(clf, CLASSES, preset=preset, steps=20, size=size)
            ratio = res.ms_per_step / 1e3 / b / floors[size]
            out["speed"][f"{preset}@{size}"] = {"ms_per_step": res.ms_per_step, "ratio_to_floor": ratio}
            print(f"speed {preset:10s} {size}px: {res.ms_per_step:6.0f} ms/step (batch {b}) = {ratio:.2f}x floor",
                  flush=True)
    # robustness: plain pixels without transforms vs the lucid preset, same budget
    out["robustness"] = {}
    for preset in ("pixel", "lucid"):
        res = class_visualization(clf, CLASSES, preset=preset, steps=100, size=224)
        kept = robustness(clf, res.images, CLASSES)
        out["robustness"][preset] = {"kept_top1": kept, "mean": sum(kept) / len(kept),
                                     "lite2_mean": float(probs(lite2, res.images, CLASSES).mean())}
        lite2_mean = out["robustness"][preset]["lite2_mean"]
        print(f"robustness {preset:6s}: target stays top-1 in {sum(kept) / len(kept):.0%} of 16 random "
              f"transforms (per class {[round(k, 2) for k in kept]}); Lite2 mean p {lite2_mean:.3f}")
    # forward_until: a channel objective on an early, middle and late layer, against a full forward
    x = torch.rand(8, 3, 224, 224, requires_grad=True)
    out["forward_until"] = {}
    for layer in ("_blocks.2", "_blocks.8", "_blocks.15"):
        o = objectives.channel(layer, 0)
        early = median_time(lambda o=o: torch.autograd.grad(-evaluate(clf, o, x, x).sum(), x), repeats=3)
        full_o = o + 0 * objectives.class_logit(0)  # needs the logits: the whole model runs
        full = median_time(lambda f=full_o: torch.autograd.grad(-evaluate(clf, f, x, x).sum(), x), repeats=3)
        out["forward_until"][layer] = {"until_ms": early * 1e3, "full_ms": full * 1e3, "speedup": full / early}
        print(f"forward_until {layer:10s}: {early * 1e3:6.0f} ms vs full {full * 1e3:6.0f} ms -> {full / early:.2f}x")
    print(f"saved {save('optvis', out)}")


if __name__ == "__main__":
    main()
