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


def test_sdpa_aten_target():
    """The aten-level op (what torch.export graphs hold) takes the same rule and the same scale rewrite."""
    class AtenBlock(SDPABlock):
        def forward(self, x):
            b, n, _ = x.shape
            q = self.q(x).view(b, n, self.h, self.hd).transpose(1, 2)
            k = self.k(x).view(b, n, self.kvh, self.hd).transpose(1, 2)
            v = self.v(x).view(b, n, self.kvh, self.hd).transpose(1, 2)
            o = torch.ops.aten.scaled_dot_product_attention.default(q, k, v)
            return self.proj(o.transpose(1, 2).reshape(b, n, self.h * self.hd))

    torch.manual_seed(0)
    m, x = AtenBlock().eval(), torch.randn(2, 5, 16)
    plan = fxprune.PrunePlan({"k.weight:0": [0]})
    small = fxprune.prune(m, plan, x)
    fxprune.verify(m, small, plan, x)
    aten_sdpa = torch.ops.aten.scaled_dot_product_attention.default
    (node,) = [n for n in small.graph.nodes if n.target is aten_sdpa]
    assert node.kwargs["scale"] == pytest.approx(1 / math.sqrt(8))
    assert small.q.out_features == 14 and small.k.out_features == 14


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


# ------------------------------------------------------------------------------------ MultiheadAttention

E, NH, HD = 16, 4, 4  # embed dim, heads, head dim


class MHANet(nn.Module):
    def __init__(self, batch_first=False, need_weights=True, kv=False, extra=False, average=True):
        super().__init__()
        self.pre = nn.Linear(6, E)
        kw = {"kdim": 6, "vdim": 5} if kv else {}
        self.attn = nn.MultiheadAttention(E, NH, batch_first=batch_first, add_bias_kv=extra,
                                          add_zero_attn=extra, **kw)
        if kv:
            self.kpre = nn.Linear(6, 6)
            self.vpre = nn.Linear(6, 5)
        self.fc = nn.Linear(E, 3)
        self.kv, self.extra, self.need_weights, self.average = kv, extra, need_weights, average
        if extra:  # batch 2, 5 query and 5 key positions
            self.register_buffer("kpm", torch.tensor([[False] * 4 + [True], [True] + [False] * 4]))
            self.register_buffer("mask", (torch.rand(5, 5) > 0.7).fill_diagonal_(False))

    def forward(self, x):
        y = self.pre(x)
        k = self.kpre(x) if self.kv else y
        v = self.vpre(x) if self.kv else y
        if self.extra:
            o, w = self.attn(y, k, v, key_padding_mask=self.kpm, need_weights=self.need_weights,
                             attn_mask=self.mask, average_attn_weights=self.average)
        else:
            o, w = self.attn(y, k, v, need_weights=self.need_weights, average_attn_weights=self.average)
        return self.fc(o), w  # w is None without need_weights


def _mha_case(**kw):
    torch.manual_seed(0)
    m = MHANet(**kw).eval()
    with torch.no_grad():
        m.attn.in_proj_bias.normal_()  # zero-initialised by torch: give the bias rows values to check
        if m.attn.bias_k is not None:
            m.attn.bias_k.normal_()
            m.attn.bias_v.normal_()
    x = torch.randn(2, 5, 6) if kw.get("batch_first") else torch.randn(5, 2, 6)
    return m, (x,)


def _manual_mha(m, x, heads_keep, qk_keep, v_keep, emb_keep=None, out_keep=None):
    """nn.MultiheadAttention written out by hand (no bias_kv / zero_attn / masks), weights at kept rows."""
    a = m.attn
    emb_keep = list(range(E)) if emb_keep is None else emb_keep
    out_keep = list(range(E)) if out_keep is None else out_keep
    qr = sorted(h * HD + j for h in heads_keep for j in qk_keep)
    vr = sorted(h * HD + j for h in heads_keep for j in v_keep)
    w, b = a.in_proj_weight, a.in_proj_bias
    y = F.linear(x, m.pre.weight[emb_keep], m.pre.bias[emb_keep])
    if not a.batch_first:
        y = y.transpose(0, 1)
    n, length = y.shape[:2]
    hq, dq, dv = len(heads_keep), len(qk_keep), len(v_keep)

    def proj(rows, d):
        rows = torch.tensor(rows)
        return F.linear(y, w[rows][:, emb_keep], b[rows]).view(n, length, hq, d).transpose(1, 2)

    q, k = proj(qr, dq), proj([E + r for r in qr], dq)
    v = proj([2 * E + r for r in vr], dv)
    att = (q @ k.transpose(-1, -2) / math.sqrt(HD)).softmax(-1)
    o = (att @ v).transpose(1, 2).reshape(n, length, hq * dv)
    o = F.linear(o, a.out_proj.weight[out_keep][:, vr], a.out_proj.bias[out_keep])
    if not a.batch_first:
        o = o.transpose(0, 1)
    return F.linear(o, m.fc.weight[:, out_keep], m.fc.bias), att.mean(1)


QK_RM, V_RM = [1], [2]  # q/k head dim 1 and v head dim 2, in every head
MHA_PLAN = {"attn.in_proj_weight:0": [1, 2 * E + 2], "pre.weight:0": [3, 7], "attn.out_proj.weight:0": [0, 5]}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_head_dims(batch_first, need_weights):
    m, inputs = _mha_case(batch_first=batch_first, need_weights=need_weights)
    plan = fxprune.PrunePlan(MHA_PLAN)
    small = fxprune.prune(m, plan, inputs)
    report = fxprune.verify(m, small, plan, inputs)
    assert report.max_abs_diff < 1e-5
    a = small.attn
    assert type(a).__name__ == "PrunedMultiheadAttention"
    assert (a.num_heads, a.qk_head_dim, a.v_head_dim, a.embed_dim) == (4, 3, 3, 14)
    assert a.scale == pytest.approx(0.5)  # the original 1/sqrt(4)
    assert tuple(a.in_proj_weight.shape) == (4 * (3 + 3 + 3), 14)
    assert tuple(a.out_proj.weight.shape) == (14, 12) and small.fc.in_features == 14
    exp = small.meta["fxprune"]["plan"]
    assert exp["attn.in_proj_weight:0"] == [1, 5, 9, 13, 17, 21, 25, 29, 34, 38, 42, 46]
    assert exp["attn.out_proj.weight:1"] == [2, 6, 10, 14]
    assert exp["attn.in_proj_weight:1"] == [3, 7]
    # value oracle: attention by hand from the original weights at the kept indices
    x = inputs[0]
    with torch.no_grad():
        got = small(x)
        want, att = _manual_mha(m, x, range(NH), K(HD, QK_RM), K(HD, V_RM), K(E, [3, 7]), K(E, [0, 5]))
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(got[1], att, atol=1e-5, rtol=1e-5)
    else:
        assert got[1] is None
    zoo.recover_slices(m, small)


@pytest.mark.parametrize("average", [True, False])
def test_mha_whole_heads(average):
    m, inputs = _mha_case(batch_first=True, average=average)
    plan = fxprune.PrunePlan({"attn.out_proj.weight:1": [4, 5, 6, 7]})  # every column of head 1
    if not average:  # per-head weights are a model output: heads are pinned, the plan would empty v
        with pytest.raises(fxprune.PlanError):
            fxprune.prune(m, plan, inputs)
        return
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    a = small.attn
    assert (a.num_heads, a.qk_head_dim, a.v_head_dim) == (3, 4, 4)
    exp = small.meta["fxprune"]["plan"]
    assert exp["attn.in_proj_weight:0"] == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    assert exp["attn.out_proj.weight:1"] == [4, 5, 6, 7]
    x = inputs[0]
    with torch.no_grad():
        out, w = small(x)
        want, att = _manual_mha(m, x, [0, 2, 3], range(HD), range(HD))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, att, atol=1e-5, rtol=1e-5)  # averaged over the 3 kept heads


def test_mha_head_and_head_dim_classes_in_one_analysis():
    m, inputs = _mha_case()
    g = fxprune.analyze(m, inputs).group_of("attn.in_proj_weight", 0)
    assert len(g.all_classes) == 2 * HD and len(g.head_classes) == NH
    # head h: its q, k and v rows; head dim j: row j of every head in q and k
    assert g.head_classes[1] == ("attn.in_proj_weight:0", _rows(1, HD, range(HD), HD) + _rows(
        1, HD, range(HD), E + HD) + _rows(1, HD, range(HD), 2 * E + HD))
    assert g.all_classes[0] == ("attn.in_proj_weight:0", _rows(NH, HD, [0]) + _rows(NH, HD, [0], E))
    # one plan, both kinds: head 1 and q/k dim 0 of the other heads
    rows = sorted(set(g.head_classes[1][1] + g.all_classes[0][1]))
    plan = fxprune.PrunePlan({"attn.in_proj_weight:0": rows})
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    assert (small.attn.num_heads, small.attn.qk_head_dim, small.attn.v_head_dim) == (3, 3, 4)


def test_mha_separate_kdim_vdim():
    m, inputs = _mha_case(kv=True, batch_first=True)
    plan = fxprune.PrunePlan({"kpre.weight:0": [1], "vpre.weight:0": [0, 4], "attn.q_proj_weight:0": [2],
                              "attn.v_proj_weight:0": [3]})
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    a = small.attn
    assert (a.kdim, a.vdim, a.qk_head_dim, a.v_head_dim) == (5, 3, 3, 3)
    assert tuple(a.q_proj_weight.shape) == (12, 16) and tuple(a.k_proj_weight.shape) == (12, 5)
    assert tuple(a.v_proj_weight.shape) == (12, 3) and a.in_proj_weight is None
    exp = small.meta["fxprune"]["plan"]
    assert exp["attn.k_proj_weight:0"] == [2, 6, 10, 14]
    assert exp["attn.in_proj_bias:0"] == [2, 6, 10, 14, 18, 22, 26, 30, 35, 39, 43, 47]
    assert torch.equal(a.k_proj_weight, m.attn.k_proj_weight[_rows(NH, HD, [0, 1, 3])][:, [0, 2, 3, 4, 5]])
    zoo.recover_slices(m, small)


def test_mha_bias_kv_zero_attn_masks():
    m, inputs = _mha_case(extra=True, batch_first=True)
    plan = fxprune.PrunePlan(MHA_PLAN)
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    a = small.attn
    assert tuple(a.bias_k.shape) == (1, 1, 12) and tuple(a.bias_v.shape) == (1, 1, 12)
    assert torch.equal(a.bias_k, m.attn.bias_k[..., _rows(NH, HD, K(HD, QK_RM))])
    assert torch.equal(a.bias_v, m.attn.bias_v[..., _rows(NH, HD, K(HD, V_RM))])
    zoo.recover_slices(m, small)


def test_mha_3d_mask_pins_heads_only():
    class M3(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, NH)
            self.register_buffer("mask", torch.zeros(2 * NH, 5, 5))

        def forward(self, x):
            return self.attn(x, x, x, attn_mask=self.mask)[0]

    m, x = M3().eval(), torch.randn(5, 2, E)
    g = fxprune.analyze(m, x).group_of("attn.in_proj_weight", 0)
    assert not g.pinned and len(g.all_classes) == 2 * HD and not g.head_classes
    # the rows of a whole head: heads are pinned, and covering them by head dims takes every head dim
    with pytest.raises(fxprune.PlanError, match="keep at least one"):
        fxprune.prune(m, {"attn.in_proj_weight:0": _rows(1, HD, range(HD), HD)}, x)


def test_mha_whole_head_plan_without_flags():
    """A plan that lists exactly the rows of whole heads is read with whole-head classes."""
    m, inputs = _mha_case(batch_first=True)
    head1 = [4, 5, 6, 7]
    rows = head1 + [16 + i for i in head1] + [32 + i for i in head1]
    plan = fxprune.PrunePlan({"attn.in_proj_weight:0": rows, "attn.out_proj.weight:1": head1})
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    assert (small.attn.num_heads, small.attn.qk_head_dim, small.attn.v_head_dim) == (3, 4, 4)
    x = inputs[0]
    with torch.no_grad():
        out, w = small(x)
        want, att = _manual_mha(m, x, [0, 2, 3], range(HD), range(HD))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, att, atol=1e-5, rtol=1e-5)


def test_mha_prune_twice_inplace_and_script(tmp_path):
    from helpers import check_jit, check_onnx, check_train_step
    m, inputs = _mha_case(batch_first=True)
    plan = fxprune.PrunePlan(MHA_PLAN)
    small = fxprune.prune(m, plan, inputs)
    plan2 = fxprune.PrunePlan({"attn.in_proj_weight:0": [0]})  # again, on the pruned model
    smaller = fxprune.prune(small, plan2, inputs)
    fxprune.verify(small, smaller, plan2, inputs)
    assert (smaller.attn.qk_head_dim, smaller.attn.v_head_dim) == (2, 3)
    check_train_step(smaller, inputs)
    assert check_jit(smaller, inputs) == "script"
    check_onnx(smaller, inputs, tmp_path)
    # inplace: the user's model holds the replacement module afterwards
    m2, _ = _mha_case(batch_first=True)
    out = fxprune.prune(m2, plan, inputs, inplace=True)
    assert m2.attn is out.attn and type(m2.attn).__name__ == "PrunedMultiheadAttention"
    torch.testing.assert_close(m2(*inputs), small(*inputs))


# ------------------------------------------------------------------------------------------------- ViT

def _vit():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                             hidden_dim=64, mlp_dim=128)
    with torch.no_grad():  # torchvision zero-initialises the head and the attention biases
        m.heads.head.weight.normal_(0, 0.1)
        m.heads.head.bias.normal_()
        for mod in m.modules():
            if isinstance(mod, nn.MultiheadAttention):
                mod.in_proj_bias.normal_(0, 0.1)
                mod.out_proj.bias.normal_(0, 0.1)
    zoo._randomize(m)  # LayerNorm affine parameters; eval mode
    return m, (torch.randn(2, 3, 32, 32),)


_VIT: dict = {}


def _vit_pruned():
    if not _VIT:
        m, inputs = _vit()
        plan = fxprune.plan_by_ratio(fxprune.analyze(m, inputs), 0.5)
        _VIT.update(m=m, inputs=inputs, plan=plan, small=fxprune.prune(m, plan, inputs))
    return _VIT["m"], _VIT["inputs"], _VIT["plan"], _VIT["small"]


def test_vit_plan_by_ratio_verify_and_widths():
    m, inputs, plan, small = _vit_pruned()
    report = fxprune.verify(m, small, plan, inputs)
    assert report.max_abs_diff < 1e-4
    # hidden_dim (the residual stream) 64 -> 32, mlp_dim 128 -> 64, attention 32 classes -> 16
    assert small.conv_proj.out_channels == 32
    assert tuple(small.class_token.shape) == (1, 1, 32)
    assert tuple(small.encoder.pos_embedding.shape) == (1, 17, 32)
    assert small.encoder.ln.normalized_shape == (32,) and small.heads.head.in_features == 32
    for i in range(2):
        layer = small.encoder.layers.get_submodule(f"encoder_layer_{i}")
        assert layer.ln_1.normalized_shape == (32,) and layer.ln_2.normalized_shape == (32,)
        assert (layer.mlp[0].in_features, layer.mlp[0].out_features) == (32, 64)
        assert (layer.mlp[3].in_features, layer.mlp[3].out_features) == (64, 32)
        a = layer.self_attention
        assert type(a).__name__ == "PrunedMultiheadAttention"
        assert a.num_heads == 4 and a.embed_dim == 32 and a.qk_head_dim + a.v_head_dim == 16
        assert tuple(a.in_proj_weight.shape) == (4 * (2 * a.qk_head_dim + a.v_head_dim), 32)
        assert a.scale == pytest.approx(1 / 4)  # 1/sqrt(64 / 4), the original
    # the graph constant of `x.reshape(n, hidden_dim, n_h * n_w)` follows the pruned width
    (node,) = [n for n in small.graph.nodes if n.target == "reshape"]
    assert node.args[2] == 32
    with torch.no_grad():
        assert tuple(small(*inputs).shape) == (2, 1000)
    zoo.recover_slices(m, small)  # every tensor is an index_select of the original (value oracle)


def test_vit_train_jit_onnx(tmp_path):
    from helpers import check_jit_trace, check_onnx, check_train_step
    m, inputs, plan, small = _vit_pruned()
    check_train_step(small, inputs)
    check_jit_trace(small, inputs)
    check_onnx(small, inputs, tmp_path)


def test_vit_whole_heads():
    m, inputs = _vit()
    key = "encoder.layers.encoder_layer_0.self_attention.out_proj.weight:1"
    plan = fxprune.PrunePlan({key: list(range(16, 32)) + list(range(48, 64))})  # every column of heads 1, 3
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    a = small.encoder.layers.encoder_layer_0.self_attention
    assert (a.num_heads, a.qk_head_dim, a.v_head_dim) == (2, 16, 16)
    assert small.encoder.layers.encoder_layer_1.self_attention.num_heads == 4
    keep = list(range(0, 16)) + list(range(32, 48))
    orig = m.encoder.layers.encoder_layer_0.self_attention
    assert torch.equal(a.out_proj.weight, orig.out_proj.weight[:, keep])
    rows = keep + [64 + i for i in keep] + [128 + i for i in keep]
    assert torch.equal(a.in_proj_weight, orig.in_proj_weight[rows])


def test_vit_plan_by_ratio_heads():
    """plan_by_ratio(heads=True): half the heads go; prune/verify read the plan as heads."""
    m, inputs = _vit()
    plan = fxprune.plan_by_ratio(fxprune.analyze(m, inputs), 0.5, heads=True)
    small = fxprune.prune(m, plan, inputs)
    assert fxprune.verify(m, small, plan, inputs).max_abs_diff < 1e-4
    for i in range(2):
        a = small.encoder.layers.get_submodule(f"encoder_layer_{i}").self_attention
        assert (a.num_heads, a.qk_head_dim, a.v_head_dim, a.embed_dim) == (2, 16, 16, 32)
    zoo.recover_slices(m, small)


def test_pruner_prune_head_dims_false_keeps_every_head_size():
    """``prune_head_dims=False``: heads may go, head dims never; the MLP still loses channels."""
    m, inputs = _vit()
    pruner = fxprune.Pruner(m, inputs, pruning_ratio=0.5, prune_num_heads=True, head_pruning_ratio=0.5,
                            prune_head_dims=False)
    small = pruner.step()
    assert fxprune.verify(m, small, pruner.plan, inputs).max_abs_diff < 1e-4
    for i in range(2):
        a = small.encoder.layers.get_submodule(f"encoder_layer_{i}").self_attention
        assert (a.num_heads, a.qk_head_dim, a.v_head_dim) == (2, 16, 16)
        assert small.encoder.layers.get_submodule(f"encoder_layer_{i}").mlp[0].out_features == 64
