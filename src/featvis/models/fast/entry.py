"""A network's fast copy for one set of options (`Entry`), how it is built, and how it runs."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from featvis.models.fast import _compat, serving
from featvis.models.fast.fold import folded_copy
from featvis.models.fast.kernels import _ChannelsLast
from featvis.models.fast.options import AUTOCASTS, COMPILE_AFTER_CALLS, FastOptions
from featvis.models.fast.plan import plan

log = logging.getLogger("featvis.models.fast")

MIN_CONVS = 8  # smaller networks gain nothing from a copy (and the tiny analytic test models stay bit-exact)
_CALLS = threading.Lock()  # guards Entry.calls / Entry.compiled: threads share a copy


@dataclass
class Entry:
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
    unlike: frozenset = frozenset()  # layers whose output differs in the copy: served by the user's network
    clamped: frozenset = frozenset()  # of those, BatchNorms whose conv applies the ReLU6 (the unfused copy serves)
    fused: int = 0  # convolutions that apply their ReLU6 themselves
    private: int = 0  # of those, the ones whose backward masks the incoming gradient in place
    problem: tuple[str, str] | None = None  # (kind, message): why the copy does less than it could, logged once
    calls: dict = field(default_factory=dict)  # (shape, dtype, device, grad mode) → calls, for `compile`
    compiled: object = None  # torch.compile(net), made at the first hot shape; False after a failed compile

    def fresh(self, net: nn.Module, modules: list) -> bool:
        if self.modules != modules or (self.root_ids and tuple(map(id, net.__dict__.values())) != self.root_ids):
            return False
        for owner, key, t, ptr, version in self.watched:
            if owner.get(key) is not t or t.data_ptr() != ptr or _compat.version(t) != version:
                return False
        return all(tuple(map(id, m.__dict__.values())) == ids for m, ids in self.containers)

    def usable(self) -> bool:
        """The copy may run now: it exists, and no folded parameter needs a gradient."""
        return self.net is not None and not (torch.is_grad_enabled() and any(p.requires_grad for p in self.trainable))

    def __call__(self, x: torch.Tensor, compile: bool = True) -> torch.Tensor:
        assert self.net is not None
        if self.options.channels_last and not x.is_contiguous(memory_format=torch.channels_last):
            x = _ChannelsLast.apply(x)
        net = self._compiled(x) if self.options.compile and compile else self.net
        if net is self.net:
            return self._run(net, x)
        try:
            return self._run(net, x)
        except Exception as e:  # a compiler that cannot run here (no C compiler, no Triton): the copy runs as is
            log.warning("featvis fast path: torch.compile failed (%s); continuing without it", e)
            self.compiled = False
            return self._run(self.net, x)

    def serve(self, x: torch.Tensor, requests: tuple[serving.Request, ...], modules: dict[str, nn.Module]
              ) -> torch.Tensor:
        """Run the copy with `requests`' hooks on its modules (named `modules`), their outputs shown to the hooks
        in the caller's dtype and layout; never compiled (hooks would recompile it)."""
        dtype = x.dtype if self.options.autocast else None
        nchw = self.options.channels_last and not x.is_contiguous(memory_format=torch.channels_last)
        with serving.serving(requests), contextlib.ExitStack() as attached:
            for r in requests:
                attached.enter_context(r.attach(modules, dtype, nchw))
            return self(x, compile=False)

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
        with _CALLS:
            n = self.calls[key] = self.calls.get(key, 0) + 1
            if n <= COMPILE_AFTER_CALLS or self.compiled is False:
                return self.net
            if self.compiled is None:
                self.compiled = torch.compile(self.net, dynamic=False)
            return self.compiled


def _autocast_supported(device: torch.device, dtype: torch.dtype) -> bool:
    if dtype != torch.bfloat16:
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _compat.cpu_bf16_supported()
    return False


def build(net: nn.Module, x: torch.Tensor, opts: FastOptions, modules: list) -> Entry:
    """The copy of `net` for `opts`, planned on the first image of `x` (an entry with no copy where none runs)."""
    def root_ids() -> tuple:  # read after planning: a forward may set attributes on the root
        return tuple(map(id, net.__dict__.values()))

    convs = len({id(m) for m in modules if isinstance(m, nn.Conv2d)})
    if convs < MIN_CONVS or isinstance(net, torch.jit.ScriptModule):
        return Entry(None, opts, modules=modules, root_ids=root_ids())  # kept while the network's modules stay
    pairs: list[tuple[str, str]] = []
    fused: dict[str, str] = {}
    private: set[str] = set()
    problem = None
    if opts.fold_bn:
        fuse = opts.fuse_relu6 and opts.channels_last and not opts.autocast and not opts.compile \
            and x.device.type == "cpu" and x.dtype == torch.float32 and _compat.fused_conv_available()
        try:
            found = plan(net, x, fuse)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # the user's network will say it again
            # not kept (no modules): the next call, maybe on other images, plans again (MAX_BUILDS times at most)
            return Entry(None, opts, problem=("probe", f"probing it failed ({e}); running it as it is"))
        if found is None:
            return Entry(None, opts, modules=modules, root_ids=root_ids())  # its output is not a tensor with a gradient
        if found.problem and not found.pairs:  # the folded copy's logits differ: run the user's network
            return Entry(None, opts, modules=modules, root_ids=root_ids(), problem=("mismatch", found.problem))
        pairs, fused, private = found.pairs, found.fused, found.private
        problem = ("gradient", found.problem) if found.problem else None
    mods = dict(net.named_modules())
    if not pairs:
        return Entry(net if opts.channels_last or opts.autocast else None, opts, 0, modules, problem=problem)
    copy, containers = folded_copy(net, mods, pairs, opts.channels_last, fused, private)
    watched = [(owner, key, t, t.data_ptr(), _compat.version(t))
               for module in [mods[n] for pair in pairs for n in pair] + [mods[n] for n in containers]
               for owner, key, t in _compat.tensor_slots(module)]
    trainable = [p for conv_name, bn_name in pairs for p in (*mods[conv_name].parameters(),
                                                             *mods[bn_name].parameters())]
    snapshots = tuple((mods[n], tuple(map(id, mods[n].__dict__.values()))) for n in containers if n)
    # Layers whose output the copy computes differently: a folded conv's is its BatchNorm's; a BatchNorm whose conv
    # applies the ReLU6 gives the ReLU6's.
    clamped = frozenset(b for c, b in pairs if c in fused)
    return Entry(copy, opts, len(pairs), modules, tuple(watched), tuple(trainable), snapshots, root_ids(),
                 unlike=frozenset(c for c, _ in pairs) | clamped, clamped=clamped, fused=len(fused),
                 private=len(private), problem=problem)
