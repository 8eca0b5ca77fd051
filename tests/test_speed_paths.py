"""The fast paths of analysis and pruning give what the slow ones give (session 21's speed work).

Each test compares a fast path with an independent expectation: the second train/eval trace is skipped only
when the ``training`` flag merely lands in arguments (counted forward calls); meta shapes computed directly
equal the meta kernels' (shapes and strides); slices taken with ``np.take`` equal ``index_select``; a
pruned GraphModule that keeps its compiled code runs the code its graph generates.
"""
from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fxprune
from fxprune.frontend import fx as fxfront
from fxprune.frontend.shapes import function_shape, module_shape


class _Counted(torch.nn.Module):
    def __init__(self, negate: bool):
        super().__init__()
        self.fc1, self.fc2, self.negate, self.calls = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2), negate, 0

    def forward(self, x):
        self.calls += 1
        flag = (not self.training) if self.negate else self.training
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, flag))


@pytest.mark.parametrize("negate,traces", [(False, 1), (True, 2)])
def test_training_flag_traced_once_when_it_only_lands_in_arguments(negate, traces):
    m = _Counted(negate).train()
    gm = fxprune.trace(m, torch.randn(3, 4))
    assert m.calls == traces  # ``not self.training`` computes with the flag: the second trace decides
    assert m.training is True and all(type(s.training) is bool for s in m.modules())  # flags restored
    reads = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "training"]
    assert len(reads) == 1
    drop = next(n for n in gm.graph.nodes if n.target is F.dropout)
    flag = drop.args[2] if len(drop.args) > 2 else drop.kwargs["training"]
    if negate:  # ``training == False``
        assert flag.target is operator.eq and flag.args == (reads[0], False)
    else:
        assert flag is reads[0]
    x = torch.randn(64, 4)
    gm.eval()
    with torch.no_grad():
        same = torch.equal(gm(x), gm(x))
    assert same is (not negate)  # eval mode: no dropout (negated: dropout in eval mode)


def _shape_model():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1)
            self.conv2 = torch.nn.Conv2d(8, 8, (3, 1), padding=(2, 0), dilation=(2, 1),
                                         padding_mode="reflect")
            self.pool = torch.nn.AdaptiveAvgPool2d((None, 2))
            self.fc = torch.nn.Linear(2, 5)

        def forward(self, x):
            y = self.conv(x)
            z = self.conv2(y)
            s = y * F.adaptive_avg_pool2d(z, 1) + 1.5
            c = torch.cat([s, z - y, 2 / (s + 1)], dim=1)
            return self.fc(self.pool(c)) / 3

    return M()


def test_direct_meta_shapes_equal_the_meta_kernels(monkeypatch):
    m = _shape_model()
    x = torch.randn(2, 3, 9, 11)
    gm = fxfront._symbolic_trace(m)

    def vals():
        return [(tuple(n.meta["val"].shape), n.meta["val"].stride(), n.meta["val"].dtype)
                for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]

    fxfront.propagate_shapes(gm, (x,))
    fast = vals()
    monkeypatch.setattr(fxfront, "function_shape", lambda *a: None)
    monkeypatch.setattr(fxfront, "module_shape", lambda *a: None)
    fxfront.propagate_shapes(gm, (x,))
    assert fast == vals()
    assert fast[-1][0] == tuple(m(x).shape) == (2, 24, 5, 5)


def test_direct_meta_shapes_decline_what_they_cannot_vouch_for():
    meta = torch.empty(1, 4, 6, 6, device="meta")
    conv = torch.nn.Conv2d(3, 4, 3).to("meta")
    assert module_shape(conv, meta) is None  # wrong channel count: the kernel raises its own error
    assert module_shape(torch.nn.Conv2d(4, 4, 7).to("meta"), meta) is None  # output would be empty
    assert module_shape(torch.nn.Conv2d(4, 4, 3).to("meta"), meta.to(torch.float16)) is None  # dtype
    cl = torch.empty(1, 4, 6, 6, device="meta").to(memory_format=torch.channels_last)
    assert function_shape(operator.add, (cl, cl), {}) is None  # strides the kernel decides
    assert function_shape(operator.add, (meta, torch.empty(4, device="meta")), {}) is None  # no broadcast
    assert function_shape(operator.mul, (meta, True), {}) is None  # a bool: leave promotion to the kernel
    assert function_shape(torch.cat, ([meta, torch.empty(1, 3, 6, 5, device="meta")], 1), {}) is None
    assert tuple(function_shape(torch.cat, ([meta, meta],), {"dim": -1}).shape) == (1, 4, 6, 12)
    with pytest.raises(fxprune.ShapeInfoError):
        fxprune.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.randn(1, 5, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kept_slices_equal_index_select(dtype):
    m = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 5, 1))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape))
    m = m.to(dtype)
    x = torch.randn(1, 6, 7, 7, dtype=dtype)
    plan = fxprune.PrunePlan({"0.weight:0": [1, 4, 5]})
    small = fxprune.prune(m, plan, x)
    keep = torch.tensor([0, 2, 3, 6, 7])
    assert torch.equal(small.get_submodule("0").weight, m[0].weight.index_select(0, keep))
    assert torch.equal(small.get_submodule("1").running_var, m[1].running_var.index_select(0, keep))
    assert torch.equal(small.get_submodule("2").weight, m[2].weight.index_select(1, keep))
    assert small.get_submodule("2").weight.is_contiguous()


def test_kept_code_is_the_code_the_graph_generates():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    small = fxprune.prune(m, {"0.weight:0": [2, 3]}, x)
    assert small.code == small.graph.python_code("self").src
    assert small(x).shape == (1, 4, 6, 6)

    class View(torch.nn.Module):  # a rule rewrites the view's size: the code is generated again
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 1), torch.nn.Linear(8 * 4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(1, 8 * 4))

    v = View()
    x = torch.randn(1, 3, 2, 2)
    small = fxprune.prune(v, {"conv.weight:0": [0, 7]}, x)
    assert small.code == small.graph.python_code("self").src and "24" in small.code
    masked = View()
    masked.load_state_dict(v.state_dict())
    with torch.no_grad():
        masked.conv.weight[[0, 7]] = 0
        masked.conv.bias[[0, 7]] = 0
        assert torch.allclose(small(x), masked(x), atol=1e-6)


def test_plan_by_ratio_fast_greedy_matches_the_walk():
    from fxprune.select import _GroupIndex, _greedy

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 4, 1))
    graph = fxprune.analyze(m, torch.randn(1, 3, 8, 8))
    g = graph.group_of("0.weight", 0)
    gi = _GroupIndex(g)
    scores = np.random.default_rng(0).random(len(g.all_classes))
    for n in (0, 1, 8, 15):
        assert _greedy(scores, n, gi) == np.argsort(scores, kind="stable")[:n].tolist()
    assert len(_greedy(scores, 16, gi)) == 15  # the walk: the last class would empty every dim


def test_class_dim_counts_is_remembered_per_group_and_hands_out_its_own_sizes():
    from fxprune.select import _GroupIndex, class_dim_counts

    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    g = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
    counts, sizes = class_dim_counts(g)
    gi = _GroupIndex(g)  # independent: every class takes one index of each of the group's dims
    assert len(counts) == 6 and all(sorted(n for _, n in c) == [1] * len(gi.dims) for c in counts)
    sizes[next(iter(sizes))] = -1  # a caller (the Pruner's guard) counts down its own copy
    again, sizes2 = class_dim_counts(g)
    assert again == counts and set(sizes2.values()) == {6}


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 2), (70000, 3), (40000, 2, 2), (0, 5), (5, 0), (3, 0, 2),
                                   (2, 70000)])
def test_sums_of_squares_equal_float64_sums(shape):
    """Blocked (dims 0 and 1, rows that fit a block) and whole-tensor paths against float64 sums."""
    from fxprune.select import _sq_sums

    t = torch.randn(*shape)
    scratch = [np.empty(0, np.float32)]
    for dims in ([0], [1], [0, 1], list(range(t.ndim))):
        got = _sq_sums(t, dims, scratch)
        assert sorted(got) == sorted(set(dims))
        for d in dims:
            want = (t.double() ** 2).sum([i for i in range(t.ndim) if i != d]).numpy()
            assert got[d].dtype == np.float64 and got[d].shape == (shape[d],)
            np.testing.assert_allclose(got[d], want, rtol=1e-4)


def test_plan_by_ratio_checks_grid_groups_at_once_as_one_by_one(monkeypatch):
    """Grouped convolutions make grid groups: one expansion of every pick gives the plan the per-group
    ``valid_prefix`` checks give (forced here by failing that one expansion)."""
    from fxprune import select

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, groups=4),
                            torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1), torch.nn.Conv2d(8, 8, 3, groups=2))
    x = torch.randn(1, 3, 8, 8)
    graph = fxprune.analyze(m, x)
    assert any(g.ancestors is not None for g in graph.groups if not g.pinned)  # the grid path is taken
    at_once = select.plan_by_ratio(graph, 0.5)
    calls = []
    real = select._expands

    def fail_first(graph, plan):
        calls.append(plan)
        return False if len(calls) == 1 else real(graph, plan)

    monkeypatch.setattr(select, "_expands", fail_first)
    one_by_one = select.plan_by_ratio(graph, 0.5)
    assert len(calls) > 1 and at_once == one_by_one and at_once.to_json() == one_by_one.to_json()
    small = fxprune.prune(m, at_once, x)
    fxprune.verify(m, small, at_once, x)  # raises VerificationError if wrong
    # the grouped convs lost channels (a plan of nothing would pass the comparisons above)
    assert small.get_submodule("2").out_channels < 16 and small.get_submodule("5").in_channels < 8
