"""Loading tensors into a network, checked: one-line errors for weights that do not fit, are of the wrong kind or
hold NaN/inf (issue 22); and the two facts a fine-tuned checkpoint tells about its head (class count, names)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from featvis.errors import FeatvisError
from featvis.models.checkpoint import nonfinite_tensors
from featvis.models.labels import Labels

StateDict = dict[str, torch.Tensor]
SHOWN_TENSORS = 3  # how many tensor names a one-line error lists


class WeightsError(FeatvisError):
    """Weights that do not fit the network they are loaded into; `load_model` adds the file's name."""


def load_strict(net: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Load every tensor of `state_dict` into `net` and require that they match exactly; one-line errors.

    Refused before anything is copied (issue 22): integer or bool tensors where `net` has floating point ones (or
    the reverse) — quantized storage without its scales, a mis-export or bytes read as the wrong type, which a
    silent cast would turn into garbage predictions — and NaN/inf, which make every prediction NaN. A tensor of
    `net` that is itself non-finite as built (an attention mask of -inf) may be non-finite in the file too.
    """
    own = net.state_dict()
    shared = [(k, t) for k, t in state_dict.items() if k in own and isinstance(t, torch.Tensor)]
    kinds = [f"{k} is {t.dtype} where {name} has {own[k].dtype}" for k, t in shared
             if t.is_floating_point() != own[k].is_floating_point()]
    if kinds:
        raise WeightsError(f"weights do not fit {name}: {listed(kinds)} (a dtype of another kind: quantized, "
                           "mis-exported or misread weights, which a cast would turn into garbage); save the "
                           "floating-point weights (dequantize them first) and load those")
    meant = set(nonfinite_tensors(own.items()))
    bad = nonfinite_tensors((k, t) for k, t in shared if k not in meant)
    if bad:
        raise WeightsError(f"weights for {name} hold NaN or inf in {listed(bad)}; every prediction would be NaN: "
                           "use a checkpoint saved before training diverged")
    try:
        result = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise WeightsError(f"weights do not fit {name}: {detail}; check the architecture name") from None
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3])
        extra = ", ".join(result.unexpected_keys[:3])
        raise WeightsError(
            f"weights do not fit {name}: missing [{missing}] unexpected [{extra}]; check the architecture name"
        )


def listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOWN_TENSORS} more" if len(names) > SHOWN_TENSORS else ""
    return ", ".join(names[:SHOWN_TENSORS]) + more


def head_classes(model_shapes: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor],
                 default: int) -> int:
    """The number of classes of a fine-tuned checkpoint: the first dimension its tensors have where the
    architecture built for `default` classes has `default` (the classifier head's weight and bias)."""
    found = {int(t.shape[0]) for k, t in state_dict.items()
             if k in model_shapes and t.ndim >= 1 and tuple(t.shape) != tuple(model_shapes[k])
             and model_shapes[k][0] == default and tuple(t.shape[1:]) == tuple(model_shapes[k][1:])}
    return found.pop() if len(found) == 1 else default


def imagenet_or(names: Sequence[str] | None, n: int) -> Labels | list[str] | None:
    """Labels for `n` classes: featvis's ImageNet names (with synonyms) for 1000, the given names, or None."""
    from featvis.models.labels import imagenet_labels

    if n == 1000 and (names is None or len(names) == 1000):
        return imagenet_labels()
    return list(names) if names is not None and len(names) == n else None
