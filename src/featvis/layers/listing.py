"""Listing layers: every named layer with its output shape from one probe forward, and the default layer CAMs use."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.layers.attention import is_attention
from featvis.layers.lookup import root
from featvis.layers.tokens import to_spatial, token_layout
from featvis.models.fast.serving import first_tensor
from featvis.models.freeze import frozen


@dataclass(frozen=True)
class LayerInfo:
    """A layer as `featvis layers` lists it."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # output shape for one input image; None if it did not run
    calls: int  # how many times it ran in one forward pass (>1: a reused module)
    params: int
    order: int  # position in execution order (when its forward finished)


_LAYER_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {side: layers}
_LOCK = threading.Lock()  # threads (a web server's, a notebook's) share the cache


def list_layers(model: nn.Module, size: int | None = None, filter: str | None = None) -> list[LayerInfo]:
    """Every named layer with its output shape, found by one probe forward pass on a blank image."""
    side = size or getattr(getattr(model, "preprocess", None), "size", 224)
    with _LOCK:
        cached = _LAYER_CACHE.get(model, {}).get(side)
    if cached is None:
        cached = _probe(model, side)  # outside the lock: a probe runs the model (two threads may both probe)
        with _LOCK:
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
            out = first_tensor(output)
            if out is not None:
                shapes[name] = tuple(to_spatial(out, layout).shape[1:])
            order[name] = len(order) if name not in order else order[name]

        return hook

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
    # LayerNorm by type; other norms by name (timm's RmsNorm, LayerNorm2d, users' own: no common base class)
    norms = [c for c in before if isinstance(getattr(block, c), nn.LayerNorm)
             or "norm" in type(getattr(block, c)).__name__.lower()]
    if not norms:
        return None
    name = f"{block_name}.{norms[-1]}"
    return name if name in infos and _is_map(infos[name]) else None
