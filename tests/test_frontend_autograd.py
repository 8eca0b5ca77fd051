"""The autograd frontend (fxprune/frontend/autograd.py): one real forward recorded below Python.

Oracles that do not come from the analysis: widths and parameter counts written by hand, and outputs equal to
the original model run with the removed channels zeroed (a copy whose removed rows are set to zero).
"""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import fxprune
from fxprune.errors import FxpruneError, PlanError, ShapeInfoError, TraceError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from zoo_models import build, get_spec  # noqa: E402


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _zero_rows(model: nn.Module, rows: dict[str, list[int]]) -> nn.Module:
    """A copy of ``model`` with rows of the named Linear layers (weight and bias) set to zero."""
    z = copy.deepcopy(model)
    with torch.no_grad():
        for name, idx in rows.items():
            layer = z.get_submodule(name)
            layer.weight[idx] = 0
            if layer.bias is not None:
                layer.bias[idx] = 0
    return z


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Gate(nn.Module):
    """Branches on a tensor value between two Linear layers: neither symbolic_trace nor torch.export takes
    it."""

    def __init__(self, cin: int = 6, c: int = 10, cout: int = 4):
        super().__init__()
        self.a, self.b = nn.Linear(cin, c), nn.Linear(c, cout)

    def forward(self, x):
        y = self.a(x)
        y = y.relu() if y.mean() > 0 else y.tanh()
        return self.b(y)


class Net(nn.Module):
    """A traceable stem and head around the untraceable Gate: the Gate is a recorded region of the parts."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
        self.gate = Gate(6, 10, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(self.gate(self.stem(x)))


def test_value_branch_between_two_linears_whole_model():
    torch.manual_seed(0)
    m, x = Gate().eval(), torch.randn(4, 6)
    gm = fxprune.trace(m, x, frontend="autograd")
    names = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert names == {"a.weight", "a.bias", "b.weight", "b.bias"}
    torch.testing.assert_close(gm(x), m(x))
    graph = fxprune.analyze(m, x, frontend="autograd")
    assert graph.frontend == "autograd" and graph.recorded == [""]
    assert graph.group_of("a.weight", 0).pinned is None and graph.group_of("b.weight", 1).key == "a.weight:0"
    plan = {"a.weight:0": [0, 3, 7]}
    small = fxprune.prune(m, plan, x, frontend="autograd")
    assert type(small) is Gate and (small.a.out_features, small.b.in_features) == (7, 7)
    assert small.a.weight.shape == (7, 6) and small.b.weight.shape == (4, 7)
    assert _params(small) == _params(m) - 3 * (6 + 1) - 3 * 4
    assert m.a.weight.shape == (10, 6)  # the user's model is untouched
    torch.testing.assert_close(small(x), _zero_rows(m, {"a": [0, 3, 7]})(x), rtol=1e-5, atol=1e-5)
    assert fxprune.verify(m, small, plan, x).max_abs_diff < 1e-5


def test_auto_records_the_region_no_tracer_takes_and_stitches_it():
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(4, 5)
    graph = _quiet(lambda: fxprune.analyze(m, x))
    assert graph.frontend == "parts" and graph.recorded == ["gate"]
    assert {p.path for p in graph.parts} >= {"stem", "gate", "head"}
    assert graph.stitched >= 2  # stem -> gate and gate -> head, handed on by the root's Python
    for name, dim in (("stem.0.weight", 0), ("gate.a.weight", 0), ("gate.b.weight", 0)):
        assert graph.group_of(name, dim).pinned is None, name
    assert graph.group_of("gate.a.weight", 1).key == "stem.0.weight:0"
    assert graph.group_of("head.weight", 1).key == "gate.b.weight:0"
    plan = {"stem.0.weight:0": [1, 4], "gate.a.weight:0": [0, 2, 9], "gate.b.weight:0": [6]}
    small = _quiet(lambda: fxprune.prune(m, plan, x))
    assert type(small) is Net and type(small.gate) is Gate
    assert (small.stem[0].out_features, small.gate.a.in_features, small.gate.a.out_features,
            small.gate.b.in_features, small.gate.b.out_features, small.head.in_features) == (4, 4, 7, 7, 6, 6)
    assert _params(small) == _params(m) - 2 * (5 + 1) - 2 * 10 - 3 * (4 + 1) - 3 * 7 - 1 * (7 + 1) - 1 * 3
    want = _zero_rows(m, {"stem.0": [1, 4], "gate.a": [0, 2, 9], "gate.b": [6]})(x)
    torch.testing.assert_close(small(x), want, rtol=1e-5, atol=1e-5)
    assert _quiet(lambda: fxprune.verify(m, small, plan, x)).max_abs_diff < 1e-5


def test_fasterrcnn_box_predictor_is_recorded_and_its_inputs_pruned():
    spec = get_spec("fasterrcnn_mobilenet_v3_large_320_fpn")
    model, inputs = build(spec)
    graph = _quiet(lambda: fxprune.analyze(model, inputs))
    assert graph.frontend == "parts" and graph.recorded == ["roi_heads.box_predictor"]
    g = graph.group_of("roi_heads.box_predictor.cls_score.weight", 1)
    assert g.key == "roi_heads.box_head.fc7.weight:0" and g.pinned is None
    assert graph.group_of("roi_heads.box_predictor.bbox_pred.weight", 1).key == g.key
    assert graph.group_of("roi_heads.box_head.fc6.weight", 0).pinned is None
    removed = list(range(0, 1024, 2))
    plan = {"roi_heads.box_head.fc6.weight:0": removed[:100], g.key: removed}
    small = _quiet(lambda: fxprune.prune(model, plan, inputs))
    heads = small.roi_heads
    assert type(heads.box_predictor).__name__ == "FastRCNNPredictor"
    assert (heads.box_head.fc6.out_features, heads.box_head.fc7.in_features, heads.box_head.fc7.out_features,
            heads.box_predictor.cls_score.in_features, heads.box_predictor.bbox_pred.in_features) == (
        924, 924, 512, 512, 512)
    fc6_in, n_cls, n_box = 12544, 3, 12
    lost = 100 * (fc6_in + 1) + 100 * 1024 + 512 * (924 + 1) + 512 * n_cls + 512 * n_box
    assert _params(small) == _params(model) - lost
    zeroed = _zero_rows(model, {"roi_heads.box_head.fc6": removed[:100], "roi_heads.box_head.fc7": removed})
    with torch.no_grad():
        want, got = zeroed(*inputs), small(*inputs)
    assert len(got[0]["boxes"]) > 0 and got[0]["labels"].tolist() == want[0]["labels"].tolist()
    for k in ("boxes", "scores"):
        torch.testing.assert_close(got[0][k], want[0][k], rtol=1e-4, atol=1e-4)
    assert _quiet(lambda: fxprune.verify(model, small, plan, inputs)).max_abs_diff < 1e-3


class Literal(nn.Module):
    """``view(y.shape[0], 8)`` is ``view(y, [2, 8])`` in the recording: the 8 may be a literal in Python
    too."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 2)

    def forward(self, x):
        y = self.a(x)
        y = y * 2 if y.sum() > 0 else y
        return self.c(self.b(y.view(y.shape[0], 8)))


def test_literal_size_is_pinned_with_its_reason():
    torch.manual_seed(0)
    m, x = Literal().eval(), torch.randn(2, 4)
    graph = fxprune.analyze(m, x, frontend="autograd")
    want = "size 8 is a literal in the recorded aten graph of the root Literal"
    assert graph.group_of("a.weight", 0).pinned == want
    assert graph.group_of("b.weight", 0).pinned is None  # nothing literal on b's outputs
    with pytest.raises(PlanError, match="literal in the recorded aten graph"):
        fxprune.prune(m, {"a.weight:0": [1]}, x, frontend="autograd")
    small = fxprune.prune(m, {"b.weight:0": [2]}, x, frontend="autograd")
    assert (small.b.out_features, small.c.in_features) == (2, 2)
    torch.testing.assert_close(small(x), _zero_rows(m, {"b": [2]})(x), rtol=1e-5, atol=1e-5)
    # inside a part, the reason names the recorded submodule
    net = nn.Sequential(nn.Linear(3, 4), Literal())
    g = _quiet(lambda: fxprune.analyze(net, torch.randn(2, 3), frontend="parts"))
    assert g.recorded == ["1"] and g.group_of("1.a.weight", 0).pinned == \
        "size 8 is a literal in the recorded aten graph of 1"


class Masked(nn.Module):
    """Builds a mask slice by slice in place (as Swin does): values from constants only, one recorded
    constant."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        mask = x.new_zeros(x.shape[0], 6)
        mask[:, :2] = 1.0  # a write into a view of the mask
        mask[:, 4:] = -1.0
        z = self.b(self.a(x) * (mask + 2))
        return self.c(z.relu() if z.sum() > 0 else z)


def test_constant_built_in_place_is_recorded_as_one_constant():
    torch.manual_seed(0)
    m, x = Masked().eval(), torch.randn(3, 4)
    gm = fxprune.trace(m, x, frontend="autograd")
    assert len(gm.meta["fxprune"].constants) == 1
    torch.testing.assert_close(gm(x), m(x), rtol=0, atol=0)
    graph = fxprune.analyze(m, x, frontend="autograd")
    assert graph.group_of("a.weight", 0).pinned.startswith("constant tensor")  # the mask is 6 wide
    assert graph.group_of("b.weight", 0).pinned is None
    small = fxprune.prune(m, {"b.weight:0": [1, 3]}, x, frontend="autograd")
    assert (small.b.out_features, small.c.in_features) == (3, 3)
    torch.testing.assert_close(small(x), _zero_rows(m, {"b": [1, 3]})(x), rtol=1e-5, atol=1e-5)


class WritesIntoView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)

    def forward(self, x):
        y = self.a(x)
        y[:, 0].mul_(2)  # the base y changes too: a graph of ops on values would not see it
        return y


def test_bad_input_raises_typed_errors():
    m = Gate().eval()
    with pytest.raises(ShapeInfoError, match="the root Gate"):
        fxprune.trace(m, torch.randn(4, 5), frontend="autograd")  # wrong width: the real forward fails
    with pytest.raises(TraceError, match="autograd"):
        fxprune.analyze(m, torch.randn(4, 6), frontend="autograd_")
    with pytest.raises(TraceError, match="writes into a view"):
        fxprune.trace(WritesIntoView(), torch.ones(2, 4), frontend="autograd")
    with pytest.raises(PlanError, match="a.wieght"):
        fxprune.prune(m, {"a.wieght:0": [1]}, torch.randn(4, 6), frontend="autograd")
    with pytest.raises(FxpruneError, match="ScriptModule"):
        fxprune.trace(torch.jit.script(nn.Linear(2, 2)), torch.randn(1, 2), frontend="autograd")


def test_pruner_with_taylor_scores_the_recorded_region_by_qualified_names():
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(8, 5)
    pruner = fxprune.Pruner(m, x, importance="taylor", pruning_ratio=0.5)
    m.zero_grad()
    m(x).pow(2).sum().backward()  # gradients reach gate.a / gate.b through the user's own forward
    small = _quiet(pruner.step)
    kept = {n: c - round(c * 0.5) for n, c in (("stem", 6), ("a", 10), ("b", 7))}  # the Pruner rounds
    assert (small.stem[0].out_features, small.gate.a.in_features) == (kept["stem"], kept["stem"])
    assert (small.gate.a.out_features, small.gate.b.in_features) == (kept["a"], kept["a"])
    assert (small.gate.b.out_features, small.head.in_features) == (kept["b"], kept["b"])
    assert small(x).shape == (8, 3)
