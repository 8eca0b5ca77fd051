"""Pins that came from a missing rule (the timm sweep's pin column, issue 10), and the pins that stay.

* a pointwise convolution (kernel 1, stride 1, no padding) passes its spatial dims through: CoaT's head mixes
  three class tokens with ``Conv1d(3, 1, 1)`` over ``[B, 3, C]``, so the model's channels are its spatial dim;
* ``torch.max(x, y)`` / ``torch.min(x, y)`` / ``x.max(y)`` with a tensor ``y`` are element-wise, not
  reductions.

Before/Expected: each case prunes hand-picked channels and compares with an oracle written by hand (the
original with the removed producer rows and consumer columns zeroed), with exact widths, then ``verify``.
The inherent cases (a kernel that mixes positions, a real reduction over the channels) stay pinned with a
reason naming the op and the node.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


from helpers import zeroed


def _check(model, x, plan, zero, widths):
    """Prune ``model`` by ``plan``: equal to the original with ``zero`` = {param: (dim, indices)} zeroed,
    parameters of shapes ``widths``, and verified; the unpruned model must differ from the oracle."""
    model.eval()
    small = fxprune.prune(model, fxprune.PrunePlan(plan), x)
    oracle = zeroed(model, zero)
    with torch.no_grad():
        want, got, full = oracle(x), small(x), model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, want, atol=1e-4)  # the check can fail
    assert {n: tuple(p.shape) for n, p in small.named_parameters() if n in widths} == widths
    fxprune.verify(model, small, plan, x)
    return small


class Aggregate(nn.Module):
    """CoaT's head: three token vectors stacked to ``[B, 3, C]``, a conv over the 3, then a Linear."""

    def __init__(self, kind="conv", k=1, stride=1, padding=0, c=6):
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(4, c), nn.Linear(4, c), nn.Linear(4, c)
        self.kind, self.stride, self.padding = kind, stride, padding
        if kind == "transposed":
            self.agg = nn.ConvTranspose1d(3, 1, k, stride=stride, padding=padding)
        else:
            self.agg = nn.Conv1d(3, 1, k, stride=stride, padding=padding)
        c_out = (c + 2 * padding - k) // stride + 1 if kind != "transposed" else c
        self.head = nn.Linear(c_out, 2)

    def forward(self, x):
        t = torch.stack([self.f1(x), self.f2(x), self.f3(x)], dim=1)
        if self.kind == "functional":
            y = F.conv1d(t, self.agg.weight, self.agg.bias, self.stride, self.padding)
        else:
            y = self.agg(t)
        return self.head(y.squeeze(1))


@pytest.mark.parametrize("kind", ["conv", "functional", "transposed"])
def test_pointwise_conv_passes_its_spatial_dim(kind):
    torch.manual_seed(0)
    model, x = Aggregate(kind).eval(), torch.randn(2, 4)
    graph = fxprune.analyze(model, x)
    group = graph.group_of("f1.weight", 0)
    assert group.pinned is None
    assert {("f2.weight", 0), ("f3.weight", 0), ("head.weight", 1)} <= set(group.members)
    assert graph.group_of("agg.weight", 1 if kind != "transposed" else 0).pinned  # the 3 stacked tokens
    rows = (0, [1, 4])
    small = _check(model, x, {"f1.weight:0": [1, 4]},
                   {"f1.weight": rows, "f1.bias": rows, "f2.weight": rows, "f2.bias": rows, "f3.weight": rows,
                    "f3.bias": rows, "head.weight": (1, [1, 4])},
                   {"f1.weight": (4, 4), "f2.weight": (4, 4), "f3.weight": (4, 4), "head.weight": (2, 4),
                    "agg.weight": (3, 1, 1) if kind == "transposed" else (1, 3, 1)})
    assert small.f1.out_features == 4 and small.head.in_features == 4


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (1, 1, 1), (1, 2, 0)],
                         ids=["kernel3", "padded", "strided"])
def test_conv_that_mixes_positions_stays_pinned(k, stride, padding):
    model = Aggregate("conv", k, stride, padding).eval()
    group = fxprune.analyze(model, torch.randn(2, 4)).group_of("f1.weight", 0)
    assert group.pinned == "dim 2 of an input to conv (agg)"


@pytest.mark.parametrize("kind", ["functional", "transposed"])
def test_functional_and_transposed_conv_that_mix_positions_stay_pinned(kind):
    model = Aggregate(kind, 3, 1, 1).eval()
    graph = fxprune.analyze(model, torch.randn(2, 4))
    want = {"functional": "dim 2 of an input to functional conv (conv1d)",
            "transposed": "dim 2 of an input to conv (agg)"}
    assert graph.group_of("f1.weight", 0).pinned == want[kind]
    if kind == "functional":  # the weight is a graph value: its kernel taps are a group, pinned as such
        assert graph.group_of("agg.weight", 2).pinned == "kernel positions of a convolution weight"


class Floor(nn.Module):
    """Binary ``max``/``min`` against a per-channel floor, another branch and a scalar, three spellings."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.b = nn.Linear(3, 6), nn.Linear(3, 6), nn.Linear(6, 2)
        self.floor = nn.Parameter(torch.linspace(-0.5, 0.5, 6))
        self.register_buffer("eps", torch.tensor(0.05))

    def forward(self, x):
        y, z = self.a(x), self.c(x)
        return self.b(torch.max(y, self.floor) + torch.min(y, other=z) + y.max(z) + torch.min(y, self.eps))


def test_binary_min_max_are_elementwise():
    torch.manual_seed(0)
    model, x = Floor().eval(), torch.randn(4, 3)
    graph = fxprune.analyze(model, x)
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None
    assert {("c.weight", 0), ("floor", 0), ("b.weight", 1)} <= set(group.members)
    rows = (0, [0, 5])
    _check(model, x, {"a.weight:0": [0, 5]},
           {"a.weight": rows, "a.bias": rows, "c.weight": rows, "c.bias": rows, "b.weight": (1, [0, 5])},
           {"a.weight": (4, 3), "c.weight": (4, 3), "floor": (4,), "b.weight": (2, 4)})


class Reduce(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(3, 6), nn.Linear(6, 2), how

    def forward(self, x):
        y = self.a(x)
        m = {"max_dim": lambda: torch.max(y, dim=1, keepdim=True)[0], "min_method": lambda: y.min(1, True)[0],
             "amax": lambda: y.amax(1, keepdim=True), "max_all": lambda: torch.max(y)}[self.how]()
        return self.b(y - m)


@pytest.mark.parametrize("how,reason", [("max_dim", "dim 1 of an input to min/max (max_1)"),
                                        ("min_method", "dim 1 of an input to min/max (min_1)"),
                                        ("amax", "dim 1 of an input to reduction (amax)"),
                                        ("max_all", "dim 1 of an input to min/max (max_1)")])
def test_reductions_over_channels_stay_pinned(how, reason):
    group = fxprune.analyze(Reduce(how).eval(), torch.randn(4, 3)).group_of("a.weight", 0)
    assert group.pinned == reason


class HeadScale(nn.Module):
    """Swin v2's cosine attention: a per-head ``logit_scale`` (its own group: its indices are heads only)."""

    def __init__(self, dim=8, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.linspace(0.5, 2.0, heads).view(heads, 1, 1))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.logit_scale
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def test_per_head_parameter_names_the_group_that_removes_its_heads():
    torch.manual_seed(0)
    model, x = HeadScale().eval(), torch.randn(2, 5, 8)
    graph = fxprune.analyze(model, x)
    assert graph.group_of("logit_scale", 0).pinned == \
        "its indices go only with whole heads (grid slices) named in qkv.weight:0"
    plan = fxprune.plan_by_ratio(graph, 0.5, heads=True)
    small = fxprune.prune(model, plan, x)
    assert tuple(small.logit_scale.shape) == (2, 1, 1) and tuple(small.qkv.weight.shape) == (12, 8)
    fxprune.verify(model, small, plan, x)
