"""Layers: find them by dotted name, capture their activations and gradients, run a model only up to one.

This is the only module that registers hooks. Every hook lives inside a `with` block and is removed in
`finally`. Gradients are captured with *tensor* hooks set from a forward hook — never module backward hooks,
which break on in-place ReLU and on activation modules reused in several places (captum #156, #199, #914).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from featvis.errors import FeatvisError, closest


def root(model: nn.Module) -> nn.Module:
    """The network whose submodules carry the layer names (a Classifier's inner `net`)."""
    from featvis.models.classifier import Classifier

    return model.net if isinstance(model, Classifier) else model


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in root(model).named_modules() if name]


def _strip(name: str) -> str:
    return ".".join(part.lstrip("_") for part in name.split("."))


def layer_label(model: nn.Module, name: str) -> str:
    """The name a person reads and types for the layer `name`: without PyTorch's leading underscores
    (`_blocks.8._bn1` → `blocks.8.bn1`) when that names no other layer. Tables, reports, atlas tiles, figure titles
    and error hints show this one name; `find_layer` accepts it and the PyTorch name alike."""
    return _labels(model).get(name, name)


def _labels(model: nn.Module) -> dict[str, str]:
    """PyTorch name → label for every layer (a stripped name two layers share keeps the PyTorch names)."""
    names = [n for n, _ in root(model).named_modules() if n]
    count: dict[str, int] = {}
    for n in names:
        count[_strip(n)] = count.get(_strip(n), 0) + 1
    return {n: _strip(n) if count[_strip(n)] == 1 else n for n in names}


def find_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The submodule called `name` (dotted PyTorch name; leading underscores optional: `blocks.3` = `_blocks.3`).

    Returns:
        (canonical name, module). Unknown names raise an error listing the closest names.
    """
    modules = dict(root(model).named_modules())
    key = name.strip().removeprefix("net.") if isinstance(name, str) else name
    if not isinstance(key, str) or not key:
        raise FeatvisError(f"layer name must be a non-empty string, got {name!r}")
    if key in modules and key:
        return key, modules[key]
    stripped = [n for n in modules if n and _strip(n) == _strip(key)]
    if len(stripped) == 1:
        return stripped[0], modules[stripped[0]]
    near = ", ".join(closest(key, list(_labels(model).values())))
    raise FeatvisError(f"unknown layer {name!r}; near names: {near} (run `featvis layers` to list all)")


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out its tokens: `prefix` non-patch tokens first (class, distillation,
    register tokens), then the patch grid row by row. `grid` is (rows, cols) when the model fixes it; `readout`
    are the prefix tokens the classifier head reads (empty: it averages the patch tokens)."""

    prefix: int
    grid: tuple[int, int] | None = None
    readout: tuple[int, ...] = (0,)


# Without model metadata, a token tensor [B, N, C] is read as the largest square grid with the rest as prefix
# tokens: that covers a class token, a distillation token and up to 4 register tokens + class (DINOv2-reg, Darcet
# et al. 2024) on a square grid, and leaves other 3-D tensors (1-D convolutions, sequences) alone.
MAX_GUESSED_PREFIX = 8


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The model's own token layout: timm's `num_prefix_tokens` / `patch_embed.grid_size` / `global_pool`, or
    torchvision's VisionTransformer (one class token, image_size // patch_size grid). None if it has neither."""
    net = root(model)
    prefix = getattr(net, "num_prefix_tokens", None)
    if isinstance(prefix, int) and not isinstance(prefix, bool):  # timm VisionTransformer and its relatives
        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        dynamic = getattr(net, "dynamic_img_size", False) or getattr(getattr(net, "patch_embed", None),
                                                                      "dynamic_img_pad", False)
        grid = tuple(int(g) for g in grid) if grid is not None and not dynamic else None
        pool = getattr(net, "global_pool", "token")
        if pool == "token" and prefix > 0:
            readout = (0, 1) if getattr(net, "head_dist", None) is not None else (0,)  # DeiT-distilled averages both
        else:
            readout = ()  # "avg" and friends: the head reads the mean of the patch tokens
        return TokenLayout(prefix, grid, readout)  # type: ignore[arg-type]
    if isinstance(getattr(net, "class_token", None), torch.Tensor) and hasattr(net, "patch_size") \
            and hasattr(net, "image_size"):  # torchvision.models.VisionTransformer
        side = int(net.image_size) // int(net.patch_size)
        return TokenLayout(1, (side, side), (0,))
    return None


def to_spatial(t: torch.Tensor, layout: TokenLayout | nn.Module | None = None) -> torch.Tensor:
    """Feature maps as [B, C, H, W]: transformer tokens [B, prefix + HW, C] are reshaped, prefix tokens dropped.

    Args:
        layout: the model's `TokenLayout` (or the model, to read it from); without it the largest square grid
            is taken, with at most `MAX_GUESSED_PREFIX` tokens before it.
    """
    if t.ndim != 3:
        return t
    if isinstance(layout, nn.Module):
        layout = token_layout(layout)
    b, n, c = t.shape
    if layout is not None:
        # The prefix tokens are there after the patch embedding; its own output has only the grid.
        for prefix in (layout.prefix, 0):
            grid = _grid(n - prefix, layout.grid)
            if grid is not None:
                break
        else:
            return t
    else:
        side = math.isqrt(n)
        prefix, grid = n - side * side, (side, side)
        if side < 2 or prefix > MAX_GUESSED_PREFIX:
            return t
    h, w = grid
    return t[:, prefix:].transpose(1, 2).reshape(b, c, h, w)  # [B, HW, C] -> [B, C, H, W], row-major grid


def _grid(tokens: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    if grid is not None and grid[0] * grid[1] == tokens:
        return grid
    side = math.isqrt(max(tokens, 0))
    return (side, side) if side > 0 and side * side == tokens else None


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


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
    recorded before the layer.

    Example:
        >>> with capture(clf, "blocks.10", grads=True) as cap:
        ...     clf(x)[:, 281].sum().backward()
        >>> cap.act(), cap.grad()
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    cap = Capture({name: [] for name, _ in found}, {name: [] for name, _ in found} if grads else {},
                  token_layout(model))
    handles = []  # module hooks and tensor hooks; all removed on exit (a tensor hook left on the graph would
    # close a Python↔autograd reference cycle that gc cannot collect: the leak of grad-cam #88)

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = _first_tensor(output)
            if out is None:
                return None
            if detach:
                cap.calls[name].append(out.detach().clone())
                return None
            if as_leaf:
                leaf = out.detach().clone().requires_grad_(True)
                cap.calls[name].append(leaf)
                onward = leaf.clone()  # downstream in-place ops must not touch the leaf itself
                return onward if isinstance(output, torch.Tensor) else (onward, *output[1:])
            cap.calls[name].append(out)
            if grads and out.requires_grad:
                handles.append(out.register_hook(cap.grad_calls[name].append))
            replaced = out.clone()
            return replaced if isinstance(output, torch.Tensor) else (replaced, *output[1:])

        return hook

    try:
        for name, module in found:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield cap
    finally:
        for h in handles:
            h.remove()


class _Stop(BaseException):
    pass


def forward_until(model: nn.Module, images: torch.Tensor, layers: str | Sequence[str]):
    """Run `model` on `images` only until the named layer(s) have produced output, then stop.

    Later layers never run, so an objective on an early layer costs a fraction of a full forward.
    A module called several times stops the pass at its first call. The model runs in eval mode with its
    parameters frozen (both restored after): a train-mode pass would move its BatchNorm statistics.

    Returns:
        The activation ([B, C, H, W] for spatial or token outputs), or a dict of them for a list of names.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    found = [find_layer(model, n) for n in names]
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = _first_tensor(output)
            if out is not None and name not in acts:
                acts[name] = out
            if len(acts) == len(found):
                raise _Stop

        return hook

    from featvis.models.classifier import frozen

    try:
        for name, module in found:
            handles.append(module.register_forward_hook(make_hook(name)))
        with contextlib.suppress(_Stop), frozen(model):
            model(images)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, _ in found if n not in acts]
    if missing:
        raise FeatvisError(f"layer(s) {missing} did not run in the forward pass; pick layers the model uses")
    layout = token_layout(model)
    if isinstance(layers, str):
        return to_spatial(acts[found[0][0]], layout)
    return {n: to_spatial(acts[n], layout) for n, _ in found}


@dataclass(frozen=True)
class LayerInfo:
    """A layer as `featvis layers` lists it."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # output shape for one input image; None if it did not run
    calls: int  # how many times it ran in one forward pass (>1: a reused module)
    params: int
    order: int  # position in execution order (when its forward finished)


_LAYER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def list_layers(model: nn.Module, size: int | None = None, filter: str | None = None) -> list[LayerInfo]:
    """Every named layer with its output shape, found by one probe forward pass on a blank image."""
    side = size or getattr(getattr(model, "preprocess", None), "size", 224)
    cached = _LAYER_CACHE.get(model, {}).get(side)
    if cached is None:
        cached = _probe(model, side)
        _LAYER_CACHE.setdefault(model, {})[side] = cached
    if filter:
        cached = [info for info in cached if filter.lower() in info.name.lower() or filter.lower() in info.type.lower()]
    return cached


def _probe(model: nn.Module, side: int) -> list[LayerInfo]:
    modules = [(n, m) for n, m in root(model).named_modules() if n]
    layout = token_layout(model)
    shapes: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {n: 0 for n, _ in modules}
    order: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            counts[name] += 1
            out = _first_tensor(output)
            if out is not None:
                shapes[name] = tuple(to_spatial(out, layout).shape[1:])
            order[name] = len(order) if name not in order else order[name]

        return hook

    from featvis.models.classifier import frozen

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        with frozen(model), torch.no_grad():
            model(torch.full((1, 3, side, side), 0.5, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    infos = [LayerInfo(n, type(m).__name__, shapes.get(n), counts[n], sum(p.numel() for p in m.parameters()),
                       order.get(n, -1)) for n, m in modules]
    return infos


@dataclass(frozen=True)
class Call:
    """One call of a submodule during `trace_calls`: its first input tensor and its output."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: object


def trace_calls(model: nn.Module, images: torch.Tensor, types: tuple[type, ...] = (nn.Module,)
                ) -> tuple[list[Call], object]:
    """Run `model(images)` once, as it is (mode and gradient mode untouched), recording every call of a
    submodule of the given types in the order the calls finished. The hooks are removed on return.

    Used by `featvis.models.fast` to find which BatchNorm reads which convolution's output.

    Returns:
        (the calls, the model's output).
    """
    calls: list[Call] = []
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            calls.append(Call(name, module, _first_tensor(inputs), output))

        return hook

    try:
        for name, module in root(model).named_modules():
            if name and isinstance(module, types):
                handles.append(module.register_forward_hook(make_hook(name)))
        out = model(images)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def default_layer(model: nn.Module) -> str:
    """The layer Grad-CAM explains by default.

    For a vision transformer: the last block's first LayerNorm (timm `blocks.11.norm1`, torchvision
    `encoder.layers.encoder_layer_11.ln_1`), the input of the last self-attention, as pytorch-grad-cam and the
    ViT CAM literature do: after the last attention every token is processed on its own, so a class-token head
    gives the patch tokens there no gradient at all. Otherwise: the last module, in execution order, whose output
    is a feature map larger than 1×1, skipping activation modules that are reused in several places.
    """
    infos = list_layers(model)
    vit = _last_attention_input(model, {i.name: i for i in infos})
    if vit is not None:
        return vit
    spatial = [i for i in infos if _is_map(i) and i.calls == 1]
    if not spatial:
        raise FeatvisError("this model has no spatial feature layer (no [C, H, W] output); name a layer")
    return max(spatial, key=lambda i: i.order).name


def _is_map(info: LayerInfo) -> bool:
    return info.shape is not None and len(info.shape) == 3 and info.shape[1] * info.shape[2] > 1


def is_attention(module: nn.Module) -> bool:
    """A self-attention module: torch's MultiheadAttention, or any module class named *Attention* (timm's)."""
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def _last_attention_input(model: nn.Module, infos: dict[str, LayerInfo]) -> str | None:
    """The module whose output the last self-attention block attends over, if the model is a pre-norm ViT."""
    modules = dict(root(model).named_modules())
    attention = [n for n, m in modules.items() if n and is_attention(m) and infos.get(n) and infos[n].calls]
    if not attention:
        return None
    last = max(attention, key=lambda n: infos[n].order)
    block_name, _, attn_child = last.rpartition(".")
    block = modules.get(block_name)
    if block is None or getattr(block, "norm_first", True) is False:
        return None  # post-norm (nn.TransformerEncoderLayer's default): no norm feeds the attention
    children = [n for n, _ in block.named_children()]
    before = children[:children.index(attn_child)]
    norms = [c for c in before if isinstance(getattr(block, c), nn.LayerNorm)
             or "norm" in type(getattr(block, c)).__name__.lower()]
    if not norms:
        return None
    name = f"{block_name}.{norms[-1]}"
    return name if name in infos and _is_map(infos[name]) else None


@contextlib.contextmanager
def swapped_forward(model: nn.Module, types: tuple[type, ...], make_forward) -> Iterator[int]:
    """Temporarily replace the forward of every submodule of the given types with `make_forward(module)`.

    Used by modified-backward methods (guided backprop) so that the gradient rule applies to every call of a
    reused activation module and ignores `inplace=True`. The original forwards are restored on exit.

    Yields:
        how many modules were swapped.
    """
    swapped = [m for m in root(model).modules() if isinstance(m, types)]
    try:
        for m in swapped:
            m.forward = make_forward(m)
        yield len(swapped)
    finally:
        for m in swapped:
            m.__dict__.pop("forward", None)


@dataclass
class AttentionCapture:
    """What `capture_attention` recorded: each self-attention call's probabilities, in forward order."""

    probs: list[torch.Tensor] = field(default_factory=list)  # each [B, heads, N, N]; rows (queries) sum to 1
    layers: list[str] = field(default_factory=list)  # the attention module of each entry


def _timm_style(module: nn.Module) -> bool:
    """timm's Attention: q·k softmax on its unfused path goes through its `attn_drop` module."""
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module) \
        and hasattr(module, "qkv")


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record every self-attention layer's probabilities softmax(q·kᵀ/√d), [B, heads, N, N], while the block runs.

    The recorded tensors are the ones the model multiplies with the values, so `torch.autograd.grad(score, probs)`
    gives their gradients (Chefer et al. 2021). Supported, and refused otherwise with one line:

    - timm's `Attention` (ViT, DeiT, DeiT-distilled, register and DINOv2 models): run on timm's own unfused path
      (`fused_attn = False` for the duration, restored after), whose softmax output passes its `attn_drop` module.
    - `torch.nn.MultiheadAttention` used as self-attention (torchvision's ViT): its forward is replaced for the
      duration by an explicit one with the same math (no masks, no bias_k/bias_v), which records them.
    """
    net = root(model)
    found = [(n, m) for n, m in net.named_modules() if n and is_attention(m)]
    if not found:
        raise FeatvisError(f"this model ({type(net).__name__}) has no self-attention layers; attention maps need a "
                           "vision transformer (use gradcam or gradient for it)")
    unsupported = [(n, m) for n, m in found if not (_timm_style(m) or isinstance(m, nn.MultiheadAttention))
                   and not any(_timm_style(c) or isinstance(c, nn.MultiheadAttention) for c in m.children())]
    if unsupported:
        n, m = unsupported[0]
        raise FeatvisError(f"attention maps support timm's Attention and torch.nn.MultiheadAttention, not "
                           f"{type(m).__name__} ({n})")
    cap = AttentionCapture()
    handles = []
    fused = [(m, m.fused_attn) for _, m in found if _timm_style(m)]
    swapped = [(n, m) for n, m in found if isinstance(m, nn.MultiheadAttention)]

    def record(name: str):
        def hook(_module, _inputs, output):
            cap.probs.append(output)
            cap.layers.append(name)

        return hook

    try:
        for m, _ in fused:
            m.fused_attn = False
        for n, m in found:
            if _timm_style(m):
                handles.append(m.attn_drop.register_forward_hook(record(n)))
        for n, m in swapped:
            m.forward = _explicit_attention(m, n, cap)
        yield cap
    finally:
        for h in handles:
            h.remove()
        for m, flag in fused:
            m.fused_attn = flag
        for _, m in swapped:
            m.__dict__.pop("forward", None)


def _explicit_attention(m: nn.MultiheadAttention, name: str, cap: AttentionCapture):
    """nn.MultiheadAttention's self-attention written out, recording the probabilities (same math as
    torch.nn.functional.multi_head_attention_forward: q scaled by 1/√head_dim, softmax over keys)."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or is_causal or not (query is key is value):
            raise FeatvisError(f"attention maps need plain self-attention; {name} was called with masks or separate "
                               "keys/values")
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise FeatvisError(f"attention maps do not support {name}'s MultiheadAttention options (kdim/vdim, "
                               "bias_k/bias_v or add_zero_attn)")
        x = query if m.batch_first else query.transpose(0, 1)
        b, n, c = x.shape
        heads = m.num_heads
        qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias)
        qkv = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, head_dim]
        q, k, v = qkv.unbind(0)
        probs = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)  # [B, heads, N, N]
        cap.probs.append(probs)
        cap.layers.append(name)
        dropped = F.dropout(probs, m.dropout) if m.training and m.dropout > 0 else probs
        out = (dropped @ v).transpose(1, 2).reshape(b, n, c)  # [B, N, heads*head_dim]
        out = m.out_proj(out)
        out = out if m.batch_first else out.transpose(0, 1)
        weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
        return out, weights

    return forward
