"""DeepLIFT with the rescale rule (Shrikumar, Greenside, Kundaje 2017, "Learning Important Features Through
Propagating Activation Differences", ICML, arXiv 1704.02685) and DeepLiftShap (Lundberg & Lee 2017, "A Unified
Approach to Interpreting Model Predictions", NeurIPS: DeepLIFT averaged over baselines drawn from a distribution).

Each image and its baseline go through the network side by side, as one batch [inputs; baselines]. In the backward
pass every elementwise nonlinearity y = f(x) passes the multiplier Δy/Δx = (f(x) − f(x₀)) / (x − x₀) instead of
f'(x) (the gradient where |x − x₀| < EPS), and max-pooling passes Captum's rule (each window's output difference
sent back to where the maxima of x and of x₀ sit). Convolutions, BatchNorm in eval mode, average pooling and sums
keep their gradient, which is their multiplier. So Σ (x − x₀) · multiplier = F(x) − F(x₀) (summation-to-delta)
whenever every nonlinearity of the network is a module seen here.

As Captum's `DeepLift`/`DeepLiftShap` (tests/attribution/test_deeplift.py and benchmarks/deeplift_crosscheck.py
compare them), except: the rule replaces the module's forward (`swapped_forward`) rather than sitting in a module
backward hook, so in-place and reused activation modules (EfficientNet-Lite calls each block's ReLU6 twice, which
Captum refuses) are handled; ReLU6, SiLU, GELU, Hardswish, Mish ... get the rule (Captum's list is ReLU, ELU,
LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool, Softmax; other modules keep their gradient there); and a max-pool whose
windows overlap adds up the shares two windows send to one pixel (Captum's `max_unpool` keeps one of them).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from featvis._ops import Seed, random_draw
from featvis._progress import update
from featvis._registry import Count
from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, reduce_channels, score_fn
from featvis.attribution.integrated import BASELINES, make_baseline, quadrature
from featvis.errors import FeatvisError
from featvis.layers import swapped_forward
from featvis.models.classifier import frozen

EPS = 1e-10  # |x − x₀| below which the multiplier is the gradient (Captum's DeepLift default eps)
SAMPLES = 16  # baselines per image for deeplift-shap
SCORE_STEPS = 64  # Gauss–Legendre nodes for the logits → log-prob/prob step (exact to float precision there)
COMPLETENESS_TOL = 1e-2  # relative miss of summation-to-delta beyond which a map is not DeepLIFT's: warn

# Elementwise activations (one input, one output of the same shape): the rescale rule applies. By class name too,
# for third-party modules with no torch base class (timm's activations, efficientnet_pytorch's swish).
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
               nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold)
ELEMENTWISE_NAMES = ("Swish", "MemoryEfficientSwish", "HardSwish", "HardSigmoid", "HardMish", "GELUTanh", "QuickGELU",
                     "Mish", "SiLU", "GELU", "Sigmoid", "Tanh")
MAX_POOLS = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}
BASELINE_ALIASES = {"uniform": "noise"}


class _Rescale(torch.autograd.Function):
    """y = f(x) on [inputs; baselines]; backward: grad · Δy/Δx on the inputs' half (f'(x) where |Δx| < EPS)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn) -> torch.Tensor:
        y = fn(x)
        (xi, xr), (yi, yr) = x.chunk(2), y.chunk(2)
        dx = xi - xr
        small = dx.abs() < EPS
        ctx.fn = fn
        ctx.save_for_backward(xi, (yi - yr) / torch.where(small, torch.ones_like(dx), dx), small)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xi, ratio, small = ctx.saved_tensors
        gi = grad[:xi.shape[0]]
        out = gi * ratio
        if small.any():  # there the multiplier is the gradient (its limit): f' by autograd, for any f
            with torch.enable_grad():
                xd = xi.detach().requires_grad_(True)
                exact = torch.autograd.grad(ctx.fn(xd), xd, gi)[0]
            out = torch.where(small, exact, out)
        return torch.cat([out, torch.zeros_like(out)]), None  # only the inputs' score is differentiated


class _MaxPoolRescale(torch.autograd.Function):
    """Max-pooling of [inputs; baselines]; backward: Captum's rule. Window output o (x), o₀ (x₀), m = max(o, o₀):
    grad · (m − o₀) goes to x's maximum, grad · (o − m) to x₀'s, and each pixel's sum is divided by its Δx."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        pool = MAX_POOLS[type(module)]
        y, idx = pool(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True)
        n = x.shape[0] // 2
        o, o_ref = y[:n], y[n:]
        top = torch.maximum(o, o_ref)
        ctx.save_for_backward(x[:n] - x[n:], idx, top - o_ref, o - top)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dx, idx, up, down = ctx.saved_tensors
        n = dx.shape[0]
        gi = grad[:n]
        flat = (*dx.shape[:2], -1)  # [n, C, positions]: pooling indices count positions within a channel

        def unpool(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((*flat[:2], dx[0, 0].numel()), dtype=values.dtype, device=values.device)
            return out.scatter_add_(2, where.reshape(flat), values.reshape(flat)).view_as(dx)

        share = unpool(gi * up, idx[:n]) + unpool(gi * down, idx[n:])
        small = dx.abs() < EPS
        out = torch.where(small, unpool(gi, idx[:n]), share / torch.where(small, torch.ones_like(dx), dx))
        return torch.cat([out, torch.zeros_like(out)]), None


def _rule(module: nn.Module):
    """The swapped forward of an activation or max-pool module: the same output, the DeepLIFT backward."""
    original = type(module).forward
    if isinstance(module, tuple(MAX_POOLS)):
        if type(module) in MAX_POOLS and not module.return_indices:
            return lambda x: _MaxPoolRescale.apply(x, module)
        # A subclass (timm's TF-"same" padded pool) or a pool whose indices feed an unpool: keep its gradient.
        return lambda *args, **kwargs: original(module, *args, **kwargs)
    if getattr(module, "inplace", False):  # the rule keeps x and x₀: let an in-place activation write a copy
        return lambda x: _Rescale.apply(x, lambda t: original(module, t.clone()))
    return lambda x: _Rescale.apply(x, lambda t: original(module, t))


def _score_weights(z: torch.Tensor, z0: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """Multipliers [n, K] of the last step, logits → score: one-hot for the logit; for log-prob/prob (a function of
    all logits, where the rescale rule has no single Δx) the mean gradient on the segment z₀ → z, so that
    Σₖ wₖ (zₖ − z₀ₖ) = s(z) − s(z₀)."""
    if score == "logit":
        return F.one_hot(targets, z.shape[1]).to(z)
    fn = score_fn(score)
    alphas, weights = quadrature(SCORE_STEPS, "gausslegendre", z.device)
    with torch.enable_grad():
        path = (z0[None] + alphas.view(-1, 1, 1) * (z - z0)[None]).requires_grad_(True)  # [S, n, K]
        s = fn(path.flatten(0, 1), targets.repeat(SCORE_STEPS))
        grads = torch.autograd.grad(s.sum(), path)[0]
    return (weights.view(-1, 1, 1) * grads).sum(0)


def deeplift_from(clf, images: torch.Tensor, baselines: torch.Tensor, targets: torch.Tensor, *, score: str = "logit",
                  batch_size: int | None = None, stage: str = "deeplift") -> tuple[torch.Tensor, torch.Tensor]:
    """DeepLIFT of each image against its own baseline: ((x − x₀) · multipliers [N, 3, H, W], F(x) − F(x₀) [N]).

    images, baselines: [N, 3, H, W]; each call of the network takes [inputs; baselines] of `batch_size // 2` pairs.
    """
    fn = score_fn(score)
    n = images.shape[0]
    per_call = max(1, (batch_size or default_chunk(clf, images)) // 2)
    attr, gap = torch.empty_like(images), images.new_empty(n)
    with frozen(clf), torch.enable_grad(), swapped_forward(clf, ELEMENTWISE + tuple(MAX_POOLS), _rule) as _, \
            _swapped_by_name(clf):
        for start in range(0, n, per_call):
            sl = slice(start, start + per_call)
            x, x0 = images[sl].detach().requires_grad_(True), baselines[sl].detach()
            logits = clf(torch.cat([x, x0]))
            z, z0 = logits.chunk(2)
            t = targets[sl]
            weights = _score_weights(z.detach(), z0.detach(), t, score)
            grads = torch.autograd.grad((z * weights).sum(), x)[0]
            attr[sl] = (x.detach() - x0) * grads
            gap[sl] = (fn(z, t) - fn(z0, t)).detach()
            update(stage, min(start + per_call, n), n)
    return attr, gap


def _swapped_by_name(clf):
    """The rule on third-party activation modules known by class name (no torch base class to test against)."""
    from featvis.layers import root

    kinds = tuple({type(m) for m in root(clf).modules()
                   if type(m).__name__ in ELEMENTWISE_NAMES and not isinstance(m, ELEMENTWISE)})
    return swapped_forward(clf, kinds, _rule)


def _finish(attr: torch.Tensor, gap: torch.Tensor, reduce: str, return_delta: bool, name: str):
    delta = attr.flatten(1).sum(1) - gap
    miss = (delta.abs() / gap.abs().clamp(min=1.0)).max().item()
    if miss > COMPLETENESS_TOL:
        warnings.warn(f"{name}: the map misses summation-to-delta by {miss:.1%} of F(x) − F(x0): the network has "
                      "nonlinearities the rule does not see (functional activations, products such as squeeze-"
                      "excitation gates, attention), where the map follows the gradient", stacklevel=3)
    out = reduce_channels(attr, reduce)
    return (out, delta) if return_delta else out


@ATTRIBUTIONS.register("deeplift", aliases=("deep-lift", "dl"))
def deeplift(clf, images: torch.Tensor, target=None, *, baseline="black", score: str = "logit", reduce: str = "sum",
             seed: Seed = 0, batch_size: int | None = None, return_delta: bool = False):
    """DeepLIFT (rescale rule): (x − x₀) times multipliers that replace each nonlinearity's gradient by Δy/Δx.

    Shrikumar et al. 2017 (arXiv 1704.02685), as Captum's `DeepLift`. The image and its baseline run through the
    network in one batch; the map sums to F(x) − F(x₀) when every nonlinearity is an activation or max-pool module
    (functional activations and products such as squeeze-excitation gates keep their gradient; a warning says so).

    Args:
        baseline: "black" (default), "blur", "uniform" (noise, seeded), "mean" (the model's mean colour) or a tensor.
        score: "logit" (default), "log-prob" or "prob" (the last step by its mean gradient from F(x₀) to F(x)).
        reduce: channel reduction; "sum" keeps completeness (Σ map = F(x) − F(x₀)); "none" for [B, 3, H, W].
        return_delta: also return the completeness error Σ attr − (F(x) − F(x₀)), per image.

    Returns:
        [B, H, W], or (map, delta [B]) with return_delta.

    Example:
        >>> dl, delta = deeplift(clf, x, "tabby", baseline="blur", return_delta=True)
    """
    images, targets = prepare_inputs(clf, images, target)
    base = make_baseline(clf, images, _baseline_name(baseline), seed)
    attr, gap = deeplift_from(clf, images, base, targets, score=score, batch_size=batch_size)
    return _finish(attr, gap, reduce, return_delta, "deeplift")


def _baseline_name(baseline):
    if isinstance(baseline, str):
        key = baseline.strip().lower()
        if key not in BASELINES and key not in BASELINE_ALIASES:
            raise FeatvisError(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}, uniform or a "
                               "tensor")
        return BASELINE_ALIASES.get(key, key)
    return baseline


def shap_baselines(images: torch.Tensor, baselines, samples: int, seed: Seed) -> torch.Tensor:
    """The baselines of each image [S, B, 3, H, W]: uniform noise, other images of the batch, or references
    [R, 3, H, W] (a seeded draw of `samples` without replacement when samples ≤ R: samples = R takes all of them,
    Captum's DeepLiftShap; with replacement beyond)."""
    b = images.shape[0]
    if isinstance(baselines, str) and baselines.strip().lower() == "uniform":
        draws = random_draw("uniform", seed, (b, samples, *images.shape[1:]), device=images.device,
                            dtype=images.dtype)  # [B, S, 3, H, W]
        return draws.transpose(0, 1)
    if isinstance(baselines, str) and baselines.strip().lower() == "batch":
        if b < 2:
            raise FeatvisError("deeplift-shap baselines='batch' draws from the other images and needs at least 2; "
                               "pass baselines=[R, 3, H, W] references or 'uniform'")
        pool, others = images, b - 1
    elif isinstance(baselines, torch.Tensor):
        pool = baselines.to(images)
        if pool.ndim != 4 or pool.shape[1:] != images.shape[1:] or pool.shape[0] < 1:
            want = ", ".join(map(str, images.shape[1:]))
            raise FeatvisError(f"baselines have shape {tuple(pool.shape)}; expected [R, {want}] like the images")
        others = pool.shape[0]
    else:
        raise FeatvisError(f"unknown baselines {baselines!r}; use 'uniform', 'batch' or references [R, 3, H, W]")
    keys = random_draw("uniform", seed, (b, max(others, samples)), device=images.device, dtype=torch.float64)
    if samples <= others:
        idx = keys[:, :others].argsort(1)[:, :samples]  # [B, S] without replacement
    else:
        idx = (keys * others).long().clamp(max=others - 1)
    if pool is images:  # skip the image itself: 0..b-2 → the other images
        idx = idx + (idx >= torch.arange(b, device=images.device)[:, None]).long()
    return pool[idx.t()]  # [S, B, 3, H, W]


@ATTRIBUTIONS.register("deeplift-shap", aliases=("deepliftshap", "deep-shap", "deepshap"))
def deeplift_shap(clf, images: torch.Tensor, target=None, *, baselines="uniform", samples: Count = SAMPLES,
                  seed: Seed = 0, score: str = "logit", reduce: str = "sum", batch_size: int | None = None,
                  return_delta: bool = False):
    """DeepLiftShap: the mean over baselines drawn from a distribution of DeepLIFT against each (approximate SHAP).

    Lundberg & Lee 2017 (NeurIPS), as Captum's `DeepLiftShap`. All image–baseline pairs go through the network
    in batches of `batch_size` rows; the map sums to F(x) − mean F(x₀).

    Args:
        baselines: "uniform" (default: uniform noise images, seeded), "batch" (the other images of the batch) or
            references [R, 3, H, W] in [0, 1] (e.g. a sample of the data set).
        samples: baselines per image (from references: drawn without replacement; samples = R uses every one).
        seed: seeds the draws: one int, or one per image (an image's baselines then depend only on its seed).
        reduce: channel reduction; "sum" keeps Σ map = F(x) − mean F(x₀); "none" for [B, 3, H, W].
        return_delta: also return the completeness error Σ attr − (F(x) − mean F(x₀)), per image.

    Returns:
        [B, H, W], or (map, delta [B]) with return_delta.

    Example:
        >>> shap = deeplift_shap(clf, x, "tabby", baselines=dataset_sample, samples=32)
    """
    images, targets = prepare_inputs(clf, images, target)
    if samples < 1:
        raise FeatvisError(f"deeplift-shap needs samples >= 1, got {samples}")
    refs = shap_baselines(images, baselines, samples, seed)  # [S, B, 3, H, W]
    s, b = refs.shape[:2]
    attr, gap = deeplift_from(clf, images.repeat(s, 1, 1, 1), refs.flatten(0, 1), targets.repeat(s), score=score,
                              batch_size=batch_size, stage="deeplift-shap")
    return _finish(attr.view(s, *images.shape).mean(0), gap.view(s, b).mean(0), reduce, return_delta,
                   "deeplift-shap")
