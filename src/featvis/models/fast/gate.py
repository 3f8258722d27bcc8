"""The gate: whether a classifier's forward may run on its fast copy, the cache of copies, and its switches.

The copy runs only when the user's network would compute the same thing: every module in eval mode, no hooks but
featvis's own offered layer hooks (`serving`), no swapped forward, no folded parameter that needs a gradient, no
tracing, compiling or functorch transform. It is rebuilt when a tensor it was made from is replaced, moved or
changed in place. Every cache here is shared by threads (a web server's, a notebook's) and guarded by one lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref

import torch
from torch import nn

from featvis.models.fast import _compat, serving
from featvis.models.fast.entry import Entry, build
from featvis.models.fast.options import options

log = logging.getLogger("featvis.models.fast")

MAX_BUILDS = 4  # a network whose weights keep changing (training between calls) runs as it is after this many
_FLOATS = (torch.float32, torch.float64)

# One re-entrant lock for the caches below (re-entrant: building a copy runs the user's network, which may hold a
# Classifier of its own). Builds happen under it, so two threads never build the same copy twice.
_LOCK = threading.RLock()
# user's network → {options: entry}. Weak keys: the copy lives as long as the network, never longer. (The plan is
# not shared between networks of one structure: a forward's dataflow can hang on attributes, see test_fast.py.)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NAMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a copy → its modules by name
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # user's network → kinds of problem logged
_MISSING_LOGGED: list[bool] = []  # a missing private torch API is logged once per process


def fast_logits(clf: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The network's output on normalized images `x` from its fast copy, or None when the user's network must run.

    Called by `Classifier.forward`; `x` is already normalized. Layer hooks offered by featvis.layers are served on
    the copy where it computes those layers' outputs as the user's network does: a BatchNorm whose conv applies its
    ReLU6 in the copy is served by the copy built without that fusion; a folded convolution by the user's network.
    """
    opts = options(clf)
    if opts is None or x.dim() != 4 or x.dtype not in _FLOATS or torch.jit.is_tracing() \
            or torch.compiler.is_compiling() or not _apis_ready() or _compat.is_functorch_wrapped(x):
        return None
    net = clf.net
    offers = serving.offers(net)
    modules = _plain_modules(net, frozenset().union(*(r.owned for r in offers)))
    if modules is None:
        return None
    entry = _entry(net, x, opts, modules, offers)
    if not entry.usable():
        return None
    if not offers:
        return entry(x)
    layers = {name for r in offers for name in r.layers}
    if layers & entry.unlike:
        if not opts.fuse_relu6 or not layers & entry.unlike <= entry.clamped:
            return None
        entry = _entry(net, x, dataclasses.replace(opts, fuse_relu6=False), modules, offers)
        if not entry.usable() or layers & entry.unlike:
            return None
    named = _named(entry.net)
    if not layers <= named.keys():
        named = _named(entry.net, fresh=True)  # a module added since (the copy may be the user's network itself)
        if not layers <= named.keys():
            return None
    return entry.serve(x, offers, named)


def user_logits(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The user's network on normalized `x` (when `fast_logits` said None); offered hooks sit on its modules."""
    return clf.net(x)


def refresh(clf: nn.Module) -> None:
    """Forget `clf`'s fast copy (it is rebuilt at the next call): needed only after editing weights via `.data`."""
    with _LOCK:
        _CACHE.pop(getattr(clf, "net", clf), None)


def status(clf: nn.Module) -> dict[str, object]:
    """What the fast path does for `clf` now (after at least one forward): for tests, benchmarks and reports."""
    opts = options(clf)
    with _LOCK:
        entry = _CACHE.get(clf.net, {}).get(opts) if opts is not None else None
    return {"enabled": opts is not None, "active": entry is not None and entry.net is not None,
            "folded": entry.folded if entry else 0, "fused": entry.fused if entry else 0,
            "private": entry.private if entry else 0, "options": opts}


def _entry(net: nn.Module, x: torch.Tensor, opts, modules: list, offers: tuple) -> Entry:
    """The cached copy of `net` for `opts`, (re)built when it is missing or stale."""
    with _LOCK:
        per_net = _CACHE.get(net)
        if per_net is None:
            per_net = _CACHE[net] = {}
        entry = per_net.get(opts)
        if entry is not None and (entry.builds > MAX_BUILDS or entry.fresh(net, modules)):
            return entry
        builds = 0 if entry is None else entry.builds
        if builds < MAX_BUILDS:
            # Built outside inference mode even when the first call is inside it (`with torch.inference_mode():
            # clf(x)`, as torchvision and timm document prediction): a folded weight made there is an inference
            # tensor, and every later gradient through the copy would fail with "Inference tensors cannot be saved
            # for backward". The offered hooks rest while the planning forwards run.
            with torch.inference_mode(False), serving.serving(offers, attached=False):
                entry = build(net, x, opts, modules)
        else:
            entry = Entry(None, opts, problem=("rebuilt", f"it changed {MAX_BUILDS} times (training between "
                                                          "calls?); running it as it is from now on"))
        entry.builds = builds + 1
        per_net[opts] = entry
        if entry.problem is not None:
            _warn_once(net, *entry.problem)
        return entry


def _warn_once(net: nn.Module, kind: str, message: str) -> None:
    with _LOCK:
        kinds = _WARNED.setdefault(net, set())
        if kind in kinds:
            return
        kinds.add(kind)
    log.warning("featvis fast path: %s: %s (this network runs slower; logged once)", type(net).__name__, message)


def _apis_ready() -> bool:
    """Every essential private torch API is there (else the user's network runs); missing ones are logged once."""
    ready = _compat.ready()
    if not _MISSING_LOGGED:
        gone = _compat.missing()
        with _LOCK:
            if gone and not _MISSING_LOGGED:
                for name in gone:
                    log.warning("%s", _compat.missing_message(name))
            _MISSING_LOGGED.append(True)
    return ready


def _named(copy: nn.Module, fresh: bool = False) -> dict[str, nn.Module]:
    """The copy's modules by name, cached (`fresh`: look again, for a module added since)."""
    with _LOCK:
        named = None if fresh else _NAMED.get(copy)
        if named is None:
            named = _NAMED[copy] = dict(copy.named_modules())
        return named


def _plain_modules(net: nn.Module, owned: frozenset[int] = frozenset()) -> list | None:
    """The network's modules (root excluded) if it runs as plain eval-mode code: no hooks (but the offered forward
    hooks whose handle ids are `owned`), no swapped forward."""
    if _compat.global_module_hooks():
        return None
    modules = [net]
    i = 0
    while i < len(modules):  # breadth first, no names, no memo (benchmarks/results/fast_path_timings.md)
        children = _compat.plain_children(modules[i], owned)
        if children is None:
            return None
        modules.extend(children)
        i += 1
    return modules[1:]
