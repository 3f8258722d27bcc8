"""The fast path: a separate inference copy of a classifier's network, used by `Classifier.forward` whenever nothing
could tell the difference (issue 17).

Every gradient method costs about one forward+backward of the network (benchmarks/floor.py), so that pass is the
one to make fast. The copy differs from the user's network in two ways, both exact up to float rounding:

- BatchNorm folded into the convolution that feeds it. In eval mode y = γ(conv(x) − μ)/√(σ² + ε) + β is one
  convolution with weights w·γ/√(σ² + ε) and bias β + (b − μ)·γ/√(σ² + ε): one pass over every activation less,
  forward and backward.
- channels-last activations (NHWC), the layout oneDNN's depthwise and 1×1 convolutions run fastest in; the input
  gradient comes back in the caller's layout.

The user's network is never modified: the copy shares every module it does not change and owns only the folded
convolutions and the containers above them. It runs only when the user's network would compute the same thing:
every module in eval mode, no hooks and no swapped forward anywhere in the network (so `capture`, `forward_until`,
guided backprop and Captum's layer methods see the user's modules), no folded parameter that needs a gradient, and
no tracing. It is rebuilt when a tensor it was made from is replaced, moved or changed in place; an in-place edit
through `.data` bypasses PyTorch's version counters, so call `refresh(clf)` after one.

Switches: `clf.fast = False` (or `FEATVIS_FAST=0`) runs the user's network; `clf.fast = FastOptions(autocast="bf16")`
(or `FEATVIS_FAST=bf16`) adds bfloat16 autocast, which is not within float tolerance and so is never the default;
`FastOptions(compile=True)` (`FEATVIS_FAST=compile`) compiles the copy for input shapes that recur (loops) — the
GPU path is `FEATVIS_FAST=bf16,compile` (benchmarks/gpu.sh).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MIN_CONVS = 8  # smaller networks gain nothing from a copy (and the tiny analytic test models stay bit-exact)
MAX_BUILDS = 4  # a network whose weights keep changing (training between calls) runs as it is after this many
PROBE_RTOL = 1e-3  # folded copy vs the user's network on the probe image, relative to the largest |logit|
# Conv2d subclasses that only pad ("same" padding, TensorFlow style: lukemelas' EfficientNet and the Lite port,
# timm's Conv2dSame) and then convolve with their own weight and bias: folding applies to them as to nn.Conv2d.
SAME_PADDING_CONVS = frozenset({"Conv2dDynamicSamePadding", "Conv2dStaticSamePadding", "Conv2dSame"})
AUTOCASTS = {"bf16": torch.bfloat16}
COMPILE_AFTER_CALLS = 16  # same-shape calls before compiling: a loop, not a one-off (break-even: floor.py)
_OFF = {"0", "off", "false", "no", "eager"}


@dataclass(frozen=True)
class FastOptions:
    """What the fast copy changes. The defaults are the exact transforms; `autocast="bf16"` is opt-in."""

    fold_bn: bool = True
    channels_last: bool = True
    autocast: str | None = None  # "bf16": bfloat16 autocast (AMX/AVX-512-BF16 CPUs, Ampere+ GPUs)
    # torch.compile (inductor) for an input shape once it has run COMPILE_AFTER_CALLS times (a loop: render steps,
    # attack steps, IG/SmoothGrad chunks); shorter calls never pay the compile time. Opt-in: see benchmarks/floor.py
    compile: bool = False


def options(clf: nn.Module) -> FastOptions | None:
    """The fast-path options in force for `clf`: its `fast` attribute, else `FEATVIS_FAST`; None when off.

    `FEATVIS_FAST` is read at each call: "0"/"off" disables, "bf16" adds bfloat16 autocast, "compile" compiles
    loops, "nofold" and "nchw" drop one transform (comma-separated, e.g. "bf16,compile").
    """
    setting = clf.__dict__.get("fast", True)
    if setting is False or setting is None:
        return None
    if isinstance(setting, FastOptions):
        return setting
    env = os.environ.get("FEATVIS_FAST", "").strip().lower()
    if not env:
        return _DEFAULT
    words = {w.strip() for w in env.split(",") if w.strip()}
    if words & _OFF:
        return None
    return FastOptions(fold_bn="nofold" not in words, channels_last="nchw" not in words,
                       autocast="bf16" if "bf16" in words else None, compile="compile" in words)


_DEFAULT = FastOptions()


class _ChannelsLast(torch.autograd.Function):
    """NCHW → channels-last copy whose backward hands the gradient back contiguous (NCHW), so an input gradient
    has the layout of the input it belongs to (`.view` works on it as on the user's network's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


@dataclass
class _Entry:
    """A network's fast copy for one set of options, and what it was made from (to notice changes)."""

    net: nn.Module | None  # None: run the user's network
    options: FastOptions
    folded: int = 0
    modules: list | None = None  # the user's modules (root excluded: the cache must not keep its key alive)
    watched: tuple = ()  # (owning dict, key, tensor, data_ptr, version) of every tensor the copy was made from
    trainable: tuple = ()  # folded parameters: if one needs a gradient, the user's network runs
    containers: tuple = ()  # (user's container, ids of its attributes) for each container the copy duplicated
    root_ids: tuple = ()  # ids of the root's attributes (the root itself is the cache's key: not kept here)
    builds: int = 1
    folded_convs: frozenset = frozenset()  # names of the convs whose output in the copy is their BatchNorm's
    calls: dict = field(default_factory=dict)  # (shape, dtype, device, grad mode) → calls, for `compile`
    compiled: object = None  # torch.compile(net), made at the first hot shape; False after a failed compile

    def fresh(self, net: nn.Module, modules: list) -> bool:
        if self.modules != modules or (self.root_ids and tuple(map(id, net.__dict__.values())) != self.root_ids):
            return False
        for owner, key, t, ptr, version in self.watched:
            if owner.get(key) is not t or t.data_ptr() != ptr or t._version != version:
                return False
        return all(tuple(map(id, m.__dict__.values())) == ids for m, ids in self.containers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        if self.options.channels_last and not x.is_contiguous(memory_format=torch.channels_last):
            x = _ChannelsLast.apply(x)
        net = self._compiled(x) if self.options.compile else self.net
        if net is self.net:
            return self._run(net, x)
        try:
            return self._run(net, x)
        except Exception as e:  # a compiler that cannot run here (no C compiler, no Triton): the copy runs as is
            log.warning("featvis fast path: torch.compile failed (%s); continuing without it", e)
            self.compiled = False
            return self._run(self.net, x)

    def _run(self, net, x: torch.Tensor) -> torch.Tensor:
        dtype = AUTOCASTS.get(self.options.autocast or "")
        if dtype is None or not _autocast_supported(x.device, dtype):
            return net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            out = net(x)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

    def _compiled(self, x: torch.Tensor):
        """The compiled network once this input shape is hot, else the plain copy."""
        key = (tuple(x.shape), x.dtype, x.device, torch.is_grad_enabled())
        n = self.calls[key] = self.calls.get(key, 0) + 1
        if n <= COMPILE_AFTER_CALLS or self.compiled is False:
            return self.net
        if self.compiled is None:
            self.compiled = torch.compile(self.net, dynamic=False)
        return self.compiled


# user's network → {options: entry}. Weak keys: the copy lives as long as the network, never longer. (The plan is
# not shared between networks of one structure: a forward's dataflow can hang on attributes, see test_fast.py.)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_logits(clf: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The network's output on normalized images `x` from its fast copy, or None when the user's network must run.

    Called by `Classifier.forward`; `x` is already normalized.
    """
    opts = options(clf)
    if opts is None or x.dim() != 4 or torch.jit.is_tracing() or torch.compiler.is_compiling() \
            or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return None
    net = clf.net
    modules = _plain_modules(net)
    if modules is None:
        return None
    per_net = _CACHE.get(net)
    if per_net is None:
        per_net = _CACHE[net] = {}
    entry = per_net.get(opts)
    if entry is None or (entry.builds <= MAX_BUILDS and not entry.fresh(net, modules)):
        builds = 0 if entry is None else entry.builds
        entry = per_net[opts] = _build(net, x, opts, modules) if builds < MAX_BUILDS else _Entry(None, opts)
        entry.builds = builds + 1
        if entry.builds > MAX_BUILDS:
            log.info("featvis fast path: %s changed %d times; running it as it is from now on",
                     type(net).__name__, MAX_BUILDS)
    if entry.net is None:
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in entry.trainable):
        return None
    tap = getattr(_TAPS, "active", None)
    if tap is None or tap[0] is not net:
        return entry(x)
    if tap[1] in entry.folded_convs:  # its output differs in the copy (BatchNorm applied): the user's network runs
        return None
    with _tapping(entry.net, tap):
        return entry(x)


def user_logits(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The user's network on normalized `x` (when `fast_logits` said None), serving an active `tap` with a hook."""
    tap = getattr(_TAPS, "active", None)
    if tap is None or tap[0] is not clf.net:
        return clf.net(x)
    with _tapping(clf.net, tap):
        return clf.net(x)


_TAPS = threading.local()


@contextlib.contextmanager
def _tapping(net: nn.Module, tap: tuple) -> Iterator[None]:
    module, sink = _named(net).get(tap[1]), tap[2]
    if module is None:
        yield
        return
    stop = tap[3]

    def hook(_module, _inputs, out) -> None:
        sink.append((out if isinstance(out, torch.Tensor) else out[0]).detach().clone())
        if stop:
            raise TapStop

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class TapStop(BaseException):
    """Raised by a `tap(..., stop=True)` once its layer has run: the rest of the network is skipped."""


@contextlib.contextmanager
def tap(clf: nn.Module, layer: str, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """While the block runs, each forward of `clf` records the detached output of its layer `layer` (the user's name)
    into the yielded list, one tensor per call of the layer, like `featvis.capture(detach=True)` but without turning
    the fast path off as a hook on the user's network does. The copy's module runs where it computes the same
    output; a convolution whose BatchNorm was folded into it does not, so for one of those the user's network runs.
    With `stop`, the forward raises `TapStop` right after the layer (later layers never run): catch it.

    Example (the layer's activations and the logits from one fast forward):
        >>> with tap(clf, "blocks.8") as seen:
        ...     logits = clf(x)
        >>> acts = seen[0]
        >>> with tap(clf, "blocks.8", stop=True) as seen, contextlib.suppress(TapStop):
        ...     clf(x)  # runs only up to blocks.8
    """
    sink: list[torch.Tensor] = []
    before = getattr(_TAPS, "active", None)
    _TAPS.active = (clf.net, layer, sink, stop)
    try:
        yield sink
    finally:
        _TAPS.active = before


_NAMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _named(net: nn.Module) -> dict[str, nn.Module]:
    named = _NAMED.get(net)
    if named is None:
        named = _NAMED[net] = dict(net.named_modules())
    return named


def refresh(clf: nn.Module) -> None:
    """Forget `clf`'s fast copy (it is rebuilt at the next call): needed only after editing weights via `.data`."""
    _CACHE.pop(getattr(clf, "net", clf), None)


def status(clf: nn.Module) -> dict[str, object]:
    """What the fast path does for `clf` now (after at least one forward): for tests, benchmarks and reports."""
    opts = options(clf)
    entry = _CACHE.get(clf.net, {}).get(opts) if opts is not None else None
    return {"enabled": opts is not None, "active": entry is not None and entry.net is not None,
            "folded": entry.folded if entry else 0, "options": opts}


def _plain_modules(net: nn.Module) -> list | None:
    """The network's modules (root excluded) if it runs as plain eval-mode code: no hooks, no swapped forward."""
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks \
            or g._global_backward_pre_hooks:
        return None
    modules = [net]
    i = 0
    while i < len(modules):  # breadth first over _modules: 5x faster than net.modules() (no names, no memo)
        m = modules[i]
        if m.training or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks \
                or "forward" in m.__dict__:
            return None
        modules.extend(c for c in m._modules.values() if c is not None)
        i += 1
    return modules[1:]


def _autocast_supported(device: torch.device, dtype: torch.dtype) -> bool:
    if dtype != torch.bfloat16:
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _build(net: nn.Module, x: torch.Tensor, opts: FastOptions, modules: list) -> _Entry:
    convs = len({id(m) for m in modules if isinstance(m, nn.Conv2d)})
    if convs < MIN_CONVS or isinstance(net, torch.jit.ScriptModule) or x.dtype not in (torch.float32, torch.float64):
        return _Entry(None, opts)
    pairs: list[tuple[str, str]] = []
    if opts.fold_bn:
        try:
            pairs = _plan(net, x)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # the user's network will say it again
            log.info("featvis fast path: probing %s failed (%s); running it as it is", type(net).__name__, e)
            return _Entry(None, opts)
        if pairs is None:
            return _Entry(None, opts)
    mods = dict(net.named_modules())
    if not pairs:
        return _Entry(net if opts.channels_last or opts.autocast else None, opts, 0, modules)
    copy, containers = _folded_copy(net, mods, pairs, opts.channels_last)
    watched, trainable = [], []
    for module in [mods[n] for pair in pairs for n in pair] + [mods[n] for n in containers]:
        for owner in (module._parameters, module._buffers):
            for key, t in owner.items():
                if t is not None:
                    watched.append((owner, key, t, t.data_ptr(), t._version))
    for conv_name, bn_name in pairs:
        trainable += [p for p in (*mods[conv_name].parameters(), *mods[bn_name].parameters())]
    snapshots = tuple((mods[n], tuple(map(id, mods[n].__dict__.values()))) for n in containers if n)
    return _Entry(copy, opts, len(pairs), modules, tuple(watched), tuple(trainable), snapshots,
                  tuple(map(id, net.__dict__.values())), folded_convs=frozenset(c for c, _ in pairs))


def _plan(net: nn.Module, x: torch.Tensor) -> list[tuple[str, str]] | None:
    """The (conv, BatchNorm) pairs to fold: the BatchNorm reads the conv's output and nothing else does, each
    module runs once. Found by one traced forward of the first image; checked by comparing the folded copy's
    logits with the network's on it (None when they differ: run the user's network)."""
    from featvis.layers import trace_calls

    with torch.inference_mode(False), torch.enable_grad():
        probe = x[:1].detach().clone().requires_grad_(True)
        calls, out = trace_calls(net, probe, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return None
        consumers = _consumers(out.grad_fn)
        runs: dict[int, int] = {}
        for c in calls:
            runs[id(c.module)] = runs.get(id(c.module), 0) + 1
        made_by = {id(c.output): c for c in calls if isinstance(c.module, nn.Conv2d)}
        pairs = []
        for c in calls:
            conv = made_by.get(id(c.input)) if isinstance(c.module, nn.modules.batchnorm._BatchNorm) else None
            if conv is None or conv.output is not c.input or runs[id(c.module)] != 1 or runs[id(conv.module)] != 1:
                continue
            if _foldable(conv.module, c.module) and consumers.get(c.input.grad_fn, 0) == 1:
                pairs.append((conv.name, c.name))
        if pairs:
            copy, _ = _folded_copy(net, dict(net.named_modules()), pairs, channels_last=False)
            with torch.no_grad():
                err = (copy(probe) - out).abs().max()
                scale = out.abs().max().clamp_min(1e-6)
            if not bool(err <= PROBE_RTOL * scale):
                log.info("featvis fast path: folding BatchNorm changes %s's logits by %.3g; running it as it is",
                         type(net).__name__, float(err))
                return None
    return pairs


def _consumers(output_fn) -> dict:
    """How many autograd nodes read each node's output, over the graph that produced `output_fn`."""
    counts: dict = {}
    stack, seen = [output_fn], {output_fn}
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            counts[nxt] = counts.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    conv_ok = (type(conv).forward is nn.Conv2d.forward or type(conv).__name__ in SAME_PADDING_CONVS) \
        and conv.weight.dim() == 4 and conv.weight.shape[0] == bn.num_features
    bn_ok = type(bn).forward is nn.modules.batchnorm._BatchNorm.forward and bn.track_running_stats \
        and bn.running_mean is not None and bn.running_var is not None
    return conv_ok and bn_ok


def _folded_copy(net: nn.Module, mods: dict[str, nn.Module], pairs: list[tuple[str, str]], channels_last: bool
                 ) -> tuple[nn.Module, list[str]]:
    """A copy of `net` with each pair's conv folded and BatchNorm replaced by Identity; every other module is the
    user's own. Returns (the copy, the names of the containers it duplicated, root "" first)."""
    replaced: dict[str, nn.Module] = {}
    for conv_name, bn_name in pairs:
        replaced[conv_name] = _fold(mods[conv_name], mods[bn_name], channels_last)
        replaced[bn_name] = nn.Identity()
    containers = sorted({".".join(n.split(".")[:i]) for n in replaced for i in range(n.count(".") + 1)},
                        key=lambda n: (n.count("."), n) if n else (-1, ""))
    copies = {n: _shallow(mods[n]) for n in containers}
    for name, new in copies.items():
        for child in list(new._modules):
            full = f"{name}.{child}" if name else child
            if full in copies:
                new._modules[child] = copies[full]
            elif full in replaced:
                new._modules[child] = replaced[full]
    return copies[""], containers


def _shallow(m: nn.Module) -> nn.Module:
    """A new module object of m's class sharing m's attributes, with its own child/parameter/buffer dicts and no
    hooks (the user's hook dicts stay the user's)."""
    new = type(m).__new__(type(m))
    state = dict(m.__dict__)
    for k, v in m.__dict__.items():
        if k in ("_modules", "_parameters", "_buffers"):
            state[k] = type(v)(v)
        elif "hooks" in k and isinstance(v, dict):
            state[k] = type(v)()
        elif isinstance(v, set):
            state[k] = set(v)
    new.__dict__.update(state)
    return new


def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm, channels_last: bool) -> nn.Module:
    """conv followed by eval-mode BatchNorm as one conv (computed in float64, stored in the conv's dtype)."""
    with torch.no_grad():
        w = conv.weight.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(bn.running_var, dtype=torch.float64)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        weight = (w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
        if channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        new_bias = (beta + (bias - bn.running_mean.double()) * scale).to(conv.weight.dtype)
    if type(conv).__name__ in SAME_PADDING_CONVS and type(conv).__name__ != "Conv2dStaticSamePadding":
        return _SameConv2d(weight, new_bias, conv.stride, conv.dilation, conv.groups)
    folded = _shallow(conv)
    folded._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    folded._parameters["bias"] = nn.Parameter(new_bias, requires_grad=False)
    return folded


class _SameConv2d(nn.Module):
    """A folded convolution with TensorFlow's dynamic "same" padding, as `Conv2dDynamicSamePadding` and timm's
    `Conv2dSame` compute it: pad max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0), the smaller half before. At stride 1 the
    two halves are equal ((k − 1)·d even) for every input size, so the conv pads itself: no padded copy of the
    activations forward, and none of its gradient backward (the largest non-conv cost in Lite0's profile)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride, dilation, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        spans = [(k - 1) * d for k, d in zip(weight.shape[-2:], self.dilation, strict=True)]
        self.padding = tuple(p // 2 for p in spans) if self.stride == (1, 1) and all(p % 2 == 0 for p in spans) \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding is not None:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        pads = []
        for i, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride),
                              reversed(self.dilation), strict=True):
            p = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
            pads += [p // 2, p - p // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # e.g. stride 2 on an odd size: the conv pads itself
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
