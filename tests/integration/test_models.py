"""Loading real torchvision and timm models: by `weights=`, by name from the library's cache, offline errors,
metadata round trips, rebuild, and exact agreement of featvis's adapter with the bare module.

With random weights, deletion/insertion AUCs mean nothing (there is nothing to find), so what is checked instead
is what a broken adapter would break: the classifier's logits, gradient and Grad-CAM equal a direct computation on
the module the library builds itself (normalization, weights, head size, token layout, CAM layer), and the
labels, mean/std and resize/crop equal the library's own metadata.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.models import ModelSource, load_checkpoint

from _cases import Built, architecture


def library_metadata(case) -> dict:
    """What the library itself says about the model's inputs and classes (no download)."""
    library, arch = case.name.split(":", 1)
    if library == "torchvision":
        from torchvision.models import get_model_weights

        w = get_model_weights(arch).DEFAULT
        tf = w.transforms()
        return {"mean": tuple(tf.mean), "std": tuple(tf.std), "crop_fraction": tf.crop_size[0] / tf.resize_size[0],
                "interpolation": tf.interpolation.value, "native": tf.crop_size[0], "categories": w.meta["categories"]}
    import timm
    from timm.data import ImageNetInfo

    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict())
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "crop_fraction": cfg["crop_pct"],
            "interpolation": cfg["interpolation"], "native": cfg["input_size"][-1],
            "synsets": ImageNetInfo("imagenet-1k").label_names()}


def test_load(built: Built):
    case, clf = built.case, built.clf
    assert clf.name == case.name and clf.input_size == case.size and len(clf.labels) == 1000
    assert clf.source == ModelSource(case.name, str(built.weights.resolve()), input_size=case.size)
    state = load_checkpoint(built.weights)
    own = clf.net.state_dict()
    assert set(own) == set(state)
    resampled = [k for k, v in state.items() if own[k].shape != v.shape]
    assert all(torch.equal(own[k], v) for k, v in state.items() if k not in resampled)  # the file, unchanged
    assert resampled == ([next(k for k in state if "pos_emb" in k)] if case.vit else [])  # ViTs: to the test size
    meta = library_metadata(case)
    assert clf.mean.flatten().tolist() == pytest.approx(meta["mean"])
    assert clf.std.flatten().tolist() == pytest.approx(meta["std"])
    assert clf.preprocess.crop_fraction == pytest.approx(meta["crop_fraction"])
    assert clf.preprocess.interpolation == meta["interpolation"]
    if "categories" in meta:  # torchvision's names are among featvis's synonyms of the same index
        same = sum(meta["categories"][i].lower() in {s.lower() for s in clf.labels.synonyms[i]} for i in range(1000))
        assert same >= 990, same
    else:  # timm's ImageNet-1k synsets, in featvis's order
        assert clf.labels.ids == meta["synsets"]
    again = fv.models.rebuild(json.loads(json.dumps(clf.source.to_dict())), "cpu", expected_hash=clf.weights_hash)
    x = torch.rand(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(x), clf(x))


def test_by_name(built: Built, tmp_path, monkeypatch):
    """Offline with an empty cache: one line naming --weights. With the file in the library's own cache: loaded
    by name, without `weights=`, through the library's own loading path."""
    case = built.case
    library, arch = case.name.split(":", 1)
    state = load_checkpoint(built.weights)
    if library == "torchvision":
        from torchvision.models import get_model_weights

        def offline(url, *_args, **_kwargs):  # as in CI (no network), whatever this machine can reach
            raise urllib.error.URLError("[Errno -2] Name or service not known")

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
        cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(get_model_weights(arch).DEFAULT.url).name
    else:
        import huggingface_hub.constants
        import timm

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
        snapshot = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
        cached = snapshot / "model.safetensors"
    with pytest.raises(fv.FeatvisError, match=rf"^cannot download the weights of {case.name} .*--weights FILE") as e:
        fv.load_model(case.name)
    assert "\n" not in str(e.value)
    cached.parent.mkdir(parents=True, exist_ok=True)
    if library == "torchvision":
        torch.save(state, cached)
    else:
        from safetensors.torch import save_file

        (cached.parents[2] / "refs").mkdir()
        (cached.parents[2] / "refs" / "main").write_text("0" * 40)
        if case.head is not None:  # DINOv2 ships a backbone: its hub checkpoint has no head
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        save_file(state, str(cached))
    if case.head is not None:
        with pytest.raises(fv.FeatvisError, match=rf"^{case.name} has no classifier head .*--weights FILE"):
            fv.load_model(case.name)
        return
    clf = fv.load_model(case.name)
    assert clf.input_size == library_metadata(case)["native"] and clf.source.weights is None
    own = clf.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def _bare(case, size: int, weights: Path) -> torch.nn.Module:
    """The library's own module at `size` with the test checkpoint, adapted by the library's own functions."""
    library, _ = case.name.split(":", 1)
    state = load_checkpoint(weights)
    if not case.vit:
        net = architecture(case)
    elif library == "torchvision":
        from torchvision.models.vision_transformer import interpolate_embeddings

        net = architecture(case, image_size=size)
        state = interpolate_embeddings(size, net.patch_size, state)
    else:
        from timm.models.vision_transformer import checkpoint_filter_fn

        net = architecture(case, img_size=size)
        state = checkpoint_filter_fn(state, net)
    net.load_state_dict(state)
    return net.eval()


def _patch_tokens(case, net, tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C, h, w] from the library's own attributes (not featvis's layout code)."""
    prefix = net.num_prefix_tokens if hasattr(net, "num_prefix_tokens") else 1  # torchvision: one class token
    grid = tokens[:, prefix:]
    side = int(grid.shape[1] ** 0.5)
    return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def test_adapter_exact(built: Built):
    """featvis's logits, gradient map and Grad-CAM equal a direct computation on the bare module."""
    case, clf = built.case, built.clf
    net = _bare(case, case.size, built.weights)
    meta = library_metadata(case)
    x = torch.rand(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([3, 7])
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    xg = x.clone().requires_grad_(True)
    layer = fv.default_layer(clf)
    store = {}
    module = dict(net.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: store.setdefault("act", out))
    try:
        logits = net((xg - mean) / std)
    finally:
        handle.remove()
    score = logits.gather(1, target[:, None]).sum()
    grad_x, grad_act = torch.autograd.grad(score, [xg, store["act"]])
    clf.fast = False  # the adapter itself, exactly: the user's network (the fast copy is checked below)
    try:
        with torch.no_grad():
            torch.testing.assert_close(clf(x), logits.detach(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fv.saliency(clf, x, target, method="gradient"), grad_x.abs().amax(1),
                                   rtol=1e-3, atol=1e-6)
    finally:
        clf.fast = True
    # issue 17: the fast copy (BN folded, channels-last) gives the same predictions, and maps as close to the exact
    # (float64) map as the user's network in float32 is: these networks carry drawn weights, whose gradients are
    # chaotic enough that float32 rounding alone moves them by more than 1e-3 (mean relative)
    with torch.no_grad():
        assert torch.equal(clf(x).argmax(-1), logits.argmax(-1))
    x64 = x.double().requires_grad_(True)
    net64 = net.double()
    score64 = net64((x64 - mean.double()) / std.double()).gather(1, target[:, None]).sum()
    exact = torch.autograd.grad(score64, x64)[0].abs().amax(1).float()
    net.float()

    def error(m: torch.Tensor) -> float:
        return float((m - exact).abs().mean() / exact.abs().mean())

    fast_error, eager_error = error(fv.saliency(clf, x, target, method="gradient")), error(grad_x.abs().amax(1))
    print(f"{case.name}: map error vs float64, fast {fast_error:.2e}, user's network {eager_error:.2e}")
    assert fast_error <= max(1e-3, 2 * eager_error)
    act, grad = store["act"].detach(), grad_act
    if act.ndim == 3:
        act, grad = _patch_tokens(case, net, act), _patch_tokens(case, net, grad)
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    ours = fv.saliency(clf, x, target, method="gradcam", relu=False)
    # Grad-CAM runs on the fast copy (BatchNorm folded, issue 23) and `cam` on the user's network: float32 rounding
    # of the folding moves pixels by up to ~1e-5 of the map's maximum (measured: at most 1.06e-5 on resnet50, mean
    # 8.6e-6 on resnet50, 5.2e-6 on mobilenet_v3_large, 2.2e-6 on efficientnet_b0); a wrong map is off by far more
    peak = float(cam.abs().amax())
    torch.testing.assert_close(ours, cam, rtol=1e-3, atol=5e-5 * peak)
    assert float((ours - cam).abs().mean()) <= 2e-5 * peak
    assert float(cam.abs().amax()) > 0  # a ViT's CAM layer is before the last attention: patch gradients exist


def test_attention_capture_exact(built: Built):
    """On the real modules: capturing attention leaves the logits as they are (timm's unfused path, the explicit
    MultiheadAttention), and block 0's probabilities equal softmax(q·kᵀ/√d) from its own weights."""
    if not built.case.vit:
        pytest.skip("not a vision transformer")
    from featvis.layers import capture_attention

    case, clf = built.case, built.clf
    net = clf.net
    blocks = net.encoder.layers if hasattr(net, "encoder") else net.blocks
    first = blocks[0]
    x = torch.rand(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(3))
    seen = {}
    handle = first.register_forward_pre_hook(lambda _m, args: seen.setdefault("tokens", args[0]))
    try:
        with torch.no_grad():
            plain = clf(x)
            with capture_attention(clf) as cap:
                captured = clf(x)
    finally:
        handle.remove()
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-4)
    assert len(cap.probs) == len(blocks)
    norm, attn = (first.ln_1, first.self_attention) if hasattr(first, "ln_1") else (first.norm1, first.attn)
    weight, bias = (attn.in_proj_weight, attn.in_proj_bias) if hasattr(attn, "in_proj_weight") \
        else (attn.qkv.weight, attn.qkv.bias)
    with torch.no_grad():
        y = norm(seen["tokens"])
        b, n, c = y.shape
        heads = attn.num_heads
        q, k, _ = (y @ weight.T + bias).split(c, dim=-1)
        q, k = (z.view(b, n, heads, c // heads).transpose(1, 2) for z in (q, k))
        by_hand = (q @ k.transpose(-2, -1) / (c // heads) ** 0.5).softmax(-1)
    torch.testing.assert_close(cap.probs[0], by_hand, rtol=1e-4, atol=1e-6)


def test_image_preprocessing_matches_the_library(built: Built):
    """featvis's resize + center crop of a photo matches the library's own eval transform (at its native size).

    Not exactly: featvis rounds the resized sides (349 × 232 for a 451 × 300 photo and crop 224/232; timm's
    0.9 crop: short side 249) where torchvision and timm truncate (348 × 232; 248), a 1-pixel scale difference
    worth 0.013–0.020 mean absolute difference. A wrong crop fraction or normalization costs 0.047 and more."""
    case = built.case
    library, arch = case.name.split(":", 1)
    from featvis.images import open_image, resize_and_crop

    photo = open_image(fv.samples.path("chelsea"))
    meta = library_metadata(case)
    ours = resize_and_crop(photo, meta["native"], meta["crop_fraction"], meta["interpolation"])
    ours = torch.from_numpy(np.asarray(ours).copy()).permute(2, 0, 1).float() / 255
    if library == "torchvision":
        from torchvision.models import get_model_weights

        theirs = get_model_weights(arch).DEFAULT.transforms()(photo)
    else:
        import timm

        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict())
        theirs = timm.data.create_transform(**cfg)(photo)
    theirs = theirs * torch.tensor(meta["std"]).view(3, 1, 1) + torch.tensor(meta["mean"]).view(3, 1, 1)
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs()
    assert float(diff.mean()) < 0.025, float(diff.mean())


def test_foreign_weights_are_rejected_in_one_line(built: Built, tmp_path):
    """A checkpoint of another architecture: one line naming the model, not a 40-line load_state_dict dump."""
    case = built.case
    path = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(fv.FeatvisError, match=rf"^weights do not fit {case.name}: ") as e:
        fv.load_model(case.name, weights=path, input_size=case.size)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "mobilenetv2_100", "efficientnet_b0"])
def test_fast_path_folds_timms_batchnorm_act(arch: str):
    """issue 17 on timm's CNNs: BatchNormAct2d (BatchNorm + activation in one module) folds into the conv before it,
    its ReLU6 fuses into that conv, and timm's TF-"same" stride-2 depthwise convs run the wider kernel. With drawn
    weights a ReLU6 corner flipped by the folding's rounding moves a map by ~1e-3 (float64 says eager float32 is no
    better on average: see test_adapter_exact), so what is checked exactly is what the fusion adds: the same
    gradient as the folded copy with its ReLU6 apart."""
    import timm

    from featvis.models import fast, frozen

    from _cases import calibrate

    relu6 = arch != "efficientnet_b0"  # SiLU: folded, nothing to fuse
    torch.manual_seed(0)
    net = calibrate(timm.create_model(arch, pretrained=False), 64)
    bn_acts = sum(type(m).__name__ == "BatchNormAct2d" for m in net.modules())
    clf = fv.Classifier.wrap(net, labels=[str(i) for i in range(1000)], input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))

    def grads(setting) -> torch.Tensor:
        clf.fast = setting
        try:
            with frozen(clf):
                xx = x.clone().requires_grad_(True)
                return torch.autograd.grad(clf(xx)[:, 1].sum(), xx)[0]
        finally:
            clf.fast = True

    with torch.no_grad():
        preds = clf(x).argmax(-1)
    g_fast = grads(True)
    status = fast.status(clf)
    assert status["active"] and status["folded"] == bn_acts > 40
    assert (status["fused"] > 30) == relu6 and status["private"] <= status["fused"]
    if arch.startswith("tf_"):  # TensorFlow padding: timm's Conv2dSame, stride-2 depthwise on even sides
        copy = next(iter(fast._CACHE[net].values())).net
        assert sum(bool(getattr(m, "_wide", None)) for m in copy.modules()) == 4
    torch.testing.assert_close(g_fast, grads(fast.FastOptions(fuse_relu6=False)), rtol=1e-5, atol=1e-7)
    g_eager = grads(False)
    with torch.no_grad():
        clf.fast = False
        assert torch.equal(clf(x).argmax(-1), preds)
        clf.fast = True
    maps, ref = g_fast.abs().amax(1), g_eager.abs().amax(1)
    assert float((maps - ref).abs().mean() / ref.abs().mean()) < 1e-2
