"""featvis lrp against zennit 0.5.1 on the same model, composite, photos and targets.

Models: efficientnet-lite0 (its shipped weights) and torchvision's resnet18, vgg11_bn and mobilenet_v2 (no weights
can be downloaded here: torchvision's seeded initialization, with seeded random BatchNorm statistics and affine
parameters so that folding BN is not a no-op). Photos: `--photos` drawn (seeded) from the evaluation set
(benchmarks/evalset.py, out/evalset) at 224 px, each explained for the class the model predicts, starting from the
target logit (zennit: `Gradient` with a one-hot × logit output relevance).

Composites, each library's own: "epsilon" (zennit: the base layer map with Epsilon on convs and linears),
"epsilon-plus" (EpsilonPlus), "epsilon-gamma-box" (EpsilonGammaBox with the box of normalized [0, 1] pixels) and
"alpha-beta" (EpsilonAlpha2Beta1); epsilon 1e-6, gamma 0.25, stabilizer 1e-6 on both sides.

What zennit needs that featvis does by itself (featvis runs on the unmodified classifier):
- BatchNorm merged into the conv before it: resnet18 `ResNetCanonizer`, vgg11_bn `VGGCanonizer`, mobilenet_v2
  `SequentialMergeBatchNorm`, lite0 `NamedMergeBatchNorm` with its (conv, bn) pairs by name (its convs have a padding
  child module, so they are not leaves and the sequential canonizer does not see them).
- Residual sums as zennit `Sum` modules, so its Norm rule splits relevance in proportion to the summands: resnet18's
  canonizer does this; mobilenet_v2's InvertedResidual and lite0's MBConvBlock get the same forward rewrite here
  (torch.stack + Sum, as ResNetCanonizer's own). mobilenet_v2's functional `adaptive_avg_pool2d` becomes an
  `AdaptiveAvgPool2d` module (zennit's Norm rule on AvgPool; featvis catches the functional call itself).
- The network without its normalization, on normalized pixels: a pixel's relevance is its normalized value's
  (normalization is a per-pixel bijection, and conservation keeps relevance through it). With (x − mean) / std inside
  the model, zennit's gradient carries the 1/std factor through it (maps ×4.4, summing to 4.4× the logit).
- Lite0 calls each block's `_swish` ReLU6 twice, and zennit stores one input per module: the zennit copy gets one
  activation module per call site (benchmarks/deeplift_crosscheck.py's `unshared_copy`, logits checked equal).

Where they differ (lite0 under "epsilon" and "alpha-beta": r 0.98 / 0.99, in float64 too), `--fold-check` says which
is right: on a copy of lite0 with every BatchNorm folded into its conv by hand (logits equal to 1e-14) featvis and
zennit agree exactly in float64 (max relative difference 0), and featvis on the original equals featvis on the copy;
zennit's own merge (`MergeBatchNorm.merge_batch_norm`) leaves each BatchNorm computing x / √(1 + eps) (running_var
set to 1, eps kept), not the identity: lite0's eps is 1e-3 over 49 BatchNorms (torchvision's 1e-5 hardly shows).
That check writes results/lrp_crosscheck_fold.json.

Metrics per image on the [3, H, W] maps: Pearson, Spearman, max |difference| / max |zennit|. Time: featvis and zennit
alternating `--repeats` rounds after one untimed call of each, medians, seconds per image, batch `--photos`.

    PYTHONPATH=src /work/venvs/ta/bin/python benchmarks/lrp_crosscheck.py   # -> benchmarks/results/lrp_crosscheck.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch
import torchvision
from deeplift_crosscheck import unshared_copy
from smooth_crosscheck import agreement
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from zennit.attribution import Gradient
from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, LayerMapComposite, layer_map_base
from zennit.layer import Sum
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.lrp import COMPOSITES

from _common import alternate, machine, save
from _common import evalset_photos as photos

EPSILON, GAMMA = 1e-6, 0.25


def randomized_bn(net: nn.Module, seed: int) -> nn.Module:
    """Seeded BatchNorm statistics and affine parameters (torchvision's init leaves BN the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return net.eval()


def _inverted_residual_forward(self, x):
    if self.use_res_connect:
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))
    return self.conv(x)


def _mobilenet_forward(self, x):
    x = self.canonizer_pool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


def _sum_skip(self, inputs, x):
    """The skip of deeplift_crosscheck's unshared block forward as a zennit Sum (its Norm rule then applies)."""
    return self.canonizer_sum(torch.stack([inputs, x], dim=-1))


def lite_bn_pairs(net: nn.Module) -> list[tuple[str, str, str]]:
    """EfficientNet-Lite's (module path prefix, conv, its BatchNorm) attribute names, stem and head included."""
    pairs = [("", "_conv_stem", "_bn0"), ("", "_conv_head", "_bn1")]
    for i, block in enumerate(net._blocks):
        if block._block_args.expand_ratio != 1:
            pairs.append((f"_blocks.{i}.", "_expand_conv", "_bn0"))
        pairs += [(f"_blocks.{i}.", "_depthwise_conv", "_bn1"), (f"_blocks.{i}.", "_project_conv", "_bn2")]
    return pairs


def zennit_model(name: str, clf) -> tuple[nn.Module, list]:
    """The network zennit is given (normalized pixels in, logits out) and its canonizers."""
    if name == "efficientnet-lite0":
        net = unshared_copy(clf)
        for block in net._blocks:
            block.canonizer_sum = Sum()
            block.skip = types.MethodType(_sum_skip, block)
        pairs = [([prefix + conv], prefix + bn) for prefix, conv, bn in lite_bn_pairs(net)]
        return net.eval(), [NamedMergeBatchNorm(pairs)]
    net = copy.deepcopy(clf.net)
    if name == "mobilenet_v2":
        for m in net.modules():
            if isinstance(m, InvertedResidual):
                m.canonizer_sum = Sum()
                m.forward = types.MethodType(_inverted_residual_forward, m)
        net.canonizer_pool = nn.AdaptiveAvgPool2d(1)
        net.forward = types.MethodType(_mobilenet_forward, net)
        return net.eval(), [SequentialMergeBatchNorm()]
    canonizer = {"resnet18": ResNetCanonizer, "vgg11_bn": VGGCanonizer}[name]()
    return net.eval(), [canonizer]


def zennit_composite(composite: str, canonizers: list, low: torch.Tensor, high: torch.Tensor):
    if composite == "epsilon":
        rules = [*layer_map_base(EPSILON), (Convolution, Epsilon(EPSILON)), (nn.Linear, Epsilon(EPSILON))]
        return LayerMapComposite(rules, canonizers=canonizers)
    if composite == "epsilon-plus":
        return EpsilonPlus(epsilon=EPSILON, canonizers=canonizers)
    if composite == "epsilon-gamma-box":
        return EpsilonGammaBox(low, high, epsilon=EPSILON, gamma=GAMMA, canonizers=canonizers)
    return EpsilonAlpha2Beta1(epsilon=EPSILON, canonizers=canonizers)


def classifier(name: str, seed: int):
    if name == "efficientnet-lite0":
        return fv.load_model(name)
    torch.manual_seed(seed)
    net = randomized_bn(getattr(torchvision.models, name)(weights=None), seed)
    return fv.Classifier.wrap(net, labels=[f"class {i}" for i in range(1000)], input_size=224, name=name)


def zennit_lrp(model: nn.Module, composite, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        def start(logits):  # the target logit as the output relevance, as featvis starts
            return torch.zeros_like(logits).scatter_(1, targets[:, None], logits.gather(1, targets[:, None]))
        _, rel = attributor(x, start)
    return rel.detach()


def side_by_side(clf, model, zc, composite: str, x: torch.Tensor, targets: torch.Tensor, repeats: int):
    """featvis on the classifier and zennit on its network, alternating (see `_common.alternate`)."""
    return alternate(lambda: saliency(clf, x, targets, method="lrp", composite=composite, reduce="none"),
                     lambda: zennit_lrp(model, zc, clf.normalize(x), targets), repeats, x.shape[0], peer="zennit")


def hand_folded(clf):
    """A copy of lite0 with every BatchNorm folded into the conv before it and replaced by Identity."""
    out = copy.deepcopy(clf)
    net = out.net
    for prefix, conv_name, bn_name in lite_bn_pairs(net):
        parent = net.get_submodule(prefix.rstrip("."))
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        bias = torch.zeros_like(scale) if conv.bias is None else conv.bias.data
        conv.weight.data = conv.weight.data * scale[:, None, None, None]
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
        setattr(parent, bn_name, nn.Identity())
    return out


def fold_check(photo_count: int, seed: int) -> None:
    """Which library is right on lite0: both on a hand-folded copy, and each against itself there, in float64."""
    clf = classifier("efficientnet-lite0", seed).double()
    for p in clf.parameters():
        p.requires_grad_(False)
    names, x = photos(clf, photo_count, seed)
    x = x.double()
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    folded = hand_folded(clf)
    model, canonizers = zennit_model("efficientnet-lite0", clf)
    model_folded, _ = zennit_model("efficientnet-lite0", folded)
    with torch.no_grad():
        gaps = {"hand_folded": (folded(x) - clf(x)).abs().max().item(),
                "zennit_canonized": None}
    low, high = (((v - clf.mean) / clf.std).expand_as(x).contiguous() for v in (0.0, 1.0))
    rows = []
    for composite in COMPOSITES:
        f = saliency(clf, x, targets, method="lrp", composite=composite, reduce="none")
        f_folded = saliency(folded, x, targets, method="lrp", composite=composite, reduce="none")
        z = zennit_lrp(model, zennit_composite(composite, canonizers, low, high), clf.normalize(x), targets)
        z_folded = zennit_lrp(model_folded, zennit_composite(composite, [], low, high), clf.normalize(x), targets)
        for what, a, b in (("featvis vs zennit, both on the hand-folded copy", f_folded, z_folded),
                           ("featvis on the original vs featvis on the copy", f, f_folded),
                           ("zennit with its canonizer vs zennit on the copy", z, z_folded),
                           ("featvis vs zennit as benchmarked", f, z)):
            rows.append({"composite": composite, "comparison": what, **agreement(a, b)})
            print(f"{composite:18s} {what:50s} r>={rows[-1]['pearson_min']:.12f} "
                  f"maxrel<={rows[-1]['max_rel_diff_max']:.2e}", flush=True)
    # the canonizer is applied inside the attributor's context
    with Gradient(model=model, composite=zennit_composite("epsilon", canonizers, low, high)), torch.no_grad():
        gaps["zennit_canonized"] = (model(clf.normalize(x)) - clf(x)).abs().max().item()
    out = save("lrp_crosscheck_fold", {"machine": machine(), "dtype": "float64", "photos": names,
                                       "targets": targets.tolist(), "max_abs_logit_gap": gaps, "rows": rows})
    print(f"logit gaps {gaps}; wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seeds the photo draw and the random models")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="efficientnet-lite0,resnet18,vgg11_bn,mobilenet_v2")
    ap.add_argument("--fold-check", action="store_true", help="only the float64 check on a hand-folded lite0")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.fold_check:
        fold_check(min(args.photos, 3), args.seed)
        return
    rows = []
    for name in args.models.split(","):
        clf = classifier(name, args.seed)
        for p in clf.parameters():
            p.requires_grad_(False)
        names, x = photos(clf, args.photos, args.seed)
        with torch.no_grad():
            targets = clf(x).argmax(-1)
        model, canonizers = zennit_model(name, clf)
        with torch.no_grad():
            gap = (model(clf.normalize(x)) - clf(x)).abs().max().item()
        low, high = (((v - clf.mean) / clf.std).expand_as(x).contiguous() for v in (0.0, 1.0))
        for composite in COMPOSITES:
            zc = zennit_composite(composite, canonizers, low, high)
            ours, theirs, timing = side_by_side(clf, model, zc, composite, x, targets, args.repeats)
            row = {"model": name, "composite": composite, "photos": names, "targets": targets.tolist(),
                   "zennit_copy_logit_gap": gap, **agreement(ours, theirs),
                   "featvis_sum_over_logit": [round(float(s), 4) for s in
                                              ours.flatten(1).sum(1) / clf(x).gather(1, targets[:, None])[:, 0]],
                   "zennit_sum_over_logit": [round(float(s), 4) for s in
                                             theirs.flatten(1).sum(1) / clf(x).gather(1, targets[:, None])[:, 0]],
                   **timing}
            rows.append(row)
            print(f"{name:19s} {composite:18s} r>={row['pearson_min']:.6f} rho>={row['spearman_min']:.6f} "
                  f"maxrel<={row['max_rel_diff_max']:.2e}  featvis {timing['featvis_s_per_image']:.3f} s/img, "
                  f"zennit {timing['zennit_s_per_image']:.3f} s/img (x{timing['ratio']:.2f})", flush=True)
    out = save("lrp_crosscheck", {"machine": machine(), "zennit": "0.5.1", "torchvision": torchvision.__version__,
                                  "epsilon": EPSILON, "gamma": GAMMA, "repeats": args.repeats, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
