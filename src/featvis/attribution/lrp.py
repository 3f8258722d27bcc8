"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance Propagation: An
Overview") with zennit's composites (Anders et al. 2021), by the gradient trick: one forward and one backward pass
for the whole batch, each rule a custom backward of its layer.

How the network is read (zennit 0.5.1's rules and canonizers, `zennit.composites.layer_map_base`):
- The relevance starts as the target logit (so a map sums to about the logit) and is propagated to the pixels;
  the input normalization is an elementwise rescaling and passes relevance through unchanged.
- BatchNorm is folded into the convolution before it (featvis's fast-copy planner finds the pairs, as zennit's
  MergeBatchNorm canonizer); a BatchNorm, LayerNorm or GroupNorm with no conv before it passes relevance through.
- Convolutions and linear layers take the composite's rules by layer type; the first one called (the input layer)
  the z^B (box) rule in epsilon-gamma-box, with bounds from the normalized [0, 1] pixel range.
- Activations (ReLU, ReLU6, SiLU, GELU, Hardswish, ..., modules or functional) pass relevance through, as zennit's
  Pass rule: a saturated ReLU6 keeps its relevance, which its gradient would drop.
- A sum of two activations (a residual connection, functional as `x + y` or `out += identity`) splits relevance in
  proportion to the summands (zennit's Sum module with the Norm rule); average pooling and `mean` are linear
  layers under the Norm rule (epsilon = STABILIZER, no parameters).
- A gating product (squeeze-and-excitation's `x * gate`, the gate broadcast over positions) gives all relevance to
  the signal (Arras et al. 2017's signal-take-all); an activation times a constant passes it through.
- Max pooling keeps its gradient (winner takes all). Self-attention (ViTs) has no rule here: refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from featvis.attribution._base import ATTRIBUTIONS, default_chunk, prepare_inputs, reduce_channels
from featvis.errors import FeatvisError
from featvis.layers import is_attention, root, swapped_forward
from featvis.models.classifier import frozen
from featvis.models.fast import _compat, known
from featvis.models.fast.fold import fold
from featvis.models.fast.plan import plan

COMPOSITES = ("epsilon", "epsilon-plus", "epsilon-gamma-box", "alpha-beta")
STABILIZER = 1e-6  # zennit's default stabilizer of every rule but epsilon (rules.py, composites.py)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
# zennit.types.Activation less MultiheadAttention, plus SiLU's and Mish's kin
_ACTS = (nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid, nn.PReLU,
         nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Mish, nn.Softplus,
         nn.Softshrink, nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps·sign(z), with sign(0) = +1 (zennit.core.stabilize)."""
    return z + eps * ((z == 0).to(z) + z.sign())


class _Rule(torch.autograd.Function):
    """forward(x) as given; backward maps the output's relevance to the input's by `relevance(x, R)`."""

    @staticmethod
    def forward(ctx, x, forward, relevance):
        ctx.save_for_backward(x)
        ctx.relevance = relevance
        return forward(x)

    @staticmethod
    def backward(ctx, rel):
        (x,) = ctx.saved_tensors
        return ctx.relevance(x.detach(), rel), None, None


def _pass(x: torch.Tensor, forward) -> torch.Tensor:
    return _Rule.apply(x, forward, lambda _x, rel: rel)


def _norm(x: torch.Tensor, forward) -> torch.Tensor:
    """zennit's Norm rule on a parameter-free linear map (pooling, mean): R_in = x ⊙ Jᵀ(R / z)."""
    def relevance(x, rel):
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            z = forward(leaf)
        return x * torch.autograd.grad(z, leaf, rel / stabilize(z.detach(), STABILIZER))[0]
    return _Rule.apply(x, forward, relevance)


class _Sum(torch.autograd.Function):
    """a + b; relevance split in proportion to the summands (zennit's Sum with the Norm rule)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, rel):
        a, b = ctx.saved_tensors
        s = rel / stabilize(a + b, STABILIZER)
        return (a * s).sum_to_size(a.shape), (b * s).sum_to_size(b.shape)


class _Gate(torch.autograd.Function):
    """signal * gate; all relevance to the signal, none to the gate (signal-take-all, Arras et al. 2017)."""

    @staticmethod
    def forward(ctx, signal, gate):
        ctx.gate_shape = gate.shape
        return signal * gate

    @staticmethod
    def backward(ctx, rel):
        return rel, rel.new_zeros(ctx.gate_shape)


def _layer(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
    """`module`'s own forward (its padding and all) with other parameters; the user's module is not touched."""
    copy = _compat.shallow_copy(module)
    copy._parameters["weight"], copy._parameters["bias"] = weight, bias
    return lambda x: type(module).forward(copy, x)


def _terms(module: nn.Module, terms):
    """z = Σ_k sign_k · layer(w_k, b_k)(x_k) over `terms` [(sign, weight, bias, x)], and `back(s)` =
    Σ_k sign_k · x_k ⊙ J_kᵀ s (each term's input times the transposed layer applied to s) through the same forward
    graphs: every rule below is a few of these, so each of its convolutions runs once forward and once backward."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for _, _, _, x in terms]
        outs = [_layer(module, w, b)(leaf) for (_, w, b, _), leaf in zip(terms, leaves, strict=True)]
    z = sum(sign * o.detach() for (sign, *_), o in zip(terms, outs, strict=True))

    def back(s: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(outs, leaves, [s] * len(outs))
        return sum(sign * leaf.detach() * g for (sign, *_), leaf, g in zip(terms, leaves, grads, strict=True))

    return z, back


def _rule_relevance(rule: str, module: nn.Module, w: torch.Tensor, b: torch.Tensor | None, opts: dict):
    """The relevance map (x, R_out) -> R_in of one conv/linear layer under `rule` (zennit.rules' definitions)."""
    pos, neg = w.clamp(min=0), w.clamp(max=0)
    bp, bn = (None, None) if b is None else (b.clamp(min=0), b.clamp(max=0))

    def epsilon(x, rel):
        z, back = _terms(module, [(1, w, b, x)])
        return back(rel / stabilize(z, opts["epsilon"]))

    def zplus(x, rel):  # alpha=1, beta=0 with negative inputs allowed (zennit's ZPlus)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z, back = _terms(module, [(1, pos, bp, xp), (1, neg, None, xn)])
        return back(rel / stabilize(z, STABILIZER))

    def alpha_beta(x, rel):
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        zp, back_p = _terms(module, [(1, pos, bp, xp), (1, neg, None, xn)])
        zn, back_n = _terms(module, [(1, neg, bn, xp), (1, pos, None, xn)])
        return opts["alpha"] * back_p(rel / stabilize(zp, STABILIZER)) \
            - opts["beta"] * back_n(rel / stabilize(zn, STABILIZER))

    def gamma(x, rel):  # the generalized gamma rule (zennit's Gamma: positive and negative outputs apart)
        g = opts["gamma"]
        wa, wb = w + g * pos, w + g * neg
        ba, bb = (None, None) if b is None else (b + g * bp, b + g * bn)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = _layer(module, w, b)(x)
        za, back_a = _terms(module, [(1, wa, ba, xp), (1, wb, None, xn)])
        zb, back_b = _terms(module, [(1, wb, bb, xp), (1, wa, None, xn)])
        return back_a((z > 0) * rel / stabilize(za, STABILIZER)) + back_b((z < 0) * rel / stabilize(zb, STABILIZER))

    def box(x, rel):  # z^B (Montavon et al. 2017), zennit's ZBox: the biases cancel in the denominator
        low, high = (v.to(x).expand_as(x) for v in opts["bounds"])
        z, back = _terms(module, [(1, w, b, x), (-1, pos, bp, low), (-1, neg, bn, high)])
        return back(rel / stabilize(z, STABILIZER))

    return {"epsilon": epsilon, "zplus": zplus, "alpha-beta": alpha_beta, "gamma": gamma, "box": box}[rule]


def _rule_of(composite: str, module: nn.Module, first: bool) -> str:
    if first and composite == "epsilon-gamma-box":
        return "box"
    if isinstance(module, nn.Linear) or composite == "epsilon":
        return "epsilon"
    return {"epsilon-plus": "zplus", "epsilon-gamma-box": "gamma", "alpha-beta": "alpha-beta"}[composite]


def _activation(t) -> bool:
    """A tensor computed from the input (not a parameter, buffer or constant)."""
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, nn.Parameter)


_T = torch.Tensor
_ADD = {torch.add: torch.add, _T.add: torch.add, _T.__add__: torch.add, _T.__radd__: torch.add,
        _T.__iadd__: torch.add, _T.add_: torch.add}
_MUL = {torch.mul: torch.mul, _T.mul: torch.mul, _T.__mul__: torch.mul, _T.__rmul__: torch.mul,
        _T.__imul__: torch.mul, _T.mul_: torch.mul}
_DIV = {torch.div: torch.div, _T.div: torch.div, _T.__truediv__: torch.div, _T.__itruediv__: torch.div,
        _T.div_: torch.div}
_ACT_FNS = {F.relu, torch.relu, _T.relu, F.relu6, F.hardtanh, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.mish,
            F.leaky_relu, F.elu, F.celu, F.selu, torch.sigmoid, _T.sigmoid, torch.tanh, _T.tanh, F.softplus}
_INPLACE_ACTS = {torch.relu_: torch.relu, _T.relu_: torch.relu, F.relu_: torch.relu}
_POOL_FNS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d, F.avg_pool2d,
             F.avg_pool3d, torch.mean, _T.mean}


class _Rules(TorchFunctionMode):
    """The functional part of the rules: sums, products, activations and pooling written as torch calls. Acts only
    while autograd records (a rule's own forward runs without it, so its inner calls are left alone)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled() and args:
            x = args[0]
            if func in _ADD and len(args) == 2 and not kwargs and _activation(x) and _activation(args[1]):
                return _Sum.apply(x, args[1])
            if func in _MUL and len(args) == 2 and not kwargs and (_activation(x) or _activation(args[1])):
                a, b = args
                if _activation(a) and _activation(b):
                    if a.shape == b.shape:
                        raise FeatvisError(f"lrp has no rule for the product of two activations of one shape "
                                           f"{tuple(a.shape)}; use gradient or integrated-gradients")
                    signal, gate = (a, b) if a.numel() >= b.numel() else (b, a)
                    return _Gate.apply(signal, gate)
                act, other = (a, b) if _activation(a) else (b, a)
                return _pass(act, lambda t: torch.mul(t, other))
            if func in _DIV and len(args) == 2 and not kwargs and _activation(x) and not _activation(args[1]):
                return _pass(x, lambda t: torch.div(t, args[1]))
            if _activation(x) and (func in _ACT_FNS or func in _INPLACE_ACTS):
                call = _INPLACE_ACTS.get(func, func)
                kw = {**kwargs, "inplace": False} if "inplace" in kwargs else kwargs
                return _pass(x, lambda t: call(t, *args[1:], **kw))
            if _activation(x) and func in _POOL_FNS:
                return _norm(x, lambda t: func(t, *args[1:], **kwargs))
        return func(*args, **kwargs)


def _folded(clf, normalized: torch.Tensor) -> tuple[dict, set]:
    """{conv: (weight, bias)} with its BatchNorm folded in, and the folded BatchNorms (zennit's MergeBatchNorm)."""
    net = clf.net
    found = plan(net, normalized[:1])
    mods = dict(net.named_modules())
    folded, bns = {}, set()
    for conv_name, bn_name in (found.pairs if found is not None else []):
        conv, bn = mods[conv_name], mods[bn_name]
        merged = fold(conv, bn, channels_last=False)
        folded[conv] = (merged.weight.detach(), merged.bias.detach())
        bns.add(bn)
    return folded, bns


def _forwards(composite: str, folded: dict, bns: set, opts: dict, state: dict):
    """make_forward for `swapped_forward`: each module's rule-wrapped forward."""
    def make(m: nn.Module):
        if isinstance(m, (*_CONVS, nn.Linear)):
            w, b = folded.get(m, (m.weight.detach(), None if m.bias is None else m.bias.detach()))

            def forward(x):
                rule = _rule_of(composite, m, state["first"])
                state["first"] = False
                return _Rule.apply(x, _layer(m, w, b), _rule_relevance(rule, m, w, b, opts))
            return forward
        if m in bns:  # folded into its conv; timm's BatchNormAct2d keeps its activation (a pass-through)
            return (lambda x: m.act(m.drop(x))) if known.is_bn_act(m) else (lambda x: x)
        if isinstance(m, _POOLS):
            return lambda x: _norm(x, lambda t: type(m).forward(m, t))
        return lambda x: _pass(x, lambda t: type(m).forward(m, t))  # activations, unfolded norms
    return make


@ATTRIBUTIONS.register("lrp", aliases=("layerwise-relevance", "relevance-propagation"))
def lrp(clf, images: torch.Tensor, target=None, *, composite: str = "epsilon-plus", epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0, reduce: str = "sum",
        batch_size: int | None = None) -> torch.Tensor:
    """Layer-wise relevance propagation of the target logit to the pixels, by a composite of rules per layer type.

    Bach et al. 2015 (PLoS ONE), Montavon et al. 2019; composites as zennit's (Anders et al. 2021): "epsilon"
    (the epsilon rule everywhere; epsilon=0 on a ReLU network is gradient × input), "epsilon-plus" (z⁺ on convs,
    epsilon on linear layers), "epsilon-gamma-box" (z^B on the input layer, gamma on convs, epsilon on linear
    layers) and "alpha-beta" (alpha-beta on convs, epsilon on linear layers). BatchNorm is folded into its conv,
    activations pass relevance through, residual sums split it in proportion (see the module docstring).

    Args:
        composite: "epsilon", "epsilon-plus" (default), "epsilon-gamma-box" or "alpha-beta".
        epsilon: the epsilon rule's stabilizer (all epsilon layers); larger values absorb weak, noisy relevance.
        gamma: the gamma rule's weight on positive contributions (epsilon-gamma-box).
        alpha: the alpha-beta rule's weight on positive contributions (alpha − beta = 1).
        beta: the alpha-beta rule's weight on negative contributions.
        reduce: channel reduction: "sum" (signed, the default), "max-abs", "abs-sum", "l2" or "none".

    Returns:
        [B, H, W] (or [B, 3, H, W] with reduce="none"); each map sums to about the target logit (exactly, for
        "epsilon" with epsilon → 0 on a network without biases).

    Example:
        >>> maps = lrp(clf, x, "tabby", composite="epsilon-gamma-box")
    """
    if composite not in COMPOSITES:
        raise FeatvisError(f"unknown composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    if composite == "alpha-beta" and abs(alpha - beta - 1) > 1e-9:
        raise FeatvisError(f"alpha-beta needs alpha - beta = 1 (conservation), got alpha={alpha:g}, beta={beta:g}")
    attention = sorted({type(m).__name__ for m in root(clf).modules() if is_attention(m)})
    if attention:
        raise FeatvisError(f"lrp has no rules for self-attention and this model ({clf.name}) has "
                           f"{', '.join(attention)} layers; use attention-relevance or gradient")
    images, targets = prepare_inputs(clf, images, target)
    low, high = ((v - clf.mean) / clf.std for v in (0.0, 1.0))  # the box of normalized [0, 1] pixels, [1, 3, 1, 1]
    opts = {"epsilon": epsilon, "gamma": gamma, "alpha": alpha, "beta": beta, "bounds": (low, high)}
    chunk = batch_size or default_chunk(clf, images)
    out = torch.empty_like(images)
    with frozen(clf), torch.enable_grad():
        folded, bns = _folded(clf, clf.normalize(images[:1]).detach())
        types = (*_CONVS, nn.Linear, *_NORMS, *_POOLS, *_ACTS)
        state = {"first": True}
        with swapped_forward(clf, types, _forwards(composite, folded, bns, opts, state)):
            for start in range(0, images.shape[0], chunk):
                x = images[start:start + chunk].detach().requires_grad_(True)
                state["first"] = True
                with _Rules():
                    logits = clf(x)
                t = targets[start:start + chunk]
                start_rel = torch.zeros_like(logits).scatter_(1, t[:, None], logits.detach().gather(1, t[:, None]))
                out[start:start + chunk] = torch.autograd.grad(logits, x, start_rel)[0]
    return reduce_channels(out, reduce)
