"""Layers: find them by dotted name, capture their activations and gradients, run a model only up to one.

`featvis.layers` is the only place hooks are made (and `featvis.models.fast`'s one traced planning forward, which
cannot import this package). Every hook lives inside a `with` block and is removed in `finally`. A Classifier's
forward runs on its fast copy wherever the copy leaves the hooked layer's output unchanged (issue 23).

Modules: `lookup` (names, labels, `find_layer`), `hooks` (`capture`, `tap`, `replace_output`), `forward`
(`forward_until`), `listing` (`list_layers`, `default_layer`), `tokens` (transformer token layouts), `attention`
(`capture_attention`), `swap` (`swapped_forward`).
"""

from featvis.layers.attention import AttentionCapture, capture_attention, is_attention
from featvis.layers.forward import forward_until
from featvis.layers.hooks import Call, Capture, capture, replace_output, tap, trace_calls
from featvis.layers.listing import LayerInfo, default_layer, list_layers
from featvis.layers.lookup import find_layer, layer_label, root
from featvis.layers.swap import swapped_forward
from featvis.layers.tokens import MAX_GUESSED_PREFIX, TokenLayout, to_spatial, token_layout

__all__ = [
    "MAX_GUESSED_PREFIX",
    "AttentionCapture",
    "Call",
    "Capture",
    "LayerInfo",
    "TokenLayout",
    "capture",
    "capture_attention",
    "default_layer",
    "find_layer",
    "forward_until",
    "is_attention",
    "layer_label",
    "list_layers",
    "replace_output",
    "root",
    "swapped_forward",
    "tap",
    "to_spatial",
    "token_layout",
    "trace_calls",
]

