"""Images/second for each attribution method at batch 1 and 8 (224 px), beside Captum's equivalent in the same
run, and each method's time as a ratio of the bare forward+backward floor.

    python benchmarks/attribution.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import featvis as fv
from featvis.attribution import saliency

from _common import floor_step, machine, median_time, save

# featvis method -> (its options, Captum equivalent or None)
SMOOTH_N, IG_STEPS = 10, 16


def captum_fns(clf):
    import captum.attr as ca

    layer = clf.net._bn1
    return {
        "gradient": lambda x, t: ca.Saliency(clf).attribute(x, target=t, abs=True).amax(1),
        "input-x-gradient": lambda x, t: ca.InputXGradient(clf).attribute(x, target=t).sum(1),
        "smoothgrad": lambda x, t: ca.NoiseTunnel(ca.Saliency(clf)).attribute(
            x, target=t, nt_type="smoothgrad", nt_samples=SMOOTH_N, stdevs=0.15, abs=False,
            nt_samples_batch_size=8),
        "integrated-gradients": lambda x, t: ca.IntegratedGradients(clf).attribute(
            x, target=t, n_steps=IG_STEPS, internal_batch_size=8),
        "gradcam": lambda x, t: ca.LayerAttribution.interpolate(
            ca.LayerGradCam(clf, layer).attribute(x, target=t, relu_attributions=True), (224, 224), "bilinear"),
        "occlusion": lambda x, t: ca.Occlusion(clf).attribute(
            x, sliding_window_shapes=(3, 32, 32), strides=(3, 32, 32), target=t, perturbations_per_eval=8),
    }


OPTIONS = {"smoothgrad": {"samples": SMOOTH_N, "batch_size": 8}, "smoothgrad-sq": {"samples": SMOOTH_N},
           "vargrad": {"samples": SMOOTH_N}, "integrated-gradients": {"steps": IG_STEPS, "batch_size": 8},
           "occlusion": {"window": 32, "stride": 32, "batch_size": 8}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    fv.tune_allocator()
    clf = fv.load_model()
    photos = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    have_captum = True
    try:
        peers = captum_fns(clf)
    except ImportError:
        have_captum, peers = False, {}
    reps = 2 if args.quick else 3
    rows = []
    for b in (1, 8):
        x = photos.repeat(2, 1, 1, 1)[:b]
        targets = clf(x).argmax(-1).tolist()
        floor = median_time(floor_step(clf, x), repeats=reps) / b
        for p in clf.parameters():
            p.requires_grad_(True)  # leave the model as users have it
        for name in fv.attribution.methods():
            opts = OPTIONS.get(name, {})
            def ours(name=name, opts=opts, x=x, targets=targets):
                return saliency(clf, x, targets, method=name, **opts)

            t = median_time(ours, repeats=reps, warmup=1) / b
            row = {"method": name, "batch": b, "featvis_ips": 1 / t, "ratio_to_floor": t / floor}
            if name in peers:
                def peer(name=name, x=x, targets=targets):
                    return peers[name](x, targets)

                tc = median_time(peer, repeats=reps, warmup=1) / b
                row.update(captum_ips=1 / tc, featvis_speedup=tc / t)
            rows.append(row)
            print(f"b={b} {name:22s} featvis {1 / t:7.2f} img/s  {t / floor:5.2f}x floor"
                  + (f"   captum {row['captum_ips']:7.2f} img/s  speed-up {row['featvis_speedup']:4.2f}x"
                     if "captum_ips" in row else ""), flush=True)
        rows.append({"method": "floor", "batch": b, "ms_per_image": floor * 1e3})
    data = {"machine": machine(), "model": clf.id, "captum": have_captum, "smoothgrad_samples": SMOOTH_N,
            "ig_steps": IG_STEPS, "rows": rows}
    print(f"saved {save('attribution', data)}")


if __name__ == "__main__":
    main()
