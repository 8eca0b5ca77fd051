"""Importance criteria against direct, hand-written per-channel formulas.

Every expectation here is computed from the model's tensors with the channel correspondence written by hand
(channel ``c`` of a conv output is row ``c`` of its weight, column ``c`` of the next conv, ...), never with
fxprune's own helpers; only ``group.all_classes`` is read, to check the class order the scores follow.
"""
from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn

import fxprune
import fxprune.importance as imp
from fxprune.errors import FxpruneError, PlanError

# ------------------------------------------------------------------------------------------------ models

class Chain(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> flatten -> fc (fc sees 16 features per conv2 channel)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(y)).flatten(1))


class ResGrouped(nn.Module):
    """A residual around a grouped conv (groups=2): input channels k and k+4 share weight column k."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + self.bn2(self.conv2(y))
        return self.conv3(y)


class CatNet(nn.Module):
    """a (2 ch) and b (3 ch) concatenated into c: a's classes are not in b and vice versa."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def _randomize_bn(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.randn(mod.num_features))
                mod.bias.copy_(torch.randn(mod.num_features))
                mod.running_mean.copy_(torch.randn(mod.num_features))
                mod.running_var.copy_(torch.rand(mod.num_features) + 0.5)
    return m.eval()


@pytest.fixture
def chain():
    m = _randomize_bn(Chain())
    return m, fxprune.analyze(m, torch.randn(2, 3, 4, 4))


@pytest.fixture
def res():
    m = _randomize_bn(ResGrouped())
    return m, fxprune.analyze(m, torch.randn(2, 3, 4, 4))


# ------------------------------------------------------------------------------------------ direct formulas

def rows_pow(w: torch.Tensor, dim: int, p: float = 2) -> torch.Tensor:
    """Per index along ``dim``: sum of |w|^p over every other element, by an explicit loop."""
    return torch.stack([w.select(dim, i).abs().pow(p).sum() for i in range(w.shape[dim])]).double()


def fc_in_per_channel(per_feature: torch.Tensor, hw: int = 16) -> torch.Tensor:
    """fc input features c*hw .. c*hw+hw-1 come from channel c of the flattened conv output."""
    return torch.stack([per_feature[c * hw:(c + 1) * hw].sum() for c in range(len(per_feature) // hw)])


def chain_conv1_layers(m: Chain, f) -> dict:
    """The target layers of Chain's conv1 group, each as a per-channel vector (channel c everywhere)."""
    return {"conv1.weight:0": f(m.conv1.weight, 0), "bn1.weight:0": f(m.bn1.weight, 0),
            "conv2.weight:1": f(m.conv2.weight, 1)}


def assert_rows_match(got: torch.Tensor, expected: list, rtol: float = 1e-5) -> None:
    """``got`` ([n_layers, n]) holds exactly the expected vectors, in any order."""
    assert got.shape == (len(expected), len(expected[0]))
    left = list(range(len(expected)))
    for row in got.double():
        hit = [i for i in left if torch.allclose(row, expected[i].double(), rtol=rtol, atol=1e-6)]
        assert hit, f"row {row} matches no expected layer"
        left.remove(hit[0])


RAW = {"layer_normalizer": None, "bn_shift": False}  # Torch-Pruning's raw magnitudes: mean over layers, |gamma|^p


def lamp_direct(s: torch.Tensor) -> torch.Tensor:
    return torch.stack([s[i] / s[s >= s[i]].sum() for i in range(len(s))])


# ----------------------------------------------------------------------------------------------- magnitude

@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_chain_per_layer_and_mean(chain, p):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    assert g.all_classes == [("conv1.weight:0", [c]) for c in range(8)]
    layers = chain_conv1_layers(m, lambda w, d: rows_pow(w.detach(), d, p))
    got = imp.MagnitudeImportance(p=p, group_reduction=None, normalizer=None, **RAW)(g, m)
    assert_rows_match(got, list(layers.values()))
    mean = sum(layers.values()) / 3
    torch.testing.assert_close(imp.MagnitudeImportance(p=p, **RAW)(g, m).double(), mean / mean.mean(), rtol=1e-5,
                               atol=0)


def test_magnitude_bias_adds_bias_layers(chain):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    got = imp.MagnitudeImportance(bias=True, group_reduction=None, normalizer=None, **RAW)(g, m)
    expected = list(chain_conv1_layers(m, lambda w, d: rows_pow(w.detach(), d)).values())
    expected += [m.conv1.bias.detach().double() ** 2, m.bn1.bias.detach().double() ** 2]
    assert_rows_match(got, expected)


def test_magnitude_flatten_linear_block(chain):
    m, graph = chain
    g = graph.group_of("conv2.weight", 0)
    assert g.all_classes == [("conv2.weight:0", [c]) for c in range(6)]
    got = imp.MagnitudeImportance(group_reduction="sum", normalizer=None, **RAW)(g, m).double()
    expected = rows_pow(m.conv2.weight.detach(), 0) + fc_in_per_channel(rows_pow(m.fc.weight.detach(), 1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_magnitude_grouped_residual_classes_of_two(res):
    m, graph = res
    g = graph.group_of("conv1.weight", 0)
    assert g.all_classes == [("conv1.weight:0", [k, k + 4]) for k in range(4)]
    w = {n: t.detach() for n, t in m.named_parameters()}
    pair = lambda v: torch.stack([v[k] + v[k + 4] for k in range(4)])
    layers = [pair(rows_pow(w["conv1.weight"], 0)), pair(w["bn1.weight"].double() ** 2),
              pair(rows_pow(w["conv2.weight"], 0)), rows_pow(w["conv2.weight"], 1),  # one shared column
              pair(w["bn2.weight"].double() ** 2), pair(rows_pow(w["conv3.weight"], 1))]
    got = imp.MagnitudeImportance(group_reduction=None, normalizer=None, **RAW)(g, m)
    assert_rows_match(got, layers)
    got_mean = imp.MagnitudeImportance(normalizer=None, **RAW)(g, m).double()
    torch.testing.assert_close(got_mean, sum(layers) / 6, rtol=1e-5, atol=0)


def test_reduction_counts_contributing_layers_only():
    m = CatNet()
    g = fxprune.analyze(m, torch.randn(1, 3, 4, 4)).group_of("a.weight", 0)
    assert [c for c in g.all_classes] == [("a.weight:0", [0]), ("a.weight:0", [1]), ("b.weight:0", [0]),
                                          ("b.weight:0", [1]), ("b.weight:0", [2])]
    own = torch.cat([rows_pow(m.a.weight.detach(), 0), rows_pow(m.b.weight.detach(), 0)])
    col = rows_pow(m.c.weight.detach(), 1)
    scorer = lambda how: imp.MagnitudeImportance(group_reduction=how, normalizer=None, **RAW)(g, m).double()
    torch.testing.assert_close(scorer("mean"), (own + col) / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(scorer("prod"), own * col, rtol=1e-5, atol=0)
    torch.testing.assert_close(scorer("max"), torch.maximum(own, col), rtol=1e-5, atol=0)
    torch.testing.assert_close(scorer("first"), own, rtol=1e-5, atol=0)
    torch.testing.assert_close(scorer("gate"), col, rtol=1e-5, atol=0)
    stacked = scorer(None)  # a, b, c in group order; a does not touch b's classes
    assert stacked.shape == (3, 5)
    assert (stacked[0, 2:] == 0).all() and (stacked[1, :2] == 0).all()


def test_magnitude_resnet18_stem_group():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = _randomize_bn(torchvision.models.resnet18(weights=None))
    g = fxprune.analyze(m, torch.randn(1, 3, 64, 64)).group_of("conv1.weight", 0)
    assert g.all_classes == [("conv1.weight:0", [c]) for c in range(64)]
    w = {n: t.detach() for n, t in m.named_parameters()}
    names = [("conv1.weight", 0), ("bn1.weight", 0), ("layer1.0.conv1.weight", 1), ("layer1.0.conv2.weight", 0),
             ("layer1.0.bn2.weight", 0), ("layer1.1.conv1.weight", 1), ("layer1.1.conv2.weight", 0),
             ("layer1.1.bn2.weight", 0), ("layer2.0.conv1.weight", 1), ("layer2.0.downsample.0.weight", 1)]
    layers = [rows_pow(w[n], d) for n, d in names]
    assert_rows_match(imp.MagnitudeImportance(group_reduction=None, normalizer=None, **RAW)(g, m), layers)
    mean = sum(layers) / len(layers)
    torch.testing.assert_close(imp.MagnitudeImportance(**RAW)(g, m).double(), mean / mean.mean(), rtol=1e-5, atol=0)
    gm_scores = imp.MagnitudeImportance()(g, fxprune.analyze(m, torch.randn(1, 3, 64, 64)).gm)
    torch.testing.assert_close(gm_scores, imp.MagnitudeImportance()(g, m))  # the traced gm scores the same


def test_bn_scale_and_lamp(chain):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    gam, beta = m.bn1.weight.detach(), m.bn1.bias.detach()
    torch.testing.assert_close(imp.BNScaleImportance(normalizer=None, shift=False)(g, m), gam.abs())
    # default: the mean |gamma * z + beta| over z ~ N(0, 1), here by numerical integration
    torch.testing.assert_close(imp.BNScaleImportance(normalizer=None)(g, m).double(),
                               bn_output_moment(gam, beta, 1), rtol=1e-4, atol=1e-6)
    assert imp.BNScaleImportance()(graph.group_of("conv2.weight", 0), m) is None  # no BatchNorm in it
    raw = sum(chain_conv1_layers(m, lambda w, d: rows_pow(w.detach(), d)).values()) / 3
    torch.testing.assert_close(imp.LAMPImportance(**RAW)(g, m).double(), lamp_direct(raw), rtol=1e-5, atol=0)
    torch.testing.assert_close(imp.LAMPImportance()(g, m).double(), lamp_direct(magnitude_default(m, 2)),
                               rtol=1e-4, atol=0)


def bn_output_moment(gam: torch.Tensor, beta: torch.Tensor, p: float) -> torch.Tensor:
    """E|gam * z + beta|^p, z ~ N(0, 1), by the trapezoid rule on [-12, 12] (no closed form used)."""
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    dens = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    return torch.stack([torch.trapezoid((g * z + b).abs() ** p * dens, z)
                        for g, b in zip(gam.double(), beta.double())])


def magnitude_default(m: Chain, p: float) -> torch.Tensor:
    """The default magnitude of Chain's conv1 group, by hand: conv1 rows, the BatchNorm output's p-th moment
    E|gamma z + beta|^p and conv2 columns, each divided by its own mean over the 8 channels, then averaged."""
    w1, w2 = m.conv1.weight.detach().double(), m.conv2.weight.detach().double()
    gam, beta = m.bn1.weight.detach().double(), m.bn1.bias.detach().double()
    layers = [torch.stack([w1[c].abs().pow(p).sum() for c in range(8)]), bn_output_moment(gam, beta, p),
              torch.stack([w2[:, c].abs().pow(p).sum() for c in range(8)])]
    return sum(v / v.mean() for v in layers) / 3


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_default_normalises_each_layer_and_counts_bn_shift(chain, p):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    expected = magnitude_default(m, p)
    got = imp.MagnitudeImportance(p=p, normalizer=None)(g, m).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(imp.get_importance("l2" if p == 2 else "l1")(g, m).double(),
                               expected / expected.mean(), rtol=1e-4, atol=0)
    # scaling a layer's weights (what a following BatchNorm makes harmless) does not change the scores
    with torch.no_grad():
        m.conv2.weight.mul_(100.0)
    torch.testing.assert_close(imp.MagnitudeImportance(p=p, normalizer=None)(g, m).double(), expected,
                               rtol=1e-4, atol=0)
    raw = imp.MagnitudeImportance(p=p, normalizer=None, **RAW)(g, m).double()
    assert not torch.allclose(raw / raw.mean(), expected / expected.mean(), rtol=1e-2)  # raw: conv2 decides


def test_layer_normalizer_over_the_classes_a_layer_holds():
    """CatNet: a holds classes 0-1, b 2-4, c's columns all five; each is normalised over its own classes."""
    torch.manual_seed(0)
    m = CatNet()
    g = fxprune.analyze(m, torch.randn(1, 3, 4, 4)).group_of("a.weight", 0)
    a, b = rows_pow(m.a.weight.detach(), 0), rows_pow(m.b.weight.detach(), 0)
    col = rows_pow(m.c.weight.detach(), 1)
    own = torch.cat([a / a.mean(), b / b.mean()])
    got = imp.MagnitudeImportance(normalizer=None)(g, m).double()
    torch.testing.assert_close(got, (own + col / col.mean()) / 2, rtol=1e-5, atol=0)
    got_max = imp.MagnitudeImportance(normalizer=None, layer_normalizer="max")(g, m).double()
    torch.testing.assert_close(got_max, (torch.cat([a / a.max(), b / b.max()]) + col / col.max()) / 2,
                               rtol=1e-5, atol=0)
    with pytest.raises(PlanError, match="normalizer"):
        imp.MagnitudeImportance(layer_normalizer="median")


def test_gradient_and_activation_criteria_keep_raw_layers(chain):
    """Taylor / Hessian scores are loss changes and activations are input magnitudes: one unit across layers,
    so their layers are averaged as they are (no layer normaliser)."""
    for crit in (imp.TaylorImportance(), imp.HessianImportance(), imp.ActivationImportance(), imp.FPGMImportance(),
                 imp.BNScaleImportance()):
        assert crit.layer_normalizer is None
    assert imp.MagnitudeImportance().layer_normalizer == "mean" and imp.LAMPImportance().layer_normalizer == "mean"


def test_fpgm(chain):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)

    def fpgm(w, d, p=2):
        rows = [w.detach().select(d, i).abs().pow(p).flatten().double() for i in range(w.shape[d])]
        return torch.tensor([sum(math.sqrt(((a - b) ** 2).sum()) for b in rows) for a in rows], dtype=torch.float64)

    expected = [fpgm(m.conv1.weight, 0), fpgm(m.conv2.weight, 1)]  # BatchNorm does not count
    assert_rows_match(imp.FPGMImportance(group_reduction=None, normalizer=None)(g, m), expected)
    expected1 = [fpgm(m.conv1.weight, 0, 1), fpgm(m.conv2.weight, 1, 1)]
    assert_rows_match(imp.FPGMImportance(p=1, group_reduction=None, normalizer=None)(g, m), expected1)


# ------------------------------------------------------------------------------------------- gradient based

def test_taylor_includes_batchnorm(chain):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    m.train()
    m(torch.randn(4, 3, 4, 4)).pow(2).sum().backward()

    def taylor(w, d, multi=False):
        prods = [(w.select(d, i) * w.grad.select(d, i)).detach().double() for i in range(w.shape[d])]
        return torch.stack([p.sum().abs() if multi else p.abs().sum() for p in prods])

    for multi in (False, True):
        got = imp.TaylorImportance(group_reduction=None, normalizer=None, multivariable=multi)(g, m)
        expected = list(chain_conv1_layers(m, functools.partial(taylor, multi=multi)).values())
        assert_rows_match(got, expected, rtol=1e-4)
    bn_row = (m.bn1.weight * m.bn1.weight.grad).abs().detach().double()
    assert bn_row.abs().sum() > 0
    assert_rows_match(imp.TaylorImportance(group_reduction=None, normalizer=None,
                                           target_types=(nn.BatchNorm2d,))(g, m), [bn_row], rtol=1e-4)


def test_taylor_accumulated_samples_mean_of_squared_sums(chain):
    """With accumulate_grad: per index, the mean over samples of (sum of W * dW over the index)^2."""
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    t = imp.TaylorImportance(group_reduction=None, normalizer=None)
    prods = []
    for x in torch.randn(3, 2, 3, 4, 4):
        m.zero_grad()
        m(x).pow(2).sum().backward()
        t.accumulate_grad(m)
        prods.append({n: (p * p.grad).detach().double() for n, p in m.named_parameters()})

    def molchanov(w, d):
        name = next(n for n, p in m.named_parameters() if p is w)
        return torch.stack([sum(pr[name].select(d, i).sum() ** 2 for pr in prods) / 3 for i in range(w.shape[d])])

    expected = list(chain_conv1_layers(m, molchanov).values())
    assert_rows_match(t(g, m), expected, rtol=1e-4)
    summed = imp.TaylorImportance(group_reduction=None, normalizer=None)(g, m)  # last .grad only: different
    assert not torch.allclose(summed.double(), t(g, m).double(), rtol=1e-2)
    t.zero_grad()
    assert_rows_match(t(g, m), [r.double() for r in summed], rtol=1e-5)  # back to .grad


def test_taylor_without_grad_names_the_parameter(chain):
    m, graph = chain
    with pytest.raises(FxpruneError, match="conv1.weight"):
        imp.TaylorImportance()(graph.group_of("conv1.weight", 0), m)


def test_hessian_accumulates_every_sample(chain):
    m, graph = chain
    g = graph.group_of("conv2.weight", 0)
    h = imp.HessianImportance(group_reduction=None, normalizer=None)
    xs = torch.randn(3, 1, 3, 4, 4)
    grads = []
    for x in xs:
        m.zero_grad()
        m(x).pow(2).sum().backward()
        h.accumulate_grad(m)
        grads.append({n: p.grad.detach().clone() for n, p in m.named_parameters()})
    mean_sq = {n: sum(gr[n] ** 2 for gr in grads) / 3 for n in grads[0]}
    last_sq = {n: grads[-1][n] ** 2 for n in grads[0]}

    def obd(sq, name, d):
        w = dict(m.named_parameters())[name].detach()
        return torch.stack([(w.select(d, i) ** 2 * sq[name].select(d, i)).sum() for i in range(w.shape[d])])

    expected = [obd(mean_sq, "conv2.weight", 0), fc_in_per_channel(obd(mean_sq, "fc.weight", 1))]
    got = h(g, m)
    assert_rows_match(got, [e.double() for e in expected], rtol=1e-4)
    last = obd(last_sq, "conv2.weight", 0).double()
    assert not any(torch.allclose(r.double(), last, rtol=1e-3) for r in got)  # not just the last sample
    torch.testing.assert_close(h(g, m), got)  # scoring does not consume the accumulated samples
    h.zero_grad()
    with pytest.raises(PlanError, match="conv2.weight"):
        h(g, m)


# ------------------------------------------------------------------------------------------------ activation

def test_activation_mean_abs_input_over_batches(chain):
    m, graph = chain
    batches = [torch.randn(3, 3, 4, 4), torch.randn(5, 3, 4, 4)]
    a = imp.ActivationImportance(normalizer=None)
    with pytest.raises(PlanError, match="calibration"):
        a(graph.group_of("conv1.weight", 0), m)
    with torch.no_grad():
        with a.compute_importance(m):
            for x in batches:
                m(x)
        assert not m.conv2._forward_pre_hooks  # hooks removed on exit
        conv2_in = torch.cat([torch.relu(m.bn1(m.conv1(x))) for x in batches])
        fc_in = torch.cat([torch.relu(m.conv2(torch.relu(m.bn1(m.conv1(x))))).flatten(1) for x in batches])
    expect1 = conv2_in.abs().double().mean(dim=(0, 2, 3))
    torch.testing.assert_close(a(graph.group_of("conv1.weight", 0), m).double(), expect1, rtol=1e-5, atol=1e-7)
    expect2 = fc_in_per_channel(fc_in.abs().double().mean(0))
    torch.testing.assert_close(a(graph.group_of("conv2.weight", 0), m).double(), expect2, rtol=1e-5, atol=1e-7)


def test_activation_grouped_conv(res):
    m, graph = res
    x = torch.randn(4, 3, 4, 4)
    a = imp.ActivationImportance(group_reduction=None, normalizer=None)
    with torch.no_grad(), a.compute_importance(m):
        m(x)
    with torch.no_grad():
        y = torch.relu(m.bn1(m.conv1(x)))
        z = y + m.bn2(m.conv2(y))
    act_y, act_z = y.abs().double().mean((0, 2, 3)), z.abs().double().mean((0, 2, 3))
    pair = lambda v: torch.stack([v[k] + v[k + 4] for k in range(4)])
    assert_rows_match(a(graph.group_of("conv1.weight", 0), m), [pair(act_y), pair(act_z)])


# ------------------------------------------------------------------------------------ reductions, normalizers

def test_reduce_scores_against_manual():
    s = torch.rand(4, 6, dtype=torch.float64) + 0.1
    mask = torch.rand(4, 6) > 0.4
    mask[:, 5] = False  # a class no layer touches scores 0
    got = {how: imp.reduce_scores(s, how, mask) for how in ("mean", "sum", "max", "prod", "first", "gate")}
    for c in range(6):
        vals = [s[i, c].item() for i in range(4) if mask[i, c]]
        if not vals:
            assert all(v[c] == 0 for v in got.values())
            continue
        exp = {"mean": sum(vals) / len(vals), "sum": sum(vals), "max": max(vals), "prod": math.prod(vals),
               "first": vals[0], "gate": vals[-1]}
        for how, v in exp.items():
            assert got[how][c].item() == pytest.approx(v, rel=1e-12), how
    torch.testing.assert_close(imp.reduce_scores(s, None, mask), s * mask)
    torch.testing.assert_close(imp.reduce_scores(s, "mean"), s.mean(0))


def test_normalizers_against_manual():
    s = torch.tensor([0.5, 3.0, 1.25, 2.0, 0.75, 4.5], dtype=torch.float64)
    mean = sum(s.tolist()) / len(s)
    std = math.sqrt(sum((v - mean) ** 2 for v in s.tolist()) / (len(s) - 1))
    lo, hi = min(s.tolist()), max(s.tolist())
    expected = {
        "sum": s / sum(s.tolist()), "mean": s / mean, "max": s / hi,
        "standarization": (s - lo) / (hi - lo), "standardization": (s - lo) / (hi - lo),
        "gaussian": (s - mean) / std, "sentinel_0.5": s / sorted(s.tolist())[3],
        "sentinel_0": s / lo, "lamp": lamp_direct(s),
    }
    for how, exp in expected.items():
        torch.testing.assert_close(imp.normalize(s, how), exp, rtol=1e-6, atol=1e-7, msg=how)
    assert imp.normalize(s, None) is s
    torch.testing.assert_close(imp.normalize(s, lambda t: t * 2), s * 2)
    torch.testing.assert_close(imp.normalize(torch.zeros(3), "mean"), torch.zeros(3))  # no NaN
    two = torch.stack([s, s * 3])
    torch.testing.assert_close(imp.normalize(two, "max"), torch.stack([s / hi, s / hi]))
    ties = torch.tensor([2.0, 1.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(imp.normalize(ties, "lamp"), lamp_direct(ties))


@pytest.mark.parametrize("how", ["median", "sentinel_x", "sentinel_2"])
def test_bad_normalizer_and_reduction(how):
    with pytest.raises(PlanError, match="normalizer"):
        imp.MagnitudeImportance(normalizer=how)
    with pytest.raises(PlanError, match="group_reduction"):
        imp.MagnitudeImportance(group_reduction=how)


# ------------------------------------------------------------------------------------ random, registry, misc

def test_random_importance(chain):
    m, graph = chain
    g = graph.group_of("conv1.weight", 0)
    r1, r2 = imp.RandomImportance(seed=3), imp.RandomImportance(seed=3)
    a, b = r1(g, m), r2(g, m)
    assert a.shape == (8,) and torch.equal(a, b) and ((a >= 0) & (a < 1)).all()
    assert not torch.equal(r1(g, m), a)  # a new draw each call
    assert imp.RandomImportance()(graph.group_of("fc.weight", 0), m) is None  # pinned: nothing to score


def test_pinned_group_scores_none(chain):
    m, graph = chain
    assert imp.MagnitudeImportance()(graph.group_of("conv1.weight", 1), m) is None


def test_registry():
    expected = {"l1": imp.MagnitudeImportance, "l2": imp.MagnitudeImportance, "magnitude": imp.MagnitudeImportance,
                "bn": imp.BNScaleImportance, "lamp": imp.LAMPImportance, "fpgm": imp.FPGMImportance,
                "taylor": imp.TaylorImportance, "hessian": imp.HessianImportance,
                "activation": imp.ActivationImportance, "random": imp.RandomImportance}
    for name, cls in expected.items():
        assert type(imp.get_importance(name)) is cls
    assert imp.get_importance("l1").p == 1 and imp.get_importance("l2").p == 2
    assert imp.get_importance("taylor", multivariable=True).multivariable
    with pytest.raises(PlanError) as err:
        imp.get_importance("l7")
    assert all(name in str(err.value) for name in expected)
    imp.register_importance("test-only-l3", lambda **kw: imp.MagnitudeImportance(p=3, **kw), replace=True)
    assert imp.get_importance("test-only-l3", normalizer=None).p == 3
    with pytest.raises(PlanError, match="already registered"):
        imp.register_importance("test-only-l3", imp.MagnitudeImportance)


def test_instances_share_no_state(chain):
    m, graph = chain
    h1, h2 = imp.HessianImportance(), imp.HessianImportance()
    m(torch.randn(1, 3, 4, 4)).sum().backward()
    h1.accumulate_grad(m)
    g = graph.group_of("conv1.weight", 0)
    assert h1(g, m) is not None
    with pytest.raises(PlanError):
        h2(g, m)
    a1, a2 = imp.ActivationImportance(), imp.ActivationImportance()
    with a1.compute_importance(m):
        m(torch.randn(1, 3, 4, 4))
    assert a1(g, m) is not None
    with pytest.raises(PlanError):
        a2(g, m)
    assert imp.MagnitudeImportance().target_types == imp.MagnitudeImportance().target_types


def test_model_without_group_parameters_raises(chain):
    _, graph = chain
    with pytest.raises(PlanError, match="not in the given model"):
        imp.MagnitudeImportance()(graph.group_of("conv1.weight", 0), nn.Sequential())


def test_all_criteria_score_every_unpinned_group(res):
    m, graph = res
    m(torch.randn(2, 3, 4, 4)).sum().backward()
    h = imp.HessianImportance()
    h.accumulate_grad(m)
    a = imp.ActivationImportance()
    with torch.no_grad(), a.compute_importance(m):
        m(torch.randn(2, 3, 4, 4))
    crits = [imp.get_importance(n) for n in ("l1", "l2", "bn", "lamp", "fpgm", "taylor", "random")] + [h, a]
    for g, c in itertools.product([g for g in graph.groups if not g.pinned], crits):
        s = c(g, m)
        assert s is None or (s.shape == (len(g.all_classes),) and torch.isfinite(s).all()), (g, c)


# --------------------------------------------------------------- issue 13: layers by role, every class scored

class SamePadConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (EfficientNet's static-same conv, timm's Conv2dSame): traced
    through, so in the GraphModule it is a plain Module whose weight feeds ``torch.conv2d``."""

    def forward(self, x):
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)


def _same_pad_chain():
    torch.manual_seed(3)
    m = nn.Sequential(SamePadConv(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), SamePadConv(8, 4, 3)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
    return m


def test_conv_subclass_scored_in_traced_graph():
    """L2 on the Pruner's traced gm: conv1 rows, bn gamma and conv2 columns, averaged (by hand)."""
    m, x = _same_pad_chain(), torch.randn(1, 3, 8, 8)
    graph = fxprune.analyze(m, x)
    assert type(graph.gm.get_submodule("0")) is nn.Module  # the situation of the bug
    g = graph.group_of("0.weight", 0)
    got = imp.MagnitudeImportance(p=2, group_reduction="mean", normalizer=None, **RAW)(g, graph.gm)
    w1, gam, w2 = m[0].weight.detach(), m[1].weight.detach(), m[3].weight.detach()
    expect = ((w1 ** 2).sum((1, 2, 3)) + gam ** 2 + (w2 ** 2).sum((0, 2, 3))) / 3
    order = [idx[0] for _, idx in g.all_classes]
    assert torch.allclose(got, expect[order].float(), rtol=1e-5)
    # without the fix only the BatchNorm row was scored: the ranking then followed gamma alone
    assert not torch.allclose(got, (gam ** 2)[order].float(), rtol=1e-3)


def test_fpgm_and_activation_see_conv_subclass():
    m, x = _same_pad_chain(), torch.randn(1, 3, 8, 8)
    graph = fxprune.analyze(m, x)
    g = graph.group_of("0.weight", 0)
    fp = imp.FPGMImportance(p=2, group_reduction="mean", normalizer=None)(g, graph.gm)
    rows1 = m[0].weight.detach().flatten(1).pow(2).double()
    rows2 = m[3].weight.detach().transpose(0, 1).flatten(1).pow(2).double()
    expect = (torch.cdist(rows1, rows1).sum(1) + torch.cdist(rows2, rows2).sum(1)) / 2
    assert torch.allclose(fp.double(), expect, rtol=1e-4)
    a = imp.ActivationImportance(group_reduction="mean", normalizer=None)
    xb = torch.randn(16, 3, 8, 8)
    with a.compute_importance(m):
        m(xb)
    h = m[2](m[1](m[0](xb)))  # the input of conv2, recorded by hand
    assert torch.allclose(a(g, graph.gm).double(), h.abs().mean((0, 2, 3)).double(), rtol=1e-4)


class MHAOnly(nn.Module):
    """Channels of an nn.MultiheadAttention's q/k projection are held by no Conv/Linear/norm weight."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = self.inp(x)
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("name", ["l1", "l2", "lamp", "fpgm", "activation", "taylor"])
def test_every_class_scored_outside_target_types(name, caplog):
    m, x = MHAOnly().eval(), torch.randn(2, 5, 8)
    graph = fxprune.analyze(m, x)
    crit = imp.get_importance(name)
    if name == "activation":
        with crit.compute_importance(m):
            m(x)
    if name == "taylor":
        m(x).pow(2).sum().backward()
    groups = [g for g in graph.groups if g.all_classes]
    assert groups
    with caplog.at_level("INFO", logger="fxprune.importance"):
        for g in groups:
            assert bool(crit.scored(g, graph.gm).all()), g.key
            s = crit(g, graph.gm)
            assert s is not None and s.shape == (len(g.all_classes),)
    assert sum("scored from the other parameters" in r.getMessage() for r in caplog.records) == 1


def test_fallback_scores_are_layer_scores_of_the_other_parameters():
    """q/k head-dim classes: L1 over the in_proj_weight rows that hold them (q row j and k row j), by hand."""
    m, x = MHAOnly().eval(), torch.randn(2, 5, 8)
    graph = fxprune.analyze(m, x)
    w = m.attn.in_proj_weight.detach()
    for g in graph.groups:
        if not g.all_classes or g.key != "attn.in_proj_weight:0":
            continue
        s = imp.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None, **RAW)(g, graph.gm)
        qk = [i for i, (_, idx) in enumerate(g.all_classes) if max(idx) < 16]  # v rows are out_proj columns
        assert len(qk) == 4
        expect = torch.tensor([float(w[g.all_classes[i][1]].abs().sum()) for i in qk])
        assert torch.allclose(s[qk], expect, rtol=1e-5)
        return
    pytest.fail("no in_proj_weight group")


def test_bn_criterion_tells_when_a_group_has_no_batchnorm(caplog):
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    g = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
    crit = imp.BNScaleImportance()
    with caplog.at_level("WARNING", logger="fxprune.importance"):
        assert crit(g, m) is None
        assert crit(g, m) is None
    assert sum("no BatchNorm" in r.getMessage() or "not scored" in r.getMessage() for r in caplog.records) == 1


def test_std_conv_weight_standardisation_role():
    """timm's StdConv2d standardises its weight with F.batch_norm before the conv: the weight is a conv weight."""
    timm = pytest.importorskip("timm")
    conv = timm.layers.StdConv2d(3, 4, 3, padding=1)
    gm = fxprune.trace(nn.Sequential(conv), torch.randn(1, 3, 6, 6))
    role = imp.layer_roles(gm)["0.weight"]
    assert issubclass(role.kind, nn.modules.conv._ConvNd) and role.attr == "weight"


@pytest.mark.parametrize("name", ["taylor", "hessian", "activation"])
def test_data_collected_before_pruning_is_refused_by_name(chain, name):
    """Gradients / activations recorded on the unpruned model do not fit the pruned one (the second of iterative
    steps, or the width step after a head step): scoring it raises a PlanError naming the parameter, instead of
    a shape error or scores silently summed over the wrong channels."""
    m, graph = chain
    crit = imp.get_importance(name)
    x = torch.randn(2, 3, 4, 4)
    if name == "activation":
        with torch.no_grad(), crit.compute_importance(m):
            m(x)
    else:
        m.zero_grad()
        m(x).pow(2).sum().backward()
        crit.accumulate_grad(m)
    assert crit(graph.group_of("conv2.weight", 0), m).shape == (6,)
    small = fxprune.prune(m, {"conv1.weight:0": [0, 1, 2, 3]}, x)  # conv2 now reads 4 of its 8 channels
    assert small.get_parameter("conv2.weight").shape[1] == 4
    g = fxprune.analyze(small, x).group_of("conv1.weight", 0)
    with pytest.raises(PlanError, match=r"conv[12]\.weight.*pruned after the data was collected"):
        crit(g, small)
