"""Attention rollout and Chefer et al. against a hand computation on tiny ViTs (timm's and torchvision's
attention), the attention capture's exactness and cleanup, and refusals."""

import pytest
import torch
import torch.nn.functional as F

import featvis as fv
from featvis.attribution import ATTRIBUTIONS
from featvis.layers import capture_attention

from _models import TinyConvNet
from _vit import TinyAttnViT, reference_forward

SIZE = 32  # 4 × 4 patches of 8 px


def _clf(**kw):
    vit = TinyAttnViT(size=SIZE, **kw).eval()
    return fv.Classifier.wrap(vit, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=list("abcde"),
                              input_size=SIZE), vit


def _to_image(per_token: torch.Tensor, prefix: int) -> torch.Tensor:
    """[B, N] token relevance -> [B, H, W]: patches as the 4 × 4 grid, bilinear to the image, as the papers."""
    grid = per_token[:, prefix:].reshape(-1, 1, 4, 4)
    return F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]


def _rollout_by_hand(probs, rows, prefix):
    b, _, n, _ = probs[0].shape
    out = []
    for i in range(b):  # one image, one layer at a time, in float64
        r = torch.eye(n, dtype=torch.float64)
        for p in probs:
            a = 0.5 * p[i].double().mean(0) + 0.5 * torch.eye(n, dtype=torch.float64)
            a = a / a.sum(1, keepdim=True)
            r = a @ r
        out.append(r[rows].mean(0))
    return _to_image(torch.stack(out).float(), prefix)


def _chefer_by_hand(probs, grads, rows, prefix):
    b, _, n, _ = probs[0].shape
    out = []
    for i in range(b):
        r = torch.eye(n, dtype=torch.float64)
        for p, g in zip(probs, grads, strict=True):
            e = (g[i].double() * p[i].double()).clamp(min=0).mean(0)
            r = r + e @ r
        out.append(r[rows].mean(0))
    return _to_image(torch.stack(out).float(), prefix)


CASES = {  # attention kind, register tokens, pooling -> rows the head reads
    "timm-cls": dict(attention="timm", registers=0, global_pool="token"),
    "timm-registers": dict(attention="timm", registers=4, global_pool="token"),
    "timm-gap": dict(attention="timm", registers=2, global_pool="avg"),
    "torch-mha": dict(attention="torch", registers=0, global_pool="token"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rollout_and_chefer_match_hand_computation(case):
    clf, vit = _clf(**CASES[case])
    prefix = 1 + CASES[case]["registers"]
    rows = [0] if CASES[case]["global_pool"] == "token" else list(range(prefix, prefix + 16))
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    logits, probs = reference_forward(vit, clf.normalize(x))
    torch.testing.assert_close(logits, clf(x), rtol=1e-4, atol=1e-5)  # the oracle is the model
    target = torch.tensor([0, 3, 1])
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), probs)
    rollout = fv.saliency(clf, x, method="attention-rollout")
    torch.testing.assert_close(rollout, _rollout_by_hand(probs, rows, prefix), rtol=1e-4, atol=1e-6)
    chefer = fv.saliency(clf, x, target, method="chefer")
    torch.testing.assert_close(chefer, _chefer_by_hand(probs, grads, rows, prefix), rtol=1e-4, atol=1e-6)
    assert rollout.shape == chefer.shape == (3, SIZE, SIZE)
    assert not torch.allclose(chefer, fv.saliency(clf, x, [1, 0, 2], method="chefer"))  # class-specific


def test_capture_attention_is_exact_and_restores_the_model():
    for attention in ("timm", "torch"):
        clf, vit = _clf(attention=attention)
        x = torch.rand(2, 3, SIZE, SIZE)
        with torch.no_grad():
            before = clf(x)
            with capture_attention(clf) as cap:
                during = clf(x)
        torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-6)  # same math as the fused/native path
        assert len(cap.probs) == 2 and cap.layers == ["blocks.0.attn", "blocks.1.attn"]
        assert cap.probs[0].shape == (2, 2, 17, 17)
        torch.testing.assert_close(cap.probs[1].sum(-1), torch.ones(2, 2, 17))
        assert all("forward" not in m.__dict__ for m in vit.modules())
        assert all(getattr(m, "fused_attn", True) for m in vit.modules())
        assert sum(len(m._forward_hooks) for m in vit.modules()) == 0


def test_capture_attention_cleans_up_after_an_exception():
    clf, vit = _clf(attention="timm")
    with pytest.raises(RuntimeError, match="boom"), capture_attention(clf):
        raise RuntimeError("boom")
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))
    assert sum(len(m._forward_hooks) for m in vit.modules()) == 0


def test_refusals_are_one_line():
    cnn = fv.Classifier.wrap(TinyConvNet(), labels=list("abcd"), input_size=SIZE)
    for method in ("attention-rollout", "chefer"):
        with pytest.raises(fv.FeatvisError, match=r"^this model \(TinyConvNet\) has no self-attention layers; .*"
                                                    "gradcam") as e:
            fv.saliency(cnn, torch.rand(1, 3, SIZE, SIZE), 0, method=method)
        assert "\n" not in str(e.value)
    clf, _ = _clf()
    with pytest.raises(fv.FeatvisError, match="unknown head_fusion 'median'"):
        fv.saliency(clf, torch.rand(1, 3, SIZE, SIZE), method="rollout", head_fusion="median")


def test_other_attention_classes_are_refused():
    class WindowAttention(torch.nn.Module):  # e.g. a Swin block: no qkv/attn_drop path featvis can read
        def forward(self, x):
            return x

    clf, vit = _clf()
    vit.blocks[1].attn = WindowAttention()
    with pytest.raises(fv.FeatvisError, match=r"support timm's Attention and torch.nn.MultiheadAttention, not "
                                                r"WindowAttention \(blocks.1.attn\)"):
        fv.saliency(clf, torch.rand(1, 3, SIZE, SIZE), method="attention-rollout")


def test_rollout_options():
    clf, _ = _clf(registers=1)
    x = torch.rand(2, 3, SIZE, SIZE)
    plain = fv.saliency(clf, x, method="attention-rollout")
    assert torch.isfinite(plain).all() and (plain > 0).all()  # rollout mixes in the identity: every patch > 0
    for fusion in ("max", "min"):
        assert not torch.allclose(fv.saliency(clf, x, method="attention-rollout", head_fusion=fusion), plain)
    dropped = fv.saliency(clf, x, method="attention-rollout", discard_ratio=0.5)
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, plain)
    torch.testing.assert_close(fv.saliency(clf, x, 3, method="attention-rollout"), plain)  # class-agnostic
    assert ATTRIBUTIONS.get("rollout").info["needs"] == "attention"


def test_guided_backprop_refuses_gelu_models():
    clf, _ = _clf()
    with pytest.raises(fv.FeatvisError, match=r"^guided-backprop is defined for ReLU networks and this model uses "
                                                r"GELU \(2×\); use gradient") as e:
        fv.saliency(clf, torch.rand(1, 3, SIZE, SIZE), 0, method="guided-backprop")
    assert "\n" not in str(e.value)
