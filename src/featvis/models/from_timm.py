"""`timm:NAME`: any timm model.

Preprocessing comes from the model's `pretrained_cfg` through `timm.data.resolve_model_data_config` (mean, std,
input size, crop_pct, interpolation) — metadata timm ships, read without downloading. Class names: featvis's
ImageNet names for 1000 classes, timm's bundled ImageNet-21k/12k names (`ImageNetInfo`) for those, else
generic. The weights are a `weights=` file when given (always used; a different head size is read from its
`pretrained_cfg['classifier']` tensor, a position embedding of another size resampled by timm's own
`checkpoint_filter_fn`), else timm's pretrained weights (downloaded once from the Hugging Face hub; offline, a
one-line error names `--weights`).
"""

from __future__ import annotations

import sys

from featvis.errors import FeatvisError, did_you_mean
from featvis.models.classifier import Classifier, Preprocess
from featvis.models.labels import Labels
from featvis.models.source import Request, model_source
from featvis.models.weights import StateDict, imagenet_or, load_strict


@model_source("timm", "timm:NAME", "timm", "timm",
              "any timm model: its pretrained weights (downloaded once) or --weights FILE; preprocessing from its "
              "pretrained_cfg", kind="prefix")
def build(req: Request) -> Classifier:
    import timm
    from timm.models import get_pretrained_cfg

    name = req.arch
    if not timm.is_model(name):
        raise did_you_mean("timm model", name, timm.list_models(), hint="timm.list_models('*vit*') lists them")
    label = f"timm:{name}"
    cfg = get_pretrained_cfg(name)
    kwargs = {}
    if req.input_size is not None and cfg is not None and cfg.fixed_input_size \
            and req.input_size != int(cfg.input_size[-1]):
        kwargs["img_size"] = req.input_size  # ViTs: position embedding for this size
    if req.weights is None:
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise FeatvisError(f"{label} has no pretrained weights in timm; pass your own with --weights FILE "
                               "(load_model(..., weights=FILE))")
        try:
            net = timm.create_model(name, pretrained=True, **kwargs)  # timm's own loading: hub cache, filters
        except OSError as e:  # the hub's LocalEntryNotFoundError, connection errors, a full disk
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FeatvisError(f"cannot download the weights of {label} ({first[:160]}); offline, pass a local "
                               "weights file with --weights FILE (and set HF_HUB_OFFLINE=1 to fail at once)") from None
    else:
        num_classes = _head_classes(cfg, req.weights)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        net = timm.create_model(name, pretrained=False, **kwargs)
        load_strict(net, _filtered(net, req.weights), label)
    if getattr(net, "num_classes", 1) == 0:
        raise FeatvisError(f"{label} has no classifier head (num_classes=0: a feature extractor); pass weights that "
                           "include a head with --weights FILE")
    data = timm.data.resolve_model_data_config(net)
    size = req.input_size or int(data["input_size"][-1])
    n = int(net.num_classes)
    pre = Preprocess(size, float(data.get("crop_pct", 1.0)), data.get("interpolation", "bicubic"))
    return Classifier(net, mean=tuple(data["mean"]), std=tuple(data["std"]), labels=_labels(net, n), name=label,
                      preprocess=pre, num_classes=n)


def _head_classes(cfg, state: StateDict) -> int | None:
    """Classes of the checkpoint's head, found where timm's metadata says the head is (`classifier`)."""
    heads = cfg.classifier if cfg is not None else None
    for head in (heads,) if isinstance(heads, str) else tuple(heads or ()):
        weight = state.get(f"{head}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def _filtered(net, state: StateDict) -> StateDict:
    """The checkpoint adapted the way timm adapts pretrained weights (its model module's `checkpoint_filter_fn`:
    position embeddings resampled to the built size, old layouts converted), only where shapes differ."""
    own = net.state_dict()
    if all(k in own and tuple(own[k].shape) == tuple(v.shape) for k, v in state.items()):
        return state
    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    return filter_fn(dict(state), net) if filter_fn is not None else state


def _labels(net, n: int) -> Labels | list[str] | None:
    if n == 1000:
        return imagenet_or(None, n)
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(net)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != n:
        return None
    descriptions = info.label_descriptions()
    return Labels([tuple(s.strip() for s in d.split(",") if s.strip()) or (d,) for d in descriptions],
                  ids=info.label_names())
