"""Grid constraints (fxprune/grid.py): whole heads, head dims, both in one plan, GQA kv groups and the same
query head of every group, a channel shuffle. Each case: the expected widths written out, the pruned model
against the original with the expanded plan's slices zeroed (an oracle that does not use verify), verify,
the expanded plan closed (expanding it again changes nothing), re-applying the plan a no-op, and the same
result through ``PassManager(prune_passes(plan))``."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.infra.pass_manager import PassManager

import fxprune
from fxprune.passes import prune_passes
from fxprune.plan import parse_key


class Attn(nn.Module):
    """q/k/v projections split into heads; GQA when ``kv < heads`` (``repeat_kv`` by expand + reshape)."""

    def __init__(self, d=16, heads=4, kv=4):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv, d // heads
        self.q = nn.Linear(d, heads * self.hd)
        self.k = nn.Linear(d, kv * self.hd)
        self.v = nn.Linear(d, kv * self.hd)
        self.o = nn.Linear(heads * self.hd, d)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, n, self.kv, self.hd).transpose(1, 2)
        v = self.v(x).view(b, n, self.kv, self.hd).transpose(1, 2)
        if self.kv < self.h:
            g = self.h // self.kv
            k = k[:, :, None].expand(b, self.kv, g, n, self.hd).reshape(b, self.h, n, self.hd)
            v = v[:, :, None].expand(b, self.kv, g, n, self.hd).reshape(b, self.h, n, self.hd)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, n, self.h * self.hd))


class Shuffle(nn.Module):
    """Two convolutions around a channel shuffle (2 groups of 4)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.b(y)


def _rows(heads, hd, js):
    return [h * hd + j for h in heads for j in js]


def _zeroed(model, exp):
    """The original with every slice of the expanded plan zeroed."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for key, idx in exp.items():
            name, dim = parse_key(key)
            params[name].index_fill_(dim, torch.tensor(idx), 0.0)
    return ref


def _check(model, plan, x, widths):
    torch.manual_seed(0)
    small = fxprune.prune(model, plan, x)
    for name, (attr, want) in widths.items():
        assert getattr(small.get_submodule(name), attr) == want, name
    exp = fxprune.analyze(model, x).expand(plan).plan
    assert fxprune.analyze(model, x).expand(exp).plan == exp  # closed
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zeroed(model, exp)(x), atol=1e-5, rtol=1e-5)
    assert fxprune.verify(model, small, plan, x).max_abs_diff < 1e-5
    assert small.meta["fxprune"]["plan"] == exp
    with warnings.catch_warnings(record=True) as w:  # the same plan again: a no-op that says so
        warnings.simplefilter("always")
        again = fxprune.prune(small, plan, x)
    assert again is small and any("already applied" in str(m.message) for m in w)
    via = PassManager(passes=prune_passes(plan, (x,)))(torch.fx.symbolic_trace(model)).graph_module
    sd1, sd2 = via.state_dict(), small.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    return small, exp


X = torch.randn(2, 5, 16)


def test_head_dims():
    m = Attn().eval()
    plan = {"q.weight:0": _rows(range(4), 4, [1]), "v.weight:0": [0, 4, 8, 12]}  # q/k dim 1, v dim 0
    _, exp = _check(m, plan, X, {"q": ("out_features", 12), "k": ("out_features", 12),
                                 "v": ("out_features", 12), "o": ("in_features", 12)})
    assert exp["k.weight:0"] == _rows(range(4), 4, [1])


def test_whole_heads():
    m = Attn().eval()
    g = fxprune.analyze(m, X).group_of("q.weight", 0)
    assert len(g.head_classes) == 4 and len(g.all_classes) == 4  # 4 heads; 4 q/k head dims
    assert len(fxprune.analyze(m, X).group_of("v.weight", 0).all_classes) == 4  # v head dims: their own group
    assert {"v.weight", "o.weight"} <= {n for n, _ in g.heads().members}  # a head spans both groups
    plan = {"o.weight:1": _rows([1, 3], 4, range(4))}  # every column of heads 1 and 3
    _, exp = _check(m, plan, X, {"q": ("out_features", 8), "k": ("out_features", 8),
                                 "v": ("out_features", 8), "o": ("in_features", 8)})
    assert exp["q.weight:0"] == _rows([1, 3], 4, range(4))


def test_whole_heads_and_head_dims_in_one_plan():
    m = Attn().eval()
    rows = sorted(set(_rows([2], 4, range(4)) + _rows(range(4), 4, [3])))  # head 2, and q/k dim 3 of all
    _, exp = _check(m, {"q.weight:0": rows}, X, {"q": ("out_features", 9), "k": ("out_features", 9),
                                                 "v": ("out_features", 12), "o": ("in_features", 12)})
    assert exp["v.weight:0"] == _rows([2], 4, range(4))  # the head's v rows go with it, not dim 3


def test_gqa_whole_kv_group():
    m = Attn(heads=4, kv=2).eval()
    plan = {"k.weight:0": [4, 5, 6, 7]}  # kv head 1: query heads 2 and 3 with it
    _, exp = _check(m, plan, X, {"q": ("out_features", 8), "k": ("out_features", 4),
                                 "v": ("out_features", 4), "o": ("in_features", 8)})
    assert exp["q.weight:0"] == _rows([2, 3], 4, range(4))


def test_gqa_same_query_head_in_every_group():
    m = Attn(heads=4, kv=2).eval()
    plan = {"q.weight:0": _rows([0, 2], 4, range(4))}  # query head 0 of both kv groups
    _, exp = _check(m, plan, X, {"q": ("out_features", 8), "k": ("out_features", 8),
                                 "v": ("out_features", 8), "o": ("in_features", 8)})
    assert "k.weight:0" not in exp


def test_gqa_partial_group_is_closed_to_a_sub_grid():
    """Query head 0 of kv group 0 only is not a sub-grid: the plan is closed to query head 0 of every
    group (the innermost factor that can lose it), never to an uneven split of the groups."""
    m = Attn(heads=4, kv=2).eval()
    exp = fxprune.analyze(m, X).expand({"q.weight:0": _rows([0], 4, range(4))}).plan
    assert exp["q.weight:0"] == _rows([0, 2], 4, range(4))


def test_channel_shuffle():
    m = Shuffle().eval()
    x = torch.randn(1, 3, 4, 4)
    g = fxprune.analyze(m, x).group_of("a.weight", 0)
    # a whole shuffle group; channel j of group 0 with channel j of group 1 (b's inputs 2j, 2j+1). Each
    # is the outer factor of one of the two reshapes: neither is "heads", both are classes.
    assert sorted(g.classes) == [[0, 1, 2, 3], [0, 4], [1, 5], [2, 6], [3, 7], [4, 5, 6, 7]]
    assert not g.head_classes
    _, exp = _check(m, {"a.weight:0": [1]}, x, {"a": ("out_channels", 6), "b": ("in_channels", 6)})
    assert exp["b.weight:1"] == [2, 3]
    _, exp = _check(m, {"a.weight:0": [4, 5, 6, 7]}, x, {"a": ("out_channels", 4), "b": ("in_channels", 4)})
    assert exp["b.weight:1"] == [1, 3, 5, 7]


def test_cover_pinned_factor_is_a_plan_error():
    class PerHeadOut(Attn):  # per-head outputs leave the model: heads are pinned
        def forward(self, x):
            b, n, _ = x.shape
            q = self.q(x).view(b, n, self.h, self.hd)
            return self.o(q.reshape(b, n, -1)), q.sum(-1)

    m = PerHeadOut().eval()
    g = fxprune.analyze(m, X).group_of("q.weight", 0)
    assert not g.head_classes and len(g.all_classes) == 4
    with pytest.raises(fxprune.PlanError, match="keep at least one"):
        fxprune.prune(m, {"q.weight:0": _rows([1], 4, range(4))}, X)  # whole head 1: only dims can go


def test_to_networkx_has_the_grid_edges():
    m = Attn().eval()
    g = fxprune.analyze(m, X).to_networkx()
    grid = [(a, b, d) for a, b, d in g.edges(data=True) if "grid" in d]
    # q, k and v split into (heads, head dim), and the merge before o: 4 grids of 2 factors
    assert len(grid) == 8 and sorted({d["factor"] for _, _, d in grid}) == [0, 1]
    sizes = sorted((g.nodes[a]["size"], g.nodes[b]["size"]) for a, b, d in grid)
    assert all(s == (4, 16) or s == (16, 4) for s in sizes)  # product 16 = heads 4 x head dims 4


def test_valid_prefix_cuts_back_and_says_so():
    from fxprune.select import valid_prefix

    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    graph = fxprune.analyze(m, torch.randn(1, 4))
    classes = graph.group_of("0.weight", 0).all_classes
    with pytest.warns(UserWarning, match="0.weight:0 loses 2 of the 3 classes chosen"):
        assert valid_prefix(graph, classes, "0.weight:0") == classes[:2]  # all 3 would empty the layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert valid_prefix(graph, classes[:2], "0.weight:0") == classes[:2]
