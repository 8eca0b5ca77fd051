"""Attention: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` and a torchvision ViT.

Every case: ``fxprune.verify`` against the masked original, widths written by hand, and a value-level
oracle that does not use the analysis (weights sliced by hand at hand-picked indices and the attention
recomputed by hand, or every pruned tensor recovered as an index_select of the original).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

try:
    import models as zoo
except ImportError:  # tests/ made a package
    from tests import models as zoo


def K(n, removed):
    return [i for i in range(n) if i not in set(removed)]


def _rows(heads, hd, js, base=0):
    """Rows ``base + h*hd + j`` for every head ``h`` and every ``j`` in ``js`` (sorted)."""
    return sorted(base + h * hd + j for h in range(heads) for j in js)


def _sdpa_nodes(gm):
    return [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]


# ------------------------------------------------------------------------------------------------ SDPA

class SDPABlock(nn.Module):
    """Separate q/k/v projections, ``view`` into heads, SDPA, output projection."""

    def __init__(self, d=16, heads=2, kv_heads=None, causal=False, scale=None, mask=False):
        super().__init__()
        self.h, self.kvh = heads, kv_heads or heads
        self.hd = d // heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, self.kvh * self.hd)
        self.v = nn.Linear(d, self.kvh * self.hd)
        self.proj = nn.Linear(d, d)
        self.causal, self.scale, self.mask = causal, scale, mask
        if mask:
            self.register_buffer("attn_mask", torch.ones(5, 5, dtype=torch.bool).tril())

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.hd).transpose(1, 2)
        k = self.k(x).view(b, n, self.kvh, self.hd).transpose(1, 2)
        v = self.v(x).view(b, n, self.kvh, self.hd).transpose(1, 2)
        kw = {}
        if self.scale is not None:
            kw["scale"] = self.scale
        if self.kvh != self.h:
            kw["enable_gqa"] = True
        mask = self.attn_mask if self.mask else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, **kw)
        return self.proj(o.transpose(1, 2).reshape(b, n, self.h * self.hd))


def _sdpa_case(**kw):
    torch.manual_seed(0)
    return SDPABlock(**kw).eval(), (torch.randn(2, 5, 16),)


def _manual_sdpa(m, x, qk_keep, v_keep, scale, causal=False, mask=None):
    """The pruned block computed by hand from the original weights at the kept rows."""
    b, n, _ = x.shape
    h, kvh = m.h, m.kvh
    g = h // kvh

    def proj(lin, keep_rows, heads):
        w, bias = lin.weight[keep_rows], lin.bias[keep_rows]
        return F.linear(x, w, bias).view(b, n, heads, -1).transpose(1, 2)

    q = proj(m.q, _rows(h, m.hd, qk_keep), h)
    k = proj(m.k, _rows(kvh, m.hd, qk_keep), kvh).repeat_interleave(g, dim=1)
    v = proj(m.v, _rows(kvh, m.hd, v_keep), kvh).repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    o = s.softmax(-1) @ v
    o = o.transpose(1, 2).reshape(b, n, -1)
    cols = _rows(h, m.hd, v_keep)
    return F.linear(o, m.proj.weight[:, cols], m.proj.bias)


@pytest.mark.parametrize("variant", ["plain", "causal", "mask", "gqa", "scale"])
def test_sdpa_head_dims(variant):
    kw = {"causal": {"causal": True}, "mask": {"mask": True}, "gqa": {"heads": 4, "kv_heads": 2},
          "scale": {"scale": 0.3}}.get(variant, {})
    m, inputs = _sdpa_case(**kw)
    h, kvh, hd = m.h, m.kvh, m.hd
    qk_rm, v_rm = [1, hd - 1], [0]
    plan = fxprune.PrunePlan({"q.weight:0": [1, hd - 1], "v.weight:0": [0]})
    small = fxprune.prune(m, plan, inputs)
    report = fxprune.verify(m, small, plan, inputs)
    assert report.max_abs_diff < 1e-5
    # widths by hand: head dim j goes in every head, q and k together, v with proj's columns
    qk_keep, v_keep = K(hd, qk_rm), K(hd, v_rm)
    assert small.q.out_features == h * len(qk_keep)
    assert small.k.out_features == kvh * len(qk_keep)
    assert small.v.out_features == kvh * len(v_keep)
    assert small.proj.in_features == h * len(v_keep) and small.proj.out_features == 16
    assert torch.equal(small.q.weight, m.q.weight[_rows(h, hd, qk_keep)])
    assert torch.equal(small.k.bias, m.k.bias[_rows(kvh, hd, qk_keep)])
    assert torch.equal(small.proj.weight, m.proj.weight[:, _rows(h, hd, v_keep)])
    # the scale: the original 1/sqrt(E) made explicit, or the user's own one untouched
    (node,) = _sdpa_nodes(small)
    want = kw.get("scale", 1 / math.sqrt(hd))
    assert node.kwargs["scale"] == pytest.approx(want)
    # value oracle: attention recomputed by hand from the original weights at the kept rows
    x = inputs[0]
    mask = torch.ones(5, 5, dtype=torch.bool).tril() if kw.get("mask") else None
    with torch.no_grad():
        exp = _manual_sdpa(m, x, qk_keep, v_keep, want, causal=kw.get("causal", False), mask=mask)
        torch.testing.assert_close(small(x), exp, atol=1e-5, rtol=1e-5)
    zoo.recover_slices(m, small)


def test_sdpa_scale_unchanged_when_head_dim_kept():
    m, inputs = _sdpa_case()
    plan = fxprune.PrunePlan({"v.weight:0": [2]})
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    (node,) = _sdpa_nodes(small)
    assert "scale" not in node.kwargs  # q/k head dim intact: default scale is still right
    assert small.v.out_features == 14


def test_sdpa_gqa_head_dim_spans_query_and_kv_heads():
    """Under GQA head dim j of the 2 kv heads and of the 4 query heads is one class."""
    m, inputs = _sdpa_case(heads=4, kv_heads=2)
    hd = m.hd
    graph = fxprune.analyze(m, inputs)
    assert graph.group_of("q.weight", 0).key == graph.group_of("k.weight", 0).key
    exp = graph.expand(fxprune.PrunePlan({"k.weight:0": [1]}))
    assert exp.plan["k.weight:0"] == [1, hd + 1]
    assert exp.plan["q.weight:0"] == [1, hd + 1, 2 * hd + 1, 3 * hd + 1]
    assert "v.weight:0" not in exp.plan


def test_sdpa_key_positions_pinned():
    class SeqPrune(nn.Module):  # the sequence dim of k/v reaches a parameter: still not removable
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 1, 6, 4))

        def forward(self, q):
            k = q * 0 + self.pos
            return F.scaled_dot_product_attention(q, k, k)

    m = SeqPrune()
    graph = fxprune.analyze(m, (torch.randn(1, 1, 6, 4),))
    assert graph.group_of("pos", 2).pinned
    assert graph.group_of("pos", 3).pinned  # reaches the model input q


def test_sdpa_plan_by_ratio_and_trace():
    m, inputs = _sdpa_case(heads=4, kv_heads=2)
    graph = fxprune.analyze(m, inputs)
    plan = fxprune.plan_by_ratio(graph, 0.5)
    assert plan
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    from helpers import check_jit_trace, check_train_step
    check_train_step(small, inputs)
    check_jit_trace(small, inputs)
