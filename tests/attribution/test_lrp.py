"""LRP: every composite equal to a slow, explicit float64 re-implementation of the rules (dense z_ij matrices, BN
merged by hand), conservation where the rules conserve, gradient × input for LRP-0 on ReLU nets (and not on a
saturated ReLU6), the one-line ViT refusal, and the registry entry. zennit 0.5.1 itself is compared on real models
by benchmarks/lrp_crosscheck.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis as fv
from featvis.attribution import saliency
from featvis.attribution.lrp import COMPOSITES, STABILIZER, lrp
from featvis.errors import FeatvisError

from _models import TinyViT

SIDE = 12
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


# --- the reference: a tape of one image's float64 forward, walked backwards rule by rule ------------------------

def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * ((z == 0).double() + z.sign())


def _spread(zij: torch.Tensor, zj: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_j z_ij / z_j · R_j (z_j stabilized)."""
    return (zij / _stab(zj, STABILIZER) * rel).sum(1)


def rule_relevance(rule: str, a, w, b, rel, opts) -> torch.Tensor:
    """One affine layer z = W a + b, W [out, in]: the input relevance [in] from the output relevance [out]."""
    wt = w.T  # w_ij: input i, output j
    ap, an = a.clamp(min=0)[:, None], a.clamp(max=0)[:, None]
    wp, wn, bp, bn = wt.clamp(min=0), wt.clamp(max=0), b.clamp(min=0), b.clamp(max=0)
    if rule == "epsilon":  # Bach et al. 2015: R_i = Σ_j a_i w_ij / (z_j + ε sign z_j) R_j
        zij = a[:, None] * wt
        return (zij / _stab(zij.sum(0) + b, opts["epsilon"]) * rel).sum(1)
    if rule == "norm":  # a parameter-free linear map (pooling): epsilon with the stabilizer only
        zij = a[:, None] * wt
        return _spread(zij, zij.sum(0), rel)
    if rule == "zplus":  # z⁺, negative inputs allowed (alpha=1, beta=0)
        zij = ap * wp + an * wn
        return _spread(zij, zij.sum(0) + bp, rel)
    if rule == "alpha-beta":
        zpos, zneg = ap * wp + an * wn, ap * wn + an * wp
        return (opts["alpha"] * _spread(zpos, zpos.sum(0) + bp, rel)
                - opts["beta"] * _spread(zneg, zneg.sum(0) + bn, rel))
    if rule == "gamma":  # generalized gamma: positive outputs favour positive contributions, negative ones negative
        g, z = opts["gamma"], a @ wt + b
        up = ap * (wt + g * wp) + an * (wt + g * wn)
        down = ap * (wt + g * wn) + an * (wt + g * wp)
        return (_spread(up, up.sum(0) + b + g * bp, rel * (z > 0))
                + _spread(down, down.sum(0) + b + g * bn, rel * (z < 0)))
    if rule == "box":  # z^B (Montavon et al. 2017) with per-input bounds l, h
        low, high = opts["low"][:, None], opts["high"][:, None]
        zij = a[:, None] * wt - low * wp - high * wn
        return _spread(zij, zij.sum(0), rel)
    raise AssertionError(rule)


class Tape:
    """Records one image's forward in float64, op by op, then propagates relevance back through it explicitly."""

    def __init__(self, composite: str, **opts) -> None:
        self.composite, self.opts, self.ops = composite, opts, []

    def _affine(self, a, fn, bias, kind):
        """z = fn(a) + bias as a dense matrix W [out, in] (fn linear and batched: its columns are fn of the basis)
        and a bias [out]."""
        flat = a.flatten()
        w = fn(torch.eye(flat.numel(), dtype=torch.float64).view(-1, *a.shape)).flatten(1).T
        out_shape = fn(a[None]).shape[1:]
        b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else \
            bias.double().repeat_interleave(w.shape[0] // bias.numel())
        z = (w @ flat + b).view(out_shape)
        if kind == "pool":
            rule = "norm"
        elif not any(op[0] == "affine" and op[-1] != "norm" for op in self.ops) and \
                self.composite == "epsilon-gamma-box":
            rule = "box"
        elif kind == "linear" or self.composite == "epsilon":
            rule = "epsilon"
        else:
            rule = {"epsilon-plus": "zplus", "epsilon-gamma-box": "gamma", "alpha-beta": "alpha-beta"}[self.composite]
        self.ops.append(("affine", a, z, w, b, rule))
        return z

    def conv(self, a, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None):
        """conv, with the BatchNorm after it merged in: W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β."""
        w = conv.weight.double()
        b = None if conv.bias is None else conv.bias.double()
        if bn is not None:
            scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
            w = w * scale[:, None, None, None]
            b = ((torch.zeros_like(scale) if b is None else b) - bn.running_mean.double()) * scale + bn.bias.double()
        return self._affine(a, lambda v: F.conv2d(v, w, None, conv.stride, conv.padding, conv.dilation,
                                                  conv.groups), b, "conv")

    def linear(self, a, fc: nn.Linear):
        return self._affine(a, lambda v: v.flatten(1) @ fc.weight.double().T, fc.bias, "linear")

    def avg_pool(self, a, size: int):
        return self._affine(a, lambda v: F.avg_pool2d(v, size), None, "pool")

    def act(self, a, fn):  # activations pass relevance through
        out = fn(a)
        self.ops.append(("pass", a, out))
        return out

    def max_pool(self, a, size: int):  # winner takes all
        out, index = (t[0] for t in F.max_pool2d(a[None], size, return_indices=True))
        self.ops.append(("max", a, out, index))
        return out

    def add(self, a, b):  # proportional split
        out = a + b
        self.ops.append(("sum", (a, b), out))
        return out

    def gate(self, signal, gate):  # signal takes all
        out = signal * gate
        self.ops.append(("pass", signal, out))
        return out

    def relevance(self, x, target: int) -> torch.Tensor:
        logits = self.ops[-1][2]
        rel = {id(logits): torch.zeros_like(logits).index_fill(0, torch.tensor([target]), logits[target].item())}
        for op in reversed(self.ops):
            kind, inp, out = op[:3]
            r = rel.pop(id(out), torch.zeros_like(out))
            if kind == "affine":
                _, _, _, w, b, rule = op
                opts = self.opts
                if rule == "box":
                    opts = {**opts, **{k: self.opts[k].expand_as(inp).flatten() for k in ("low", "high")}}
                got = [(inp, rule_relevance(rule, inp.flatten(), w, b, r.flatten(), opts).view(inp.shape))]
            elif kind == "pass":
                got = [(inp, r)]
            elif kind == "max":
                got = [(inp, torch.zeros_like(inp).flatten(1).scatter_add(1, op[3].flatten(1), r.flatten(1))
                        .view(inp.shape))]
            else:  # sum
                s = r / _stab(out, STABILIZER)
                got = [(inp[0], inp[0] * s), (inp[1], inp[1] * s)]
            for t, value in got:
                rel[id(t)] = rel.get(id(t), 0) + value
        return rel[id(x)]


def reference(clf: fv.Classifier, images: torch.Tensor, targets, composite: str, **opts) -> torch.Tensor:
    """LRP by the tape, image by image, at the normalized input (normalization passes relevance through)."""
    mean, std = clf.mean.double(), clf.std.double()
    full = {"epsilon": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0, **opts,
            "low": ((0 - mean) / std)[0], "high": ((1 - mean) / std)[0]}
    maps = []
    for image, t in zip(images.double(), targets, strict=True):
        x = ((image - mean) / std)[0]
        tape = Tape(composite, **full)
        with torch.no_grad():
            logits = clf.net.reference(tape, x)
            torch.testing.assert_close(logits.float(), clf(image[None].float())[0], rtol=1e-4, atol=1e-4)
        maps.append(tape.relevance(x, t))
    return torch.stack(maps)


# --- hand-built nets, each with its reference forward written out on the tape -----------------------------------

def _seeded(net: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics, so the merge matters
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


class PlainNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU6 (saturating: bn2's scale is large), max pool, conv-ReLU, avg pool, two linears."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.pool, self.conv3, self.avg = nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1, stride=1), nn.AvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(8 * 3 * 3, 16), nn.Linear(16, 4)
        _seeded(self, 0)
        with torch.no_grad():
            self.bn2.weight.mul_(8)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.pool(self.act2(self.bn2(self.conv2(x))))
        x = self.avg(F.relu(self.conv3(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    def reference(self, t: Tape, x):
        x = t.act(t.conv(x, self.conv1, self.bn1), torch.relu)
        x = t.max_pool(t.act(t.conv(x, self.conv2, self.bn2), lambda v: v.clamp(0, 6)), 2)
        x = t.avg_pool(t.act(t.conv(x, self.conv3), torch.relu), 2)
        return t.linear(t.act(t.linear(x, self.fc1), torch.relu), self.fc2)


class ResidualNet(nn.Module):
    """conv-BN-ReLU, a basic residual block (`out += identity`), global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(True)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv3, self.bn3 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(6, 4)
        _seeded(self, 1)

    def forward(self, x):
        identity = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(identity)))))
        out += identity
        return self.fc(torch.flatten(self.pool(self.relu(out)), 1))

    def reference(self, t: Tape, x):
        identity = t.act(t.conv(x, self.conv1, self.bn1), torch.relu)
        out = t.conv(t.act(t.conv(identity, self.conv2, self.bn2), torch.relu), self.conv3, self.bn3)
        out = t.act(t.add(out, identity), torch.relu)
        return t.linear(t.avg_pool(out, SIDE), self.fc)


class GatedNet(nn.Module):
    """conv-ReLU, a squeeze-and-excitation gate (`x * sigmoid(...)` over channels), conv-ReLU6, mean pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.reduce, self.expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.act, self.fc = nn.ReLU6(), nn.Linear(8, 4)
        _seeded(self, 2)

    def gate(self, x):
        return torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = x * self.gate(x)
        return self.fc(self.act(self.conv2(x)).mean((2, 3)))

    def reference(self, t: Tape, x):
        x = t.act(t.conv(x, self.conv1), torch.relu)
        s = F.relu(F.conv2d(x.mean((1, 2), keepdim=True)[None], self.reduce.weight.double(), self.reduce.bias.double()))
        gate = torch.sigmoid(F.conv2d(s, self.expand.weight.double(), self.expand.bias.double()))[0]
        x = t.gate(x, gate)  # the gate gets no relevance: its branch is not on the tape
        return t.linear(t.avg_pool(t.act(t.conv(x, self.conv2), lambda v: v.clamp(0, 6)), SIDE // 2), self.fc)


class BiasFreeNet(nn.Module):
    """No bias and no BatchNorm anywhere: conv-ReLU, max pool, a residual sum, conv-ReLU, average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.pool, self.avg, self.fc = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Linear(6, 4, bias=False)
        _seeded(self, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.relu(self.conv2(x)) + x
        return self.fc(self.avg(x).flatten(1))


def _wrap(net: nn.Module) -> fv.Classifier:
    return fv.Classifier.wrap(net.eval(), labels=list("abcd"), input_size=SIDE, mean=MEAN, std=STD)


NETS = {"plain": PlainNet, "residual": ResidualNet, "gated": GatedNet}


@pytest.fixture(scope="module")
def nets() -> dict[str, fv.Classifier]:
    torch.set_num_threads(2)
    return {name: _wrap(cls()) for name, cls in NETS.items()}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


TARGETS = [0, 2, 3]


# --- the rules against the reference ------------------------------------------------------------------------------

@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("net", list(NETS))
def test_lrp_equals_the_explicit_float64_rules(nets, images, net, composite):
    clf = nets[net]
    ours = lrp(clf, images, TARGETS, composite=composite, reduce="none")
    ref = reference(clf, images, TARGETS, composite)
    err = ((ours.double() - ref).abs().amax((1, 2, 3)) / ref.abs().amax((1, 2, 3))).max().item()
    print(f"lrp {composite} on {net}: max |ours − float64 reference| / max |reference| = {err:.1e}")
    assert ref.abs().amax((1, 2, 3)).min() > 0
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_the_reference_tells_the_rules_apart(nets, images):
    """Each composite's map differs from every other's on every net: the comparison above can fail."""
    for name, clf in nets.items():
        maps = {c: lrp(clf, images[:1], TARGETS[:1], composite=c, reduce="none") for c in COMPOSITES}
        for i, a in enumerate(COMPOSITES):
            for b in COMPOSITES[i + 1:]:
                gap = (maps[a] - maps[b]).abs().max() / maps[b].abs().max()
                assert gap > 0.05, (name, a, b, gap.item())


def test_relu6_saturates_and_keeps_its_relevance(nets, images):
    """bn2 drives ReLU6 past 6; the pass rule keeps that relevance, where the gradient (and so LRP-0 as
    gradient × input) would drop it: the epsilon map is not gradient × input on this net."""
    clf = nets["plain"]
    net = clf.net
    with torch.no_grad():
        pre = net.bn2(net.conv2(net.act1(net.bn1(net.conv1(clf.normalize(images))))))
    assert (pre > 6).float().mean() > 0.05
    ours = lrp(clf, images, TARGETS, composite="epsilon", epsilon=1e-9, reduce="none")
    x = images.clone().requires_grad_(True)
    normalized = clf.normalize(x)
    grads = torch.autograd.grad(clf.net(normalized).gather(1, torch.tensor(TARGETS)[:, None]).sum(), normalized)[0]
    assert (ours - grads * clf.normalize(images)).abs().max() > 0.05 * ours.abs().max()


@pytest.mark.parametrize("net", ["residual", "bias-free"])
def test_lrp0_on_relu_nets_is_gradient_times_input(nets, images, net):
    """LRP-0 (epsilon → 0) on a ReLU network with sums, max and average pools is gradient × input at the normalized
    input (Ancona et al. 2018), biases and all."""
    clf = nets["residual"] if net == "residual" else _wrap(BiasFreeNet())
    ours = lrp(clf, images, TARGETS, composite="epsilon", epsilon=1e-9, reduce="none")
    normalized = clf.normalize(images).requires_grad_(True)
    grads = torch.autograd.grad(clf.net(normalized).gather(1, torch.tensor(TARGETS)[:, None]).sum(), normalized)[0]
    torch.testing.assert_close(ours, grads * normalized.detach(), rtol=1e-3, atol=1e-4 * ours.abs().max().item())


# --- conservation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("composite", COMPOSITES)
def test_relevance_sums_to_the_logit_without_biases(images, composite):
    clf = _wrap(BiasFreeNet())
    maps = lrp(clf, images, TARGETS, composite=composite, epsilon=1e-9)
    with torch.no_grad():
        logits = clf(images).gather(1, torch.tensor(TARGETS)[:, None])[:, 0]
    print(f"{composite}: map sums {maps.flatten(1).sum(1).tolist()} vs logits {logits.tolist()}")
    torch.testing.assert_close(maps.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-5)


def test_biases_absorb_relevance(nets, images):
    """The same sum on a net with biases and BatchNorm misses the logit: conservation above is not automatic."""
    clf = nets["plain"]
    maps = lrp(clf, images, TARGETS, composite="epsilon", epsilon=1e-9)
    with torch.no_grad():
        logits = clf(images).gather(1, torch.tensor(TARGETS)[:, None])[:, 0]
    assert ((maps.flatten(1).sum(1) - logits).abs() > 0.05 * logits.abs()).any()


# --- options, refusals, the registry, hygiene --------------------------------------------------------------------

def test_a_batch_equals_its_images_one_by_one(nets, images):
    clf = nets["residual"]
    whole = lrp(clf, images, TARGETS, composite="epsilon-gamma-box")
    singles = torch.cat([lrp(clf, images[i:i + 1], TARGETS[i], composite="epsilon-gamma-box") for i in range(3)])
    chunked = lrp(clf, images, TARGETS, composite="epsilon-gamma-box", batch_size=2)
    torch.testing.assert_close(whole, singles, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_registry_entry_and_aliases_run_the_same_lrp(nets, images):
    clf = nets["gated"]
    direct = lrp(clf, images, TARGETS, composite="alpha-beta")
    for name in ("lrp", "layerwise-relevance", "relevance-propagation"):
        torch.testing.assert_close(saliency(clf, images, TARGETS, method=name, composite="alpha-beta"), direct)
    assert "lrp" in fv.attribution.methods()
    torch.testing.assert_close(direct, lrp(clf, images, TARGETS, composite="alpha-beta", reduce="none").sum(1))


def test_the_users_model_is_left_as_it_was(nets, images):
    clf = nets["plain"]
    before = {k: v.clone() for k, v in clf.net.state_dict().items()}
    forwards = {n: m.forward for n, m in clf.net.named_modules()}
    lrp(clf, images, TARGETS, composite="epsilon-gamma-box")
    for k, v in clf.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all("forward" not in m.__dict__ for m in clf.net.modules())
    assert {n: m.forward for n, m in clf.net.named_modules()}.keys() == forwards.keys()
    assert not clf.net.training


def test_vision_transformers_are_refused_in_one_line(images):
    vit = fv.Classifier.wrap(TinyViT(classes=4).eval(), labels=list("abcd"), input_size=32)
    with pytest.raises(FeatvisError, match="self-attention") as err:
        lrp(vit, torch.rand(1, 3, 32, 32))
    assert "\n" not in str(err.value) and "MultiheadAttention" in str(err.value)


@pytest.mark.parametrize(("opts", "match"), [({"composite": "zplus"}, "unknown composite 'zplus'"),
                                             ({"composite": "alpha-beta", "alpha": 1.0, "beta": 1.0}, "alpha - beta")])
def test_bad_options_are_refused_in_one_line(nets, images, opts, match):
    with pytest.raises(FeatvisError, match=match) as err:
        lrp(nets["plain"], images, TARGETS, **opts)
    assert "\n" not in str(err.value)


def test_a_product_of_two_like_activations_is_refused():
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4)

        def forward(self, x):
            x = self.conv(x)
            return self.fc((x * x).mean((2, 3)))

    with pytest.raises(FeatvisError, match="product of two activations"):
        lrp(_wrap(Square()), torch.rand(1, 3, SIDE, SIDE))
