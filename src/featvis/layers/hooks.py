"""Layer hooks: `capture` records layers' activations (and gradients), `tap` one layer's detached outputs,
`replace_output` puts given activations in place of a layer's output.

This is where featvis makes hooks. Every hook lives inside a `with` block and is removed in `finally`. Gradients
are captured with *tensor* hooks set from a forward hook — never module backward hooks, which break on in-place
ReLU and on activation modules reused in several places (captum #156, #199, #914).

The hooks sit on the user's modules for the whole block (so any forward that runs a layer is seen) and are offered
to the fast copy (`featvis.models.fast.serving`): when a classifier's forward runs on the copy, the same hooks are
attached to the copy's modules for that forward, see its outputs in the layout and dtype the user's network gives,
and the hooks on the user's modules rest (issue 23).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.layers.lookup import find_layer, root
from featvis.layers.tokens import TokenLayout, to_spatial, token_layout
from featvis.models.fast import plan, serving
from featvis.models.fast.plan import Call
from featvis.models.fast.present import Hook, as_users, with_first
from featvis.models.fast.serving import first_tensor


class _Stop(BaseException):
    """Raised by a stopping hook once its layers have run, and caught by the `with` that set it (`owner`): the rest
    of the forward is skipped. A BaseException, so that no `except Exception` in a network's forward swallows it."""

    def __init__(self, owner: object) -> None:
        super().__init__()
        self.owner = owner


@contextlib.contextmanager
def hooked(model: nn.Module, found: Sequence[tuple[str, nn.Module]], make_hook: Callable[[str], Hook]
           ) -> Iterator[None]:
    """`make_hook(name)` as a forward hook on each found layer for the duration, on the user's module and, for
    a forward that runs on the fast copy, on the copy's module instead (see the module docstring)."""
    request = serving.Request(root(model), tuple(name for name, _ in found), frozenset(), None)  # type: ignore[arg-type]

    def attach(modules: Mapping[str, nn.Module], dtype: torch.dtype | None, nchw: bool):
        return _attached(request.layers, make_hook, modules, dtype, nchw)

    request.attach = attach
    handles = []
    try:
        for name, module in found:
            handles.append(module.register_forward_hook(_unless_resting(make_hook(name), request)))
        request.owned = frozenset(h.id for h in handles)
        with serving.offered(request):
            yield
    finally:
        for h in handles:
            h.remove()


def _unless_resting(hook: Hook, request: serving.Request) -> Hook:
    def run(module, inputs, output):
        return None if request.resting() else hook(module, inputs, output)

    return run


@contextlib.contextmanager
def _attached(names: Sequence[str], make_hook: Callable[[str], Hook], modules: Mapping[str, nn.Module],
              dtype: torch.dtype | None, nchw: bool) -> Iterator[None]:
    """The hooks on the fast copy's `modules` for one forward of this thread, shown the user's layout and dtype."""
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(as_users(make_hook(name), dtype, nchw)))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Capture:
    """What `capture` recorded: every call's activation (and gradient) per layer name."""

    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grad_calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    layout: TokenLayout | None = None  # the model's token layout, for transformers

    def act(self, name: str | None = None) -> torch.Tensor:
        """The activation of the layer's last call, as [B, C, H, W] when it is spatial or token-shaped."""
        return self.spatial(self._last(self.calls, name, "activation"))

    def grad(self, name: str | None = None) -> torch.Tensor:
        """The gradient with respect to that activation (after a backward pass), same shape as `act`."""
        return self.spatial(self._last(self.grad_calls, name, "gradient"))

    def spatial(self, t: torch.Tensor) -> torch.Tensor:
        """A captured tensor (or its gradient) as [B, C, H, W], with the model's token layout."""
        return to_spatial(t, self.layout)

    def _last(self, store: dict[str, list[torch.Tensor]], name: str | None, what: str) -> torch.Tensor:
        if name is None:
            if len(store) != 1:
                raise FeatvisError(f"name the layer: {what}s were captured for {sorted(store)}")
            name = next(iter(store))
        if not store.get(name):
            raise FeatvisError(f"no {what} captured for layer {name!r}; did the forward (and backward) pass run?")
        return store[name][-1]


@contextlib.contextmanager
def capture(model: nn.Module, layers: str | Sequence[str], *, grads: bool = False,
            detach: bool = False, as_leaf: bool = False) -> Iterator[Capture]:
    """Record the outputs (and, with `grads`, the output gradients) of named layers while the block runs.

    Downstream layers receive a clone of each captured output, so an in-place op after the layer (ReLU(inplace))
    cannot overwrite what was captured. Hooks are removed on exit, also after an exception: run the backward
    pass inside the block. With `as_leaf`, each captured output is replaced by a detached copy that requires grad:
    differentiate with respect to it, and run the model on inputs that don't require grad, so that no graph is
    recorded before the layer. A Classifier's forward runs on its fast copy where that leaves the layer's output
    unchanged (`featvis.models.fast`), within the fast path's float tolerance of its own network.

    Example:
        >>> with capture(clf, "blocks.10", grads=True) as cap:
        ...     clf(x)[:, 281].sum().backward()
        >>> cap.act(), cap.grad()
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    cap = Capture({name: [] for name, _ in found}, {name: [] for name, _ in found} if grads else {},
                  token_layout(model))
    handles = []  # tensor hooks; all removed on exit (a tensor hook left on the graph would close a
    # Python↔autograd reference cycle that gc cannot collect: the leak of grad-cam #88)

    def make_hook(name: str) -> Hook:
        def hook(_module, _inputs, output):
            out = first_tensor(output)
            if out is None:
                return None
            if detach:
                cap.calls[name].append(out.detach().clone())
                return None
            if as_leaf:
                leaf = out.detach().clone().requires_grad_(True)
                cap.calls[name].append(leaf)
                onward = leaf.clone()  # downstream in-place ops must not touch the leaf itself
                return with_first(output, onward)
            cap.calls[name].append(out)
            if grads and out.requires_grad:
                handles.append(out.register_hook(cap.grad_calls[name].append))
            return with_first(output, out.clone())

        return hook

    try:
        with hooked(model, found, make_hook):
            yield cap
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def tap(model: nn.Module, layer: str, *, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """While the block runs, each forward of `model` records the detached output of its layer `layer` into the
    yielded list, one tensor per call of the layer, as `capture(detach=True)` does. With `stop`, the forward ends
    right after the layer's first call (later layers never run) and the block ends with it: the `with` statement
    absorbs that stop itself, so code after the forward inside the block does not run.

    Example (the layer's activations, and the logits, from one fast forward; then a forward up to blocks.8 only):
        >>> with tap(clf, "blocks.8") as seen:
        ...     logits = clf(x)
        >>> acts = seen[0]
        >>> with tap(clf, "blocks.8", stop=True) as seen:
        ...     clf(x)
    """
    found = [find_layer(model, layer)]
    seen: list[torch.Tensor] = []
    token = object()

    def make_hook(_name: str) -> Hook:
        def hook(_module, _inputs, output):
            out = first_tensor(output)
            if out is not None:
                seen.append(out.detach().clone())
            if stop:
                raise _Stop(token)

        return hook

    try:
        with hooked(model, found, make_hook):
            yield seen
    except _Stop as e:
        if e.owner is not token:
            raise


@contextlib.contextmanager
def replace_output(model: nn.Module, layer: str, value: torch.Tensor, *, call: int = 0) -> Iterator[None]:
    """While the block runs, call number `call` of the layer `layer` (0: its first, counted from the start of the
    block) returns `value` instead of its own output, so the layers after it compute from `value`: the rest of a
    network from a layer's activation, for any network (CRAFT's h where no graph of the tail can be traced). Other
    calls are untouched; run one forward per block. `value` must have the shape of the layer's output there.

    Example (the logits from given activations of blocks.8, on an input of the right batch size):
        >>> with replace_output(clf, "blocks.8", acts):
        ...     logits = clf(torch.zeros(len(acts), 3, 224, 224))
    """
    found = [find_layer(model, layer)]
    seen = [0]

    def make_hook(_name: str) -> Hook:
        def hook(_module, _inputs, output):
            out = first_tensor(output)
            seen[0] += 1
            if out is None or seen[0] != call + 1:
                return None
            if out.shape != value.shape:
                raise FeatvisError(f"replacement for layer {layer!r} has shape {tuple(value.shape)}; the layer "
                                   f"gives {tuple(out.shape)} here: pass activations of that shape")
            return with_first(output, value.to(out.dtype))

        return hook

    with hooked(model, found, make_hook):
        yield


def trace_calls(model: nn.Module, images: torch.Tensor, types: tuple[type, ...] = (nn.Module,)
                ) -> tuple[list[Call], object]:
    """Run `model(images)` once, as it is (mode and gradient mode untouched), recording every call of a layer of
    the given types in the order the calls finished (`featvis.models.fast.plan.trace_calls`, which plans the fast
    copy with it). The hooks are removed on return.

    Returns:
        (the calls, the model's output).
    """
    return plan.trace_calls(model, images, types, net=root(model))
