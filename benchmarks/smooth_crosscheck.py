"""featvis smooth:METHOD, guided-gradcam and deconvnet against Captum 0.9's NoiseTunnel, GuidedGradCam, Deconvolution.

efficientnet-lite0 (shipped weights), the 6 bundled photos at 224 px, each explained for its predicted class (the
logit); both libraries call the same Classifier, on the user's network (`clf.fast = False`: Captum's hooks need it,
so like is timed with like). Per-channel maps [3, H, W] are compared per image: Pearson, Spearman and the max
|difference| relative to the largest |Captum value|; medians and worst over the images.

- NoiseTunnel(Saliency) and NoiseTunnel(IntegratedGradients) (`--steps` Gauss–Legendre points, black baseline) with
  nt_type smoothgrad / smoothgrad_sq / vargrad and `--samples` copies against smooth: / smooth-sq: / vargrad: over
  gradient and integrated-gradients. Captum draws its noise with `torch.normal`, image-major; it is fed featvis's
  noise (σ = 0.15 · (max − min) per image, per-image seeds), so the two should agree to float precision.
- Seed to seed, on their own draws (smooth:gradient, `--seed-samples` copies, Captum's stdevs = 0.15 · the image's
  range): featvis seed 0 vs 1, Captum torch seed 0 vs 1, featvis vs Captum. How far sampling alone moves the map.
- GuidedBackprop, Deconvolution and GuidedGradCam (Grad-CAM at featvis's default layer, nearest upsampling as
  Captum's default). Captum hooks `nn.ReLU` modules only and Lite0's activations are ReLU6, so Captum runs on a copy
  whose ReLU6 modules are an `nn.ReLU` subclass computing clamp(0, 6): its hook then rectifies the module's input
  gradient (guided: ReLU6's own mask, 0 < x < 6, kept) or output gradient (deconvnet: every mask ignored), featvis's
  rules. Captum on the unmodified model (no hook fires: plain gradients) is recorded too, to show the swap matters.
Timings: featvis and Captum alternating in one run (`--repeats` rounds, medians), seconds for the 6 images, and the
featvis/Captum ratio.

    python benchmarks/smooth_crosscheck.py     # writes benchmarks/results/smooth_crosscheck.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.smooth import NOISE, noisy_copies
from featvis.layers import default_layer, find_layer

from _captum import captum_copy
from _common import alternate, machine, photo_set, save

NT_TYPES = {"smooth": "smoothgrad", "smooth-sq": "smoothgrad_sq", "vargrad": "vargrad"}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(a.argsort().argsort().double(), b.argsort().argsort().double())


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    rows = [(pearson(a, b), spearman(a, b), float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
            for a, b in zip(ours.flatten(1), ref.flatten(1), strict=True)]
    p, s, r = zip(*rows, strict=True)
    return {"pearson_median": statistics.median(p), "pearson_min": min(p),
            "spearman_median": statistics.median(s), "spearman_min": min(s),
            "max_rel_diff_median": statistics.median(r), "max_rel_diff_max": max(r)}


class Alternating:
    """Runs featvis and Captum in turn, `repeats` rounds, and keeps each side's times."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats

    def __call__(self, ours, theirs) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        a, b, t = alternate(ours, theirs, self.repeats, warmup=False)
        return a, b, {"featvis_s": round(t["featvis_s_per_image"], 3), "captum_s": round(t["captum_s_per_image"], 3),
                      "ratio": t["ratio"]}


def fed_normal(noise: torch.Tensor):
    """A stand-in for torch.normal that returns `noise` (Captum's NoiseTunnel draws all its noise in one call)."""
    return lambda mean, std: noise.clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4, help="noisy copies per image on the fed-noise comparison")
    ap.add_argument("--steps", type=int, default=8, help="integrated-gradients quadrature points")
    ap.add_argument("--seed-samples", type=int, default=8, help="noisy copies per image, seed-to-seed section")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds for the NoiseTunnel timings")
    ap.add_argument("--guided-repeats", type=int, default=3, help="alternating rounds for the guided timings")
    ap.add_argument("--photos", type=int, default=0, help="a seeded draw of N evaluation-set photos (0: the 6 bundled)")
    ap.add_argument("--photo-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    clf = fv.load_model("efficientnet-lite0")
    clf.fast = False
    for p in clf.parameters():
        p.requires_grad_(False)
    names, x = photo_set(clf, args.photos, args.photo_seed)
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    t = targets.tolist()
    seeds = list(range(len(names)))
    out: dict = {"model": "efficientnet-lite0", "photos": names, "targets": t, "machine": machine(),
                 "settings": vars(args) | {"noise": NOISE}, "noise_tunnel": {}, "guided": {}}
    timed = Alternating(args.repeats)

    # --- NoiseTunnel on fed noise -------------------------------------------------------------------------------
    s = args.samples
    copies = noisy_copies(x, samples=s, noise=NOISE, seed=seeds)  # what featvis draws: [s·B, 3, H, W], sample-major
    fed = (copies.view(s, *x.shape) - x[None]).transpose(0, 1).flatten(0, 1)  # Captum's order: image-major
    real_normal = torch.normal
    for inner, base, kw in (("gradient", Saliency(clf), {"abs": False}),
                            ("integrated-gradients", IntegratedGradients(clf),
                             {"baselines": 0.0, "n_steps": args.steps, "method": "gausslegendre"})):
        for prefix, nt in NT_TYPES.items():
            opts = {"steps": args.steps} if inner == "integrated-gradients" else {}

            def captum_run(nt=nt, base=base, kw=kw):
                torch.normal = fed_normal(fed)
                try:
                    return NoiseTunnel(base).attribute(x, nt_type=nt, nt_samples=s, stdevs=1.0, target=t, **kw)
                finally:
                    torch.normal = real_normal

            ours, ref, times = timed(lambda prefix=prefix, inner=inner, opts=opts: saliency(
                clf, x, t, method=f"{prefix}:{inner}", samples=s, seed=seeds, reduce="none", **opts), captum_run)
            key = f"{prefix}:{inner}"
            out["noise_tunnel"][key] = {"captum": f"NoiseTunnel({type(base).__name__}) nt_type={nt}",
                                        **agreement(ours, ref), "time": times}
            r = out["noise_tunnel"][key]
            print(f"{key:32s} Pearson {r['pearson_min']:.6f} Spearman {r['spearman_min']:.6f} max rel "
                  f"{r['max_rel_diff_max']:.1e}  featvis/Captum {times['ratio']:.2f} "
                  f"({times['featvis_s']:.1f} s / {times['captum_s']:.1f} s)", flush=True)

    # --- seed to seed, own draws ----------------------------------------------------------------------------------
    n = args.seed_samples
    span = float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    fa = saliency(clf, x, t, method="smooth:gradient", samples=n, seed=seeds, reduce="none")
    fb = saliency(clf, x, t, method="smooth:gradient", samples=n, seed=[100 + i for i in seeds], reduce="none")
    caps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        caps.append(NoiseTunnel(Saliency(clf)).attribute(x, nt_type="smoothgrad", nt_samples=n,
                                                         stdevs=NOISE * span, target=t, abs=False))
    out["seed_to_seed"] = {"samples": n, "captum_stdevs": NOISE * span,
                           "featvis_vs_featvis": agreement(fa, fb), "captum_vs_captum": agreement(caps[0], caps[1]),
                           "featvis_vs_captum": agreement(fa, caps[0])}
    for k, v in out["seed_to_seed"].items():
        if isinstance(v, dict):
            print(f"seed to seed {k:20s} Spearman median {v['spearman_median']:.3f} Pearson median "
                  f"{v['pearson_median']:.3f}", flush=True)

    # --- guided backprop, deconvnet, guided Grad-CAM ---------------------------------------------------------------
    ref_clf = captum_copy(clf)
    layer = default_layer(clf)
    ref_layer = find_layer(ref_clf, layer)[1]
    timed = Alternating(args.guided_repeats)
    cases = {
        "guided-backprop": ({}, lambda m: GuidedBackprop(m).attribute(x, target=t)),
        "deconvnet": ({}, lambda m: Deconvolution(m).attribute(x, target=t)),
        "guided-gradcam": ({"interpolation": "nearest"},
                           lambda m: GuidedGradCam(m, ref_layer if m is ref_clf else find_layer(m, layer)[1])
                           .attribute(x, target=t)),
    }
    for name, (opts, captum_fn) in cases.items():
        ours, ref, times = timed(lambda name=name, opts=opts: saliency(clf, x, t, method=name, reduce="none", **opts),
                                 lambda captum_fn=captum_fn: captum_fn(ref_clf))
        plain = captum_fn(clf)  # Captum on the unmodified model: its ReLU hook never fires on ReLU6
        out["guided"][name] = {**agreement(ours, ref), "time": times,
                               "vs_captum_on_unmodified_relu6_model": agreement(ours, plain)}
        if name == "guided-gradcam":
            out["guided"][name]["layer"] = layer
        r = out["guided"][name]
        print(f"{name:32s} Pearson {r['pearson_min']:.6f} Spearman {r['spearman_min']:.6f} max rel "
              f"{r['max_rel_diff_max']:.1e}  featvis/Captum {times['ratio']:.2f}  (unmodified-model Captum: "
              f"Spearman {r['vs_captum_on_unmodified_relu6_model']['spearman_median']:.3f})", flush=True)
    print("wrote", save("smooth_crosscheck", out))


if __name__ == "__main__":
    main()
