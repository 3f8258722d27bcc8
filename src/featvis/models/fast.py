"""The fast path: a separate inference copy of a classifier's network, used by `Classifier.forward` whenever nothing
could tell the difference (issue 17).

Every gradient method costs about one forward+backward of the network (benchmarks/floor.py), so that pass is the
one to make fast. The copy differs from the user's network in these ways, all exact up to float rounding:

- BatchNorm folded into the convolution that feeds it. In eval mode y = γ(conv(x) − μ)/√(σ² + ε) + β is one
  convolution with weights w·γ/√(σ² + ε) and bias β + (b − μ)·γ/√(σ² + ε): one pass over every activation less,
  forward and backward. timm's BatchNormAct2d (BatchNorm and activation in one module) folds the same way and
  keeps its activation.
- channels-last activations (NHWC), the layout oneDNN's depthwise and 1×1 convolutions run fastest in; the input
  gradient comes back in the caller's layout.
- ReLU6 fused into the folded convolution before it (oneDNN post-op) where the BatchNorm's output feeds only that
  ReLU6: the convolution writes clamped values, and the ReLU6 module passes them through (relu6 is idempotent). The
  backward masks the gradient where 0 < y < 6, as ReLU6's own backward does, in place where the gradient is a new
  tensor only a convolution's backward made.
- TensorFlow "same" padding without a padded copy: at stride 1 the convolution pads itself, and a stride-2 depthwise
  convolution whose padding is one larger after than before runs a kernel one tap wider (a zero tap) instead.

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
    # A folded conv whose BatchNorm output only feeds a ReLU6 applies the ReLU6 as a oneDNN post-op (CPU float32,
    # with channels_last): one pass over those activations less forward. Exact (the same conv, then the same clamp).
    fuse_relu6: bool = True
    autocast: str | None = None  # "bf16": bfloat16 autocast (AMX/AVX-512-BF16 CPUs, Ampere+ GPUs)
    # torch.compile (inductor) for an input shape once it has run COMPILE_AFTER_CALLS times (a loop: render steps,
    # attack steps, IG/SmoothGrad chunks); shorter calls never pay the compile time. Opt-in: see benchmarks/floor.py
    compile: bool = False


def options(clf: nn.Module) -> FastOptions | None:
    """The fast-path options in force for `clf`: its `fast` attribute, else `FEATVIS_FAST`; None when off.

    `FEATVIS_FAST` is read at each call: "0"/"off" disables, "bf16" adds bfloat16 autocast, "compile" compiles
    loops, "nofold", "nofuse" and "nchw" drop one transform (comma-separated, e.g. "bf16,compile").
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
                       fuse_relu6="nofuse" not in words,
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
    unlike: frozenset = frozenset()  # names of layers whose output differs in the copy (a tap runs the user's net)
    fused: int = 0  # convolutions that apply their ReLU6 themselves
    private: int = 0  # of those, the ones whose backward masks the incoming gradient in place
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
        # Built outside inference mode even when the first call is inside it (`with torch.inference_mode(): clf(x)`,
        # as torchvision and timm document prediction): a folded weight made there is an inference tensor, and every
        # later gradient through the copy would fail with "Inference tensors cannot be saved for backward".
        with torch.inference_mode(False):
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
    if tap[1] in entry.unlike:  # its output differs in the copy (BatchNorm or ReLU6 applied): the user's network runs
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
    module, sink = _named(net).get(tap[1]) or _named(net, fresh=True).get(tap[1]), tap[2]
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


def _named(net: nn.Module, fresh: bool = False) -> dict[str, nn.Module]:
    """net's modules by name, cached (`fresh`: look again, for a module added since)."""
    named = None if fresh else _NAMED.get(net)
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
            "folded": entry.folded if entry else 0, "fused": entry.fused if entry else 0,
            "private": entry.private if entry else 0, "options": opts}


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
    fused: dict[str, str] = {}
    private: set[str] = set()
    if opts.fold_bn:
        fuse = opts.fuse_relu6 and opts.channels_last and not opts.autocast and not opts.compile \
            and x.device.type == "cpu" and x.dtype == torch.float32 and _FUSABLE
        try:
            plan = _plan(net, x, fuse)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # the user's network will say it again
            log.info("featvis fast path: probing %s failed (%s); running it as it is", type(net).__name__, e)
            return _Entry(None, opts)
        if plan is None:
            return _Entry(None, opts)
        pairs, fused, private = plan
    mods = dict(net.named_modules())
    if not pairs:
        return _Entry(net if opts.channels_last or opts.autocast else None, opts, 0, modules)
    copy, containers = _folded_copy(net, mods, pairs, opts.channels_last, fused, private)
    watched, trainable = [], []
    for module in [mods[n] for pair in pairs for n in pair] + [mods[n] for n in containers]:
        for owner in (module._parameters, module._buffers):
            for key, t in owner.items():
                if t is not None:
                    watched.append((owner, key, t, t.data_ptr(), t._version))
    for conv_name, bn_name in pairs:
        trainable += [p for p in (*mods[conv_name].parameters(), *mods[bn_name].parameters())]
    snapshots = tuple((mods[n], tuple(map(id, mods[n].__dict__.values()))) for n in containers if n)
    # Layers whose output the copy computes differently: a folded conv's is its BatchNorm's; a BatchNorm whose conv
    # applies the ReLU6 gives the ReLU6's.
    unlike = frozenset(c for c, _ in pairs) | frozenset(b for c, b in pairs if c in fused)
    return _Entry(copy, opts, len(pairs), modules, tuple(watched), tuple(trainable), snapshots,
                  tuple(map(id, net.__dict__.values())), unlike=unlike, fused=len(fused),
                  private=len(private))


def _plan(net: nn.Module, x: torch.Tensor, fuse: bool = False
          ) -> tuple[list[tuple[str, str]], dict[str, str], set[str]] | None:
    """The (conv, BatchNorm) pairs to fold: the BatchNorm reads the conv's output and nothing else does, each
    module runs once. With `fuse`, also the folded convs whose BatchNorm output goes to a ReLU6 and nowhere else
    (conv name → ReLU6 module name): they apply the ReLU6 themselves (oneDNN post-op). Found by one traced forward
    of the first image; checked by comparing the copy's logits and input gradient with the network's on it (None
    when they differ: run the user's network)."""
    from featvis.layers import trace_calls

    with torch.inference_mode(False), torch.enable_grad():
        probe = x[:1].detach().clone().requires_grad_(True)
        types = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Hardtanh)
        calls, out = trace_calls(net, probe, types)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return None
        readers = _readers(out.grad_fn)
        runs: dict[int, int] = {}
        for c in calls:
            runs[id(c.module)] = runs.get(id(c.module), 0) + 1
        made_by = {id(c.output): c for c in calls if isinstance(c.module, nn.Conv2d)}
        relu_of = {id(c.input): c for c in calls if _is_relu6(c.module)}
        pairs, fused, private = [], {}, set()
        for c in calls:
            conv = made_by.get(id(c.input)) if isinstance(c.module, nn.modules.batchnorm._BatchNorm) else None
            if conv is None or conv.output is not c.input or runs[id(c.module)] != 1 or runs[id(conv.module)] != 1:
                continue
            if _foldable(conv.module, c.module) and len(readers.get(c.input.grad_fn, ())) == 1:
                pairs.append((conv.name, c.name))
                if not fuse or not _fusable_conv(conv.module):
                    continue
                if _bn_act(c.module):  # timm's BatchNorm + activation in one module: its ReLU6 is its own
                    relu = c if _is_relu6(c.module.act, inplace_ok=True) else None
                else:
                    relu = relu_of.get(id(c.output))
                    if relu is None or relu.input is not c.output or not isinstance(c.output, torch.Tensor) \
                            or len(readers.get(c.output.grad_fn, ())) != 1:
                        relu = None
                if relu is not None:
                    fused[conv.name] = relu.name
                    if _conv_reads_only(readers, relu.output):
                        private.add(conv.name)
        if pairs:
            mods = dict(net.named_modules())
            copy, _ = _folded_copy(net, mods, pairs, bool(fused), fused, private)
            got = copy(probe.detach().contiguous(memory_format=torch.channels_last) if fused else probe.detach())
            err = (got.detach() - out.detach()).abs().max()
            scale = out.detach().abs().max().clamp_min(1e-6)
            if not bool(err <= PROBE_RTOL * scale):
                log.info("featvis fast path: folding BatchNorm changes %s's logits by %.3g; running it as it is",
                         type(net).__name__, float(err))
                return None
            if fused and not _fused_gradient_ok(net, _folded_copy(net, mods, pairs, True)[0], copy, probe.detach()):
                log.info("featvis fast path: fused ReLU6 changes %s's gradient; not fusing", type(net).__name__)
                fused, private = {}, set()
    return pairs, fused, private


def _fused_gradient_ok(net: nn.Module, apart: nn.Module, copy: nn.Module, probe: torch.Tensor, side: int = 64
                       ) -> bool:
    """The fused convolutions' backward is featvis's own: the copy's input gradient must match `apart`'s (the same
    folded copy with every ReLU6 apart) within PROBE_RTOL, or within twice what rounding alone moves it (`apart`
    against the user's `net`: in a network with drawn weights a ReLU6 corner flipped by rounding moves gradients by
    more than PROBE_RTOL; a wrong backward moves them by far more). Checked at a batch where the fused call runs
    (FUSE_MIN_BATCH) and, to keep it cheap, on the probe shrunk to `side` px (full size where the network refuses
    that)."""
    small = F.interpolate(probe, size=(min(side, probe.shape[-2]), min(side, probe.shape[-1])), mode="bilinear",
                          align_corners=False, antialias=True)
    for x in (small, probe):
        batch = x.repeat(FUSE_MIN_BATCH, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        try:  # all three at the same batch: oneDNN's kernels, and so the rounding, change with the batch size
            g_net, g_apart, g_copy = (_input_grad_of_first(model, batch) for model in (net, apart, copy))
        except RuntimeError:  # e.g. a fixed input size: try the full-size probe
            continue
        allowed = torch.maximum(PROBE_RTOL * g_apart.abs().sum(), 2 * (g_apart - g_net).abs().sum())
        return bool((g_copy - g_apart).abs().sum() <= allowed.clamp_min(1e-12))
    return False


def _input_grad_of_first(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    b = batch.clone().requires_grad_(True)
    return torch.autograd.grad(model(b)[:1].sum(), b)[0][:1]


def _readers(output_fn) -> dict:
    """The autograd nodes that read each node's output, over the graph that produced `output_fn`."""
    readers: dict = {}
    stack, seen = [output_fn], {output_fn}
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            readers.setdefault(nxt, []).append(fn)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return readers


def _conv_reads_only(readers: dict, t: object) -> bool:
    """`t`'s gradient comes from one convolution's input backward (through a zero-padding at most): a new tensor no
    other node holds, which the fused ReLU6's backward may mask in place."""
    node = t.grad_fn if isinstance(t, torch.Tensor) else None
    for _ in range(2):
        got = readers.get(node, ())
        if len(got) != 1:
            return False
        node = got[0]
        if type(node).__name__ == "ConvolutionBackward0":
            return True
        if type(node).__name__ != "ConstantPadNdBackward0":
            return False
    return False


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    conv_ok = (type(conv).forward is nn.Conv2d.forward or type(conv).__name__ in SAME_PADDING_CONVS) \
        and conv.weight.dim() == 4 and conv.weight.shape[0] == bn.num_features
    bn_ok = (type(bn).forward is nn.modules.batchnorm._BatchNorm.forward or _bn_act(bn)) and bn.track_running_stats \
        and bn.running_mean is not None and bn.running_var is not None
    return conv_ok and bn_ok


def _bn_act(bn: nn.Module) -> bool:
    """timm's BatchNormAct2d: eval-mode BatchNorm, then `drop` (identity in eval), then `act`, in one module."""
    return type(bn).__name__ == "BatchNormAct2d" and isinstance(bn, nn.BatchNorm2d) \
        and isinstance(getattr(bn, "drop", None), (nn.Identity, nn.Dropout)) \
        and isinstance(getattr(bn, "act", None), nn.Module)


class _ActTail(nn.Module):
    """What is left of a BatchNormAct2d whose BatchNorm was folded into the conv before it: its activation, or
    nothing where that conv already applied it (a fused ReLU6)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.drop, self.act = bn.drop, bn.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, _CLAMPED, False) else self.act(self.drop(x))


def _folded_copy(net: nn.Module, mods: dict[str, nn.Module], pairs: list[tuple[str, str]], channels_last: bool,
                 fused: dict[str, str] | None = None, private: set[str] | frozenset = frozenset()
                 ) -> tuple[nn.Module, list[str]]:
    """A copy of `net` with each pair's conv folded and BatchNorm replaced by Identity; every other module is the
    user's own. `fused` convs (name → its ReLU6's name) also apply their ReLU6, and those ReLU6 modules pass a
    tensor that is already clamped through. Returns (the copy, the names of the containers it duplicated, root ""
    first)."""
    replaced: dict[str, nn.Module] = {}
    fused = fused or {}
    for conv_name, bn_name in pairs:
        replaced[conv_name] = _fold(mods[conv_name], mods[bn_name], channels_last)
        if conv_name in fused:
            replaced[conv_name] = _ConvReLU6(replaced[conv_name], conv_name in private)
        replaced[bn_name] = _ActTail(mods[bn_name]) if _bn_act(mods[bn_name]) else nn.Identity()
    for relu_name in set(fused.values()) - {b for _, b in pairs}:  # a BatchNormAct2d's tail skips itself
        replaced[relu_name] = _SkipClamped(mods[relu_name])
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
    activations forward, and none of its gradient backward (the largest non-conv cost in Lite0's profile).

    A stride-2 depthwise conv on an even size pads one more after than before (k = 3: 0 and 1). There it runs a
    kernel one tap larger, the new first tap zero, with the larger half on both sides: the same sums (the zero tap
    adds exact zeros), the same output size, and no padded copy. oneDNN's depthwise kernels take any size: Lite0's
    four stride-2 depthwise convs, batch 8 at 224 px, forward+backward 31.4 → 12.6 ms. A dense conv keeps the padded
    copy: for the 3-channel stem the larger kernel's input backward costs more than the copy (10.1 vs 7.8 ms)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride, dilation, groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        spans = [(k - 1) * d for k, d in zip(weight.shape[-2:], self.dilation, strict=True)]
        self.padding = tuple(p // 2 for p in spans) if self.stride == (1, 1) and all(p % 2 == 0 for p in spans) \
            else None
        self.widen = groups > 1 and self.dilation == (1, 1)
        self._wide: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, padding = self.operands(x)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(input, weight, padding) of the plain convolution that computes this one on `x`."""
        if self.padding is not None:
            return x, self.weight, list(self.padding)
        left, right, top, bottom = self.pads(x)
        if left == right and top == bottom:  # e.g. stride 2 on an odd size: the conv pads itself
            return x, self.weight, [top, left]
        extra = (bottom - top, right - left)
        if self.widen and set(extra) <= {0, 1}:
            return x, self._widened(extra), [bottom, right]
        return F.pad(x, [left, right, top, bottom]), self.weight, [0, 0]

    def _widened(self, extra: tuple[int, int]) -> torch.Tensor:
        """The weight with a zero first row/column added where `extra` says (one more padding after than before)."""
        weight = self._wide.get(extra)
        if weight is None or weight.device != self.weight.device or weight.dtype != self.weight.dtype:
            with torch.inference_mode(False):  # cached: made under inference mode it could never be used in a backward
                weight = F.pad(self.weight.detach(), (extra[1], 0, extra[0], 0))
                if self.weight.is_contiguous(memory_format=torch.channels_last):
                    weight = weight.contiguous(memory_format=torch.channels_last)
            self._wide[extra] = weight
        return weight

    def pads(self, x: torch.Tensor) -> list[int]:
        """F.pad's [left, right, top, bottom] for this input size."""
        pads = []
        for i, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.weight.shape[-2:]), reversed(self.stride),
                              reversed(self.dilation), strict=True):
            p = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
            pads += [p // 2, p - p // 2]
        return pads


_FUSABLE = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()
# Below this batch the fused call is slower than conv + clamp here (Lite0 fwd+bwd, 2 threads: 128 px b1 29.0 vs
# 24.2 ms, b2 21.7 vs 20.1, b4 14.7 vs 14.7; 224 px b1 48.9 vs 45.7, b2 44.9 vs 44.1, b4 31.0 vs 35.1 fused vs not).
FUSE_MIN_BATCH = 4
_CLAMPED = "_featvis_relu6"  # attribute set on a fused convolution's output: its ReLU6 is already applied


def _is_relu6(m: nn.Module, inplace_ok: bool = False) -> bool:
    return isinstance(m, nn.Hardtanh) and type(m).forward is nn.Hardtanh.forward and m.min_val == 0.0 \
        and m.max_val == 6.0 and (inplace_ok or not m.inplace)


def _fusable_conv(conv: nn.Module) -> bool:
    if type(conv).__name__ == "Conv2dStaticSamePadding":
        return isinstance(getattr(conv, "static_padding", None), (nn.ZeroPad2d, nn.Identity)) \
            and not isinstance(conv.padding, str)
    if type(conv).__name__ in SAME_PADDING_CONVS:
        return True
    return type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros" \
        and not isinstance(conv.padding, str)


class _ConvReLU6Fn(torch.autograd.Function):
    """relu6(conv(x) + b) in one oneDNN call (the clamp is a post-op: no separate pass over the activations); the
    backward masks the gradient where 0 < y < 6 and runs the convolution's input backward (weights are frozen).

    With `private` (the gradient arriving here is a new tensor from the next convolution's backward, which nothing
    else reads: `_conv_reads_only`) the mask is applied in place: no new buffer the size of the activations, which
    made the mask cost 1.8× a copy of them."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, private):
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "hardtanh",
                                                    [0.0, 6.0], "")
        ctx.save_for_backward(x, weight, y)
        ctx.conf = (stride, padding, dilation, groups, private)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, private = ctx.conf
        # in place only on a plain CPU tensor: not under create_graph, nor vmap (is_grads_batched), which have no out=
        if private and grad.stride() == y.stride() and not torch.is_grad_enabled() \
                and torch._C._dispatch_keys(grad).has(torch._C.DispatchKey.CPU):
            g = torch.ops.aten.hardtanh_backward.grad_input(grad, y, 0.0, 6.0, grad_input=grad)
        else:
            g = torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)
        gx = torch.ops.aten.convolution_backward(g, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                                                 [True, False, False])[0]
        return gx, None, None, None, None, None, None, None


class _ConvReLU6(nn.Module):
    """A folded convolution followed by its ReLU6, fused on CPU float32 from batch FUSE_MIN_BATCH (else run as the
    two ops)."""

    def __init__(self, conv: nn.Module, private: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.private = private  # the output's gradient may be masked in place (see _ConvReLU6Fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.shape[0] < FUSE_MIN_BATCH or x.device.type != "cpu" or x.dtype != torch.float32 \
                or conv.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            y = F.hardtanh(conv(x), 0.0, 6.0)
        else:
            x, weight, padding = _operands(conv, x)
            y = _ConvReLU6Fn.apply(x, weight, conv.bias, list(conv.stride), padding, list(conv.dilation), conv.groups,
                                   self.private)
        setattr(y, _CLAMPED, True)
        return y


def _operands(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(input, weight, padding) of the plain convolution that computes `conv` (a folded one) on `x`."""
    if isinstance(conv, _SameConv2d):
        return conv.operands(x)
    if hasattr(conv, "static_padding"):
        x = conv.static_padding(x)
    return x, conv.weight, list(conv.padding)


class _SkipClamped(nn.Module):
    """A ReLU6 that passes a fused convolution's output through (ReLU6 is idempotent: relu6(relu6(z)) = relu6(z))."""

    def __init__(self, relu: nn.Module) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if getattr(x, _CLAMPED, False) else self.relu(x)
