"""Every private PyTorch API the fast path uses, in one place (issue 23).

The fast copy leans on pieces of PyTorch that carry no stability promise: a oneDNN kernel, a functorch query, the
version counters, nn.Module's hook and child dictionaries, autograd's node classes. Each is reached through this
module only, resolved lazily (nothing is probed at import) and listed in `APIS`, so that
tests/models/test_fast_compat.py names the one that went missing, with the torch version, instead of the fast path
silently running slower. At run time a missing piece never breaks a forward: an essential one (`ready()` is False)
makes the user's network run, an optional one turns its optimization off; either way `missing()` says which, and
the gate logs it once at WARNING.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

TESTED_TORCH = ">=2.13,<2.15"  # the range pyproject.toml pins: the main suite runs 2.13.0, the integration venv 2.14.1


@dataclass(frozen=True)
class API:
    """A private PyTorch API: its name as PyTorch spells it, what featvis uses it for, how to reach it."""

    name: str
    use: str
    resolve: Callable[[], object]
    essential: bool  # without it the copy cannot tell whether it may run: the user's network runs instead


def _module_attr(name: str) -> Callable[[], object]:
    def resolve() -> object:
        if name not in nn.Module().__dict__:
            raise AttributeError(f"nn.Module instances have no {name!r}")
        return name

    return resolve


def _global_hooks() -> tuple[dict, ...]:
    g = torch.nn.modules.module
    return (g._global_forward_hooks, g._global_forward_pre_hooks, g._global_backward_hooks,
            g._global_backward_pre_hooks)


def _node_type(make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], type]:
    def resolve() -> type:
        with torch.inference_mode(False), torch.enable_grad():
            return type(make(torch.zeros(1, 1, 3, 3, requires_grad=True)).grad_fn)

    return resolve


APIS: tuple[API, ...] = (
    API("torch._C._functorch.is_functorch_wrapped_tensor", "no copy under vmap/grad transforms",
        lambda: torch._C._functorch.is_functorch_wrapped_tensor, True),
    API("torch.Tensor._version", "noticing in-place edits of the weights a copy was made from",
        lambda: torch.zeros(1)._version, True),
    API("torch.nn.modules.module._global_*_hooks", "no copy while a global module hook is set", _global_hooks, True),
    *(API(f"nn.Module.{name}", "no copy while a module has hooks; hook-free shallow copies of containers",
          _module_attr(name), True)
      for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_modules",
                   "_parameters", "_buffers")),
    API("torch.nn.modules.batchnorm._BatchNorm", "recognising BatchNorm layers (1d/2d/3d, SyncBatchNorm) to fold",
        lambda: nn.modules.batchnorm._BatchNorm, True),
    API("torch.ops.mkldnn._convolution_pointwise", "convolution + ReLU6 in one oneDNN call (fuse_relu6)",
        lambda: torch.ops.mkldnn._convolution_pointwise, False),
    API("torch.ops.mkldnn._is_mkldnn_bf16_supported", "whether bf16 autocast is worth it on this CPU",
        lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported, False),
    API("torch.ops.aten.hardtanh_backward", "the fused ReLU6's gradient mask",
        lambda: torch.ops.aten.hardtanh_backward.default, False),
    API("torch.ops.aten.hardtanh_backward.grad_input", "the fused ReLU6's gradient mask written in place",
        lambda: torch.ops.aten.hardtanh_backward.grad_input, False),
    API("torch.ops.aten.convolution_backward", "the fused convolution's input gradient",
        lambda: torch.ops.aten.convolution_backward, False),
    API("torch._C._dispatch_keys / DispatchKey.CPU", "an in-place mask only on a plain CPU tensor (not a batched "
        "gradient of is_grads_batched)",
        lambda: (torch._C._dispatch_keys, torch._C.DispatchKey.CPU), False),
    API("autograd node ConvolutionBackward0", "which gradients a convolution's backward alone makes",
        _node_type(lambda x: torch.nn.functional.conv2d(x, torch.ones(1, 1, 1, 1))), False),
    API("autograd node ConstantPadNdBackward0", "the same through a zero padding",
        _node_type(lambda x: torch.nn.functional.pad(x, [1, 1, 1, 1])), False),
)
_BY_NAME = {api.name: api for api in APIS}


@functools.cache
def get(name: str) -> object | None:
    """The API called `name` (see `APIS`), or None when this torch has none."""
    try:
        return _BY_NAME[name].resolve()
    except (AttributeError, RuntimeError, TypeError):  # RuntimeError: torch.ops raises it for an unknown op
        return None


@functools.cache
def missing() -> tuple[str, ...]:
    """The APIS this torch lacks."""
    return tuple(api.name for api in APIS if get(api.name) is None)


@functools.cache
def ready() -> bool:
    """Every essential API is here: the copy may run."""
    return all(get(api.name) is not None for api in APIS if api.essential)


def missing_message(name: str) -> str:
    """One line: which API is gone, what it was for, the torch version and the tested range."""
    api = _BY_NAME[name]
    effect = "the fast copy never runs" if api.essential else "that optimization is off"
    return (f"featvis fast path: torch {torch.__version__} has no {api.name} (used for: {api.use}); {effect}. "
            f"featvis is tested with torch{TESTED_TORCH}: install one of those, or update models/fast/_compat.py")


# --- the accessors the fast path calls ---------------------------------------------------------------------------


def is_functorch_wrapped(x: torch.Tensor) -> bool:
    return bool(get("torch._C._functorch.is_functorch_wrapped_tensor")(x))  # type: ignore[misc]


def version(t: torch.Tensor) -> int:
    """t's version counter (bumped by every in-place op, not by edits through `.data`)."""
    return t._version


def global_module_hooks() -> bool:
    """Some global module hook (torch.nn.modules.module.register_module_forward_hook, ...) is set."""
    return any(get("torch.nn.modules.module._global_*_hooks"))  # type: ignore[arg-type]


def plain_children(m: nn.Module, owned: frozenset[int] = frozenset()) -> list[nn.Module] | None:
    """m's child modules if m runs as plain eval-mode code (no hooks but the forward hooks whose handle ids are
    in `owned`, no swapped forward), else None."""
    if m.training or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks or "forward" in m.__dict__:
        return None
    if m._forward_hooks and not (owned and m._forward_hooks.keys() <= owned):
        return None
    return [c for c in m._modules.values() if c is not None]


def tensor_slots(m: nn.Module) -> Iterator[tuple[dict, str, torch.Tensor]]:
    """(owning dict, key, tensor) of m's own parameters and buffers: a replaced tensor shows as `owner[key]`."""
    for owner in (m._parameters, m._buffers):
        for key, t in owner.items():
            if t is not None:
                yield owner, key, t


def child_names(m: nn.Module) -> list[str]:
    """Every name m holds a child module under (a module held under two names is listed twice)."""
    return list(m._modules)


def set_child(m: nn.Module, name: str, child: nn.Module) -> None:
    """m's child `name` is `child`: written into its dict, without setattr's global registration hooks."""
    m._modules[name] = child


def set_parameter(m: nn.Module, name: str, p: nn.Parameter) -> None:
    """m's parameter `name` is `p`: written into its dict, without the global registration hooks."""
    m._parameters[name] = p


def shallow_copy(m: nn.Module) -> nn.Module:
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


def is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def batchnorm_forward() -> Callable:
    """The forward every torch BatchNorm class shares (a subclass that overrides it is not folded)."""
    return nn.modules.batchnorm._BatchNorm.forward


def fused_conv_available() -> bool:
    """oneDNN can run a convolution with a hardtanh post-op here, and its backward can be written (asked at first
    use, never at import)."""
    return all(get(name) is not None for name in ("torch.ops.mkldnn._convolution_pointwise",
                                                   "torch.ops.aten.hardtanh_backward",
                                                   "torch.ops.aten.convolution_backward")) \
        and torch.backends.mkldnn.is_available()


def conv_hardtanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int],
                  stride: list[int], dilation: list[int], groups: int, lo: float, hi: float) -> torch.Tensor:
    """clamp(conv2d(x, weight, bias), lo, hi) in one oneDNN call (the clamp is a post-op)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, "hardtanh",
                                                   [lo, hi], "")


def hardtanh_backward(grad: torch.Tensor, y: torch.Tensor, lo: float, hi: float, *, in_place: bool) -> torch.Tensor:
    """The gradient masked where lo < y < hi; written into `grad` itself where `in_place` and this torch can."""
    if in_place and get("torch.ops.aten.hardtanh_backward.grad_input") is not None:
        return torch.ops.aten.hardtanh_backward.grad_input(grad, y, lo, hi, grad_input=grad)
    return torch.ops.aten.hardtanh_backward(grad, y, lo, hi)


def conv_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                    padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """The input gradient of conv2d(x, weight) (no weight or bias gradient: the copy's weights are frozen)."""
    return torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False, [0, 0],
                                               groups, [True, False, False])[0]


def is_plain_cpu(t: torch.Tensor) -> bool:
    """t is an ordinary CPU tensor (not a batched gradient of `autograd.grad(is_grads_batched=True)`, which has no
    out= variants)."""
    keys = get("torch._C._dispatch_keys / DispatchKey.CPU")
    return keys is not None and keys[0](t).has(keys[1])  # type: ignore[index]


def cpu_bf16_supported() -> bool:
    probe = get("torch.ops.mkldnn._is_mkldnn_bf16_supported")
    return bool(probe()) if probe is not None else False  # type: ignore[operator]


def is_conv_backward(node: object) -> bool:
    kind = get("autograd node ConvolutionBackward0")
    return kind is not None and type(node) is kind


def is_pad_backward(node: object) -> bool:
    kind = get("autograd node ConstantPadNdBackward0")
    return kind is not None and type(node) is kind
