"""featvis deeplift and deeplift-shap against Captum 0.9's DeepLift and DeepLiftShap on EfficientNet-Lite0.

efficientnet-lite0 (shipped weights), `--photos` photos drawn (seeded) from the evaluation set (benchmarks/evalset.py,
out/evalset) at 224 px, each explained for its predicted class (the logit), in one batch of `--photos`.

What Captum needs, and what differs:
- Captum's DeepLift applies its rule to modules whose type is exactly one of its `SUPPORTED_NON_LINEAR` keys (ReLU,
  ELU, LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool, Softmax); Lite0's activations are ReLU6, which Captum leaves to
  its plain gradient. The Captum copy's ReLU6 modules are `ReLU6AsReLU` (tests/_captum.py, clamp(0, 6)), registered
  here with Captum's own `nonlinear` rule (the rescale rule: grad · Δy/Δx from the module's recorded in/outputs).
- Lite0 calls each block's one `_swish` ReLU6 module twice (after the expansion and after the depthwise conv) and the
  network's `_swish` twice (stem and head). Captum stores one input/output per module, so the second call overwrites
  the first and its backward hook raises ("module is being used more than once"); this is recorded below
  (`captum_on_reused_modules`). The Captum copy therefore gets one module per call site (the blocks' and the stem's
  forward rewritten to call `_act_expand`/`_act_depthwise`, `_act_stem`/`_act_head`; logits checked equal).
- Lite0 has no squeeze-excitation (`has_se` False in every block: the Lite variants drop SE and swish) and no
  max-pool, so neither of the two places where the libraries' rules differ (a product of two activations, a
  hooked module feeding another) occurs: both should be exact, and their maps equal to float precision.
featvis runs on the unmodified classifier (its rule replaces the module's forward, so reuse does not matter).

Metrics per image on the [3, H, W] maps: Pearson, Spearman, max |difference| / max |Captum|; completeness for both
libraries computed the same way, |Σ map − (F(x) − F(x₀))| / |F(x) − F(x₀)| with F the plain network's logit (for
DeepLiftShap F(x₀) is the mean over the references). Baselines: DeepLift black and blur (featvis's "blur");
DeepLiftShap `--refs` references shared by all images (half blurred other photos of the set, half seeded uniform
noise), every reference used by both (featvis samples = R). Timing: featvis and Captum alternating `--repeats`
rounds in one run after one untimed call of each, medians, seconds per image; featvis in chunks of 8 pairs
(batch_size 16 rows), Captum DeepLift on the batch at once (2B rows) and DeepLiftShap one image at a time (its B·R
pairs at once would need 2·B·R rows of activations: 128 at 224 px), so each call holds a similar number of rows.

    python benchmarks/deeplift_crosscheck.py     # writes benchmarks/results/deeplift_crosscheck.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import types
import warnings

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch
from captum.attr import DeepLift, DeepLiftShap
from captum.attr._core import deep_lift as captum_deep_lift
from smooth_crosscheck import agreement
from torch import nn

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.integrated import make_baseline

from _captum import ReLU6AsReLU, captum_copy
from _common import alternate, machine, save
from _common import evalset_photos as photos

FEATVIS_ROWS = 16  # featvis batch_size: 8 image–baseline pairs per network call


class Normalized(nn.Module):
    """The classifier's normalization then its network, as one plain module for Captum."""

    def __init__(self, clf, net: nn.Module) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, clf.mean, clf.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _block_forward(self, inputs, drop_connect_rate=None):
    """efficientnet_lite_pytorch's MBConvBlock.forward (eval: no drop connect, no SE in Lite) with one ReLU6 module
    per call site."""
    x = inputs
    if self._block_args.expand_ratio != 1:
        x = self._act_expand(self._bn0(self._expand_conv(inputs)))
    x = self._act_depthwise(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    args = self._block_args
    if self.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
        x = self.skip(inputs, x) if hasattr(self, "skip") else x + inputs  # skip: lrp_crosscheck's zennit Sum
    return x


def _extract_features(self, inputs):
    x = self._act_stem(self._bn0(self._conv_stem(inputs)))
    for block in self._blocks:
        x = block(x)
    return self._act_head(self._bn1(self._conv_head(x)))


def unshared_copy(clf) -> nn.Module:
    """`captum_copy(clf).net` with one `ReLU6AsReLU` per call site (Captum's DeepLift needs modules used once)."""
    net = captum_copy(clf).net
    for block in net._blocks:
        if block.has_se:
            raise SystemExit("this model has squeeze-excitation; the rewritten block forward does not")
        block._act_expand, block._act_depthwise = ReLU6AsReLU(), ReLU6AsReLU()
        del block._swish
        block.forward = types.MethodType(_block_forward, block)
    net._act_stem, net._act_head = ReLU6AsReLU(), ReLU6AsReLU()
    del net._swish
    net.extract_features = types.MethodType(_extract_features, net)
    return net.eval()


def logit(clf, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clf(x).gather(1, targets[:, None])[:, 0].double()


def completeness(maps: torch.Tensor, gap: torch.Tensor) -> dict[str, float]:
    miss = ((maps.flatten(1).double().sum(1) - gap).abs() / gap.abs()).tolist()
    return {"rel_miss_median": statistics.median(miss), "rel_miss_max": max(miss),
            "abs_miss_max": float((maps.flatten(1).double().sum(1) - gap).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seeds the photo draw and the noise references")
    ap.add_argument("--refs", type=int, default=8, help="DeepLiftShap references")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    clf = fv.load_model("efficientnet-lite0")
    for p in clf.parameters():
        p.requires_grad_(False)
    names, x = photos(clf, args.photos, args.seed)
    n = x.shape[0]
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    t = targets.tolist()
    captum_deep_lift.SUPPORTED_NON_LINEAR[ReLU6AsReLU] = captum_deep_lift.nonlinear
    ref_net = unshared_copy(clf)
    model = Normalized(clf, ref_net).eval()
    with torch.no_grad():
        same = float((model(x) - clf(x)).abs().max())
    out: dict = {"model": "efficientnet-lite0", "photos": names, "targets": t, "size": clf.input_size,
                 "machine": machine(), "settings": vars(args) | {"featvis_batch_size_rows": FEATVIS_ROWS},
                 "captum_copy_max_abs_logit_diff": same}
    print(f"photos {names}; Captum copy logits differ by {same:.1e}", flush=True)

    # Captum on the model as it is (ReLU6 as a hookable ReLU, modules reused): it refuses.
    reused = Normalized(clf, captum_copy(clf).net).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DeepLift(reused).attribute(x[:1], baselines=torch.zeros_like(x[:1]), target=t[:1])
        out["captum_on_reused_modules"] = "ran"
    except RuntimeError as err:
        out["captum_on_reused_modules"] = f"RuntimeError: {str(err).splitlines()[0][:200]}"
    print("Captum on reused ReLU6 modules:", out["captum_on_reused_modules"], flush=True)

    out["deeplift"] = {}
    for base_name in ("black", "blur"):
        base = make_baseline(clf, x, base_name)
        gap = logit(clf, x, targets) - logit(clf, base, targets)

        def ours(base_name=base_name):
            return saliency(clf, x, t, method="deeplift", baseline=base_name, reduce="none", batch_size=FEATVIS_ROWS)

        def theirs(base=base):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return DeepLift(model).attribute(x, baselines=base, target=t).detach()

        a, b, times = alternate(ours, theirs, args.repeats, n)
        r = {"baseline": base_name, **agreement(a, b), "featvis_completeness": completeness(a, gap),
             "captum_completeness": completeness(b, gap), "gap_median": float(gap.median()), "time": times}
        out["deeplift"][base_name] = r
        print(f"deeplift/{base_name:5s} Pearson min {r['pearson_min']:.7f} Spearman min {r['spearman_min']:.6f} "
              f"max rel {r['max_rel_diff_max']:.1e}; completeness featvis "
              f"{r['featvis_completeness']['rel_miss_max']:.1e} Captum {r['captum_completeness']['rel_miss_max']:.1e}; "
              f"featvis/Captum {times['ratio']:.2f} "
              f"({times['featvis_s_per_image']:.3f} / {times['captum_s_per_image']:.3f} s per image)", flush=True)
        save("deeplift_crosscheck", out)

    # DeepLiftShap: R references shared by every image.
    half = args.refs // 2
    g = torch.Generator().manual_seed(args.seed)
    blurred = make_baseline(clf, x, "blur")[torch.randperm(n, generator=g)[:half]]
    noise = torch.rand((args.refs - half, *x.shape[1:]), generator=g)
    refs = torch.cat([blurred, noise])
    gap = logit(clf, x, targets) - torch.stack([logit(clf, r.expand_as(x), targets) for r in refs]).mean(0)

    def ours_shap():
        return saliency(clf, x, t, method="deeplift-shap", baselines=refs, samples=args.refs, reduce="none",
                        batch_size=FEATVIS_ROWS)

    def theirs_shap():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.cat([DeepLiftShap(model).attribute(x[i:i + 1], baselines=refs, target=t[i])
                              for i in range(n)]).detach()

    a, b, times = alternate(ours_shap, theirs_shap, args.repeats, n)
    r = {"references": f"{half} blurred photos of the set + {args.refs - half} uniform noise (seeded)",
         **agreement(a, b), "featvis_completeness": completeness(a, gap), "captum_completeness": completeness(b, gap),
         "gap_median": float(gap.median()), "time": times}
    out["deeplift_shap"] = r
    print(f"deeplift-shap  Pearson min {r['pearson_min']:.7f} Spearman min {r['spearman_min']:.6f} "
          f"max rel {r['max_rel_diff_max']:.1e}; completeness featvis {r['featvis_completeness']['rel_miss_max']:.1e}"
          f" Captum {r['captum_completeness']['rel_miss_max']:.1e}; featvis/Captum {times['ratio']:.2f} "
          f"({times['featvis_s_per_image']:.3f} / {times['captum_s_per_image']:.3f} s per image)", flush=True)
    print("wrote", save("deeplift_crosscheck", out))


if __name__ == "__main__":
    main()
