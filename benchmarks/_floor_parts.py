"""The parts of benchmarks/floor.py that are not timing: accuracy of each candidate against eager float32, the ReLU6
corners the default's rounding flips, and a profile of the default by operator family."""

from __future__ import annotations

import copy
import os
from collections import defaultdict

import torch
from torch import nn

import featvis as fv
from featvis.layers import trace_calls
from featvis.models import fast, frozen


def load_avg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def photos(clf, size: int = 224) -> torch.Tensor:
    x = torch.cat([fv.samples.load(n, clf) for n in fv.samples.names()])
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    return x.to(clf.device)


def _maps_and_probs(clf, x: torch.Tensor, targets: torch.Tensor, cand) -> tuple[torch.Tensor, torch.Tensor]:
    clf.fast = cand.fast
    old = torch.get_num_threads()
    try:
        if cand.threads:
            torch.set_num_threads(cand.threads)
        with cand.settings(), frozen(clf):
            with torch.no_grad():
                probs = clf(x).softmax(-1).float()
            xx = x.clone().requires_grad_(True)
            logits = clf(xx)
            maps = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xx)[0]
    finally:
        torch.set_num_threads(old)
        clf.fast = True
    return maps.float(), probs


def accuracy(clf, cands, make_step=None) -> dict[str, dict]:
    """Each (non-compiled) candidate vs eager float32 on the bundled photos at 224 px: input-gradient maps of the
    eager prediction (max and mean relative difference), max |Δ probability|, identical top-1 / top-5."""
    x = photos(clf)
    eager = next(c for c in cands if c.name == "eager")
    ref_maps, ref_probs = _maps_and_probs(clf, x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), eager)
    targets = ref_probs.argmax(-1)
    ref_maps, _ = _maps_and_probs(clf, x, targets, eager)
    out = {}
    for c in cands:
        if c.compile:
            continue
        maps, probs = _maps_and_probs(clf, x, targets, c)
        d = (maps - ref_maps).abs()
        out[c.name] = {
            "max_rel": float(d.max() / ref_maps.abs().max()),
            "mean_rel": float(d.sum() / ref_maps.abs().sum()),
            "max_dprob": float((probs - ref_probs).abs().max()),
            "top1_identical": bool(torch.equal(probs.argmax(-1), targets)),
            "top5_identical": bool(torch.equal(probs.topk(5).indices, ref_probs.topk(5).indices)),
        }
    return out


def relu6_flips(clf) -> dict:
    """How many ReLU6 pre-activations land on the other side of a corner (0 or 6) in the default copy than in the
    user's network (rounding of the folded weights and of the channels-last sums), and both float32 runs' map error
    against float64: equal errors say the default is as accurate as eager, and its larger local differences sit
    where a corner flipped."""
    x = photos(clf)
    unfused = fast.FastOptions(fuse_relu6=False)  # the same pre-activations; a fused conv hides its ReLU6 call
    with torch.no_grad(), frozen(clf):
        clf.fast = unfused
        try:
            clf(x[:1])
        finally:
            clf.fast = True
        entry = fast._CACHE[clf.net][unfused]
        z = clf.normalize(x)
        eager_calls, _ = trace_calls(clf.net, z, (nn.ReLU6, nn.ReLU))
        fast_calls, _ = trace_calls(entry.net, z.contiguous(memory_format=torch.channels_last), (nn.ReLU6, nn.ReLU))
    flipped = total = 0
    for a, b in zip(eager_calls, fast_calls, strict=True):
        ea, fa = a.input, b.input
        flipped += int(((ea > 0) != (fa > 0)).sum() + ((ea < 6) != (fa < 6)).sum())
        total += ea.numel()
    with torch.no_grad():
        targets = clf(x).argmax(-1)
    ref = copy.deepcopy(clf).double()
    ref.fast = False
    with frozen(ref):
        xx = x.double().clone().requires_grad_(True)
        ref_maps = torch.autograd.grad(ref(xx).gather(1, targets[:, None]).sum(), xx)[0].float()

    def maps(setting):
        clf.fast = setting
        try:
            with frozen(clf):
                xx = x.clone().requires_grad_(True)
                return torch.autograd.grad(clf(xx).gather(1, targets[:, None]).sum(), xx)[0]
        finally:
            clf.fast = True

    def err(m):
        return float((m - ref_maps).abs().sum() / ref_maps.abs().sum())

    return {"flipped": flipped, "pre_activations": total, "eager_vs_fp64": err(maps(False)),
            "fast_vs_fp64": err(maps(True))}


FAMILIES = ("conv 1x1", "conv depthwise", "conv dense (stem)", "ReLU6 (clamp) fwd+bwd", "padding (stride-2 'same')",
            "residual add / grad accumulate", "layout copies", "pool + linear head", "normalize + rest")


def _family(name: str, shapes: list) -> str:
    if "convolution" in name:
        weight = shapes[2] if "backward" in name else shapes[1] if len(shapes) > 1 else []
        if len(weight) == 4:
            if weight[2] == weight[3] == 1:
                return "conv 1x1"
            return "conv depthwise" if weight[1] == 1 else "conv dense (stem)"
        return "conv 1x1"
    if name in ("aten::clamp", "aten::hardtanh", "aten::hardtanh_backward", "aten::clamp_min", "aten::relu",
                "aten::threshold_backward"):
        return "ReLU6 (clamp) fwd+bwd"
    if "pad" in name or name in ("aten::narrow", "aten::slice"):
        return "padding (stride-2 'same')"
    if name in ("aten::add", "aten::add_"):
        return "residual add / grad accumulate"
    if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::empty_like", "aten::_to_copy"):
        return "layout copies"
    if name in ("aten::mean", "aten::addmm", "aten::mm", "aten::sum", "aten::adaptive_avg_pool2d", "aten::expand",
                "aten::div", "aten::linear", "aten::t"):
        return "pool + linear head"
    return "normalize + rest"


def profile_families(clf, batch: int = 8, size: int = 224, steps: int = 3) -> dict:
    """Self CPU time of the default's forward+backward by operator family (torch.profiler, shapes recorded)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(batch, 3, size, size, device=clf.device)
    cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with frozen(clf):
        def step():
            xx = x.clone().requires_grad_(True)
            return torch.autograd.grad(clf(xx)[:, 0].sum(), xx)[0]

        step()
        step()
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize()

    def own_ms(e) -> float:  # an operator's own time: on a GPU, the kernels it launched itself
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3 / steps

    ms: dict[str, float] = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        ms[_family(e.key, e.input_shapes or [])] += own_ms(e)
    total = sum(ms.values()) or 1.0
    fams = {f: {"ms": ms.get(f, 0.0), "share": ms.get(f, 0.0) / total} for f in FAMILIES}
    top = sorted(((own_ms(e), e.key) for e in prof.key_averages()), reverse=True)[:12]
    return {"batch": batch, "size": size, "ms_per_step": total, "families": fams,
            "top_ops": [{"op": k, "ms": v} for v, k in top], "threads": torch.get_num_threads(),
            "pid": os.getpid()}
