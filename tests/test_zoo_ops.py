"""Small op cases distilled from the torchvision/timm zoo (tests/test_zoo.py): one module per pattern.

Each case analyses with ``strict=True`` (no op without a rule), prunes with a hand-written plan, and checks
``fxprune.verify``, the hand-written parameter shapes, that the kept weights are ``index_select`` of the
original at the hand-picked kept indices, and that the output shape is unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

import fxprune


def _kept(n: int, removed: Sequence[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in set(removed)])


def _check(model: nn.Module, inputs: tuple[torch.Tensor, ...], plan: dict[str, list[int]],
           shapes: dict[str, tuple[int, ...]], kept: dict[str, dict[int, torch.Tensor]] | None = None,
           train: bool = False) -> torch.fx.GraphModule:
    """Prune ``model`` by ``plan``; check verify, exact shapes and the kept slices of ``kept`` params."""
    model.eval()
    graph = fxprune.analyze(model, inputs, strict=True)
    assert graph.frontend in ("fx", "export"), f"traced only in parts: {graph!r}"
    small = fxprune.prune(model, fxprune.PrunePlan(plan), inputs)
    fxprune.verify(model, small, plan, inputs)
    state, orig = small.state_dict(), model.state_dict()
    for name, shape in shapes.items():
        assert tuple(state[name].shape) == shape, f"{name}: {tuple(state[name].shape)} != {shape}"
    for name, dims in (kept or {}).items():
        want = orig[name]
        for d, idx in dims.items():
            want = want.index_select(d, idx)
        assert torch.equal(state[name], want), f"{name}: kept values are not the original's"
    with torch.no_grad():
        got, want = tree_flatten(small(*inputs)), tree_flatten(model(*inputs))
    assert got[1] == want[1] and [t.shape for t in got[0]] == [t.shape for t in want[0]]
    if train:
        small.train()
        small(*inputs).sum().backward()
    return small


# ------------------------------------------------------------------------------- chunk(...)[-1]

class ChunkLast(nn.Module):
    """EdgeNeXt's split-transpose block: ``x.chunk(2, 1)``; ``[0]`` goes through a conv, ``[-1]`` around."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        parts = x.chunk(2, dim=1)
        return self.head(torch.cat([self.dw(parts[0]), parts[-1]], 1))


def test_chunk_negative_index():
    m = ChunkLast()
    removed = [1, 5, 6]  # one channel of the first chunk, two of the last
    small = _check(m, (torch.randn(1, 3, 6, 6),), {"stem.weight:0": removed},
                   {"stem.weight": (5, 3, 1, 1), "dw.weight": (3, 1, 3, 3), "head.weight": (2, 5, 1, 1)},
                   {"stem.weight": {0: _kept(8, removed)}, "head.weight": {1: _kept(8, removed)}})
    assert small.get_submodule("dw").groups == 3


# ------------------------------------------------------------------------- sizes read from x.shape

class ShapeReshape(nn.Module):
    """``B, C, H, W = x.shape; x.reshape(B, C, H * W)`` with C pruned (EdgeNeXt, many timm blocks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x)
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).permute(0, 2, 1)
        return self.fc(x).reshape(B, H, W, -1)


def test_reshape_sizes_from_shape():
    removed = [0, 3, 4]
    small = _check(ShapeReshape(), (torch.randn(2, 3, 4, 4),), {"conv.weight:0": removed},
                   {"conv.weight": (5, 3, 1, 1), "fc.weight": (4, 5)},
                   {"fc.weight": {1: _kept(8, removed)}})
    # the batch size stays read from the input; the pruned channel count became a constant
    out = small(torch.randn(3, 3, 4, 4))
    assert out.shape == (3, 4, 4, 4)


class HeadsFromResidual(nn.Module):
    """XCiT's ``qkv.reshape(B, N, 3, heads, C // heads)`` where ``C`` is the *residual* width."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(4, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.inp(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, C))
        return self.out(x)


def test_reshape_size_reads_pruned_residual():
    # prune the residual stream only: C shrinks, the qkv head layout must not follow it
    m = HeadsFromResidual()
    removed = [2, 7]
    _check(m, (torch.randn(1, 5, 4),), {"inp.weight:0": removed},
           {"inp.weight": (6, 4), "qkv.weight": (24, 6), "proj.weight": (6, 8), "out.weight": (3, 6)},
           {"qkv.weight": {1: _kept(8, removed)}, "proj.weight": {0: _kept(8, removed)}})


# ------------------------------------------------------------------------------ tensor creation

class Creation(nn.Module):
    """``zeros_like`` follows its input; ``torch.zeros(B, C)`` / ``new_ones`` / ``arange`` are constants."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.conv(x)
        y = y + torch.zeros_like(y)
        B, C = y.shape[:2]
        z = self.conv2(y)
        pos = torch.arange(z.shape[1], dtype=z.dtype) + torch.zeros((B, z.shape[1])) + z.new_ones((B, 6))
        return self.fc(z.mean((2, 3)) + pos) + torch.zeros((B, C)).sum(1, keepdim=True)


def test_creation_ops():
    removed = [1, 2, 6]
    _check(Creation(), (torch.randn(2, 3, 4, 4),), {"conv.weight:0": removed},
           {"conv.weight": (5, 3, 1, 1), "conv2.weight": (6, 5, 1, 1), "fc.weight": (2, 6)},
           {"conv2.weight": {1: _kept(8, removed)}})


# --------------------------------------------------------------------- weight standardisation

class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d: weights standardised per output channel with ``F.batch_norm``."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.scale = (cin * k * k) ** -0.5

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.,
                         eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = StdConv(3, 8, 3)
        self.c2 = StdConv(8, 6, 3)

    def forward(self, x):
        return self.c2(F.relu(self.c1(x)))


def test_weight_standardisation():
    # c1's outputs are per-channel statistics (exact); c2's inputs shrink the statistics' fan-in, which
    # verify recomputes over the kept channels
    removed = [0, 4, 5]
    m = StdConvNet()
    small = _check(m, (torch.randn(1, 3, 6, 6),), {"c1.weight:0": removed},
                   {"c1.weight": (5, 3, 3, 3), "c1.gain": (5, 1, 1, 1), "c2.weight": (6, 5, 3, 3),
                    "c2.gain": (6, 1, 1, 1)},
                   {"c1.gain": {0: _kept(8, removed)}, "c2.weight": {1: _kept(8, removed)}}, train=True)
    report = fxprune.verify(m, small, {"c1.weight:0": removed}, (torch.randn(1, 3, 6, 6),))
    assert report.recomputed, "the standardisation of c2 reads pruned channels: it must be recomputed"


# ------------------------------------------------------------------ caches filled while tracing

class CachedBias(nn.Module):
    """LeViT/EfficientFormer: in eval mode an attention-bias gather is cached in a dict per device."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.biases = nn.Parameter(torch.randn(8, 3))
        self.register_buffer("idx", torch.tensor([0, 2, 1, 1]), persistent=False)
        self.cache: dict[str, torch.Tensor] = {}
        self.out = nn.Linear(8, 2)

    def bias(self):
        if self.training:
            return self.biases[:, self.idx]
        if "cpu" not in self.cache:
            self.cache["cpu"] = self.biases[:, self.idx]
        return self.cache["cpu"]

    def forward(self, x):  # x: (B, 4 tokens, 4)
        return self.out(self.fc(x) + self.bias().t())


def test_trace_leaves_no_proxy_in_caches():
    m = CachedBias().eval()
    x = torch.randn(2, 4, 4)
    removed = [3, 5]
    _check(m, (x,), {"fc.weight:0": removed}, {"fc.weight": (6, 4), "biases": (6, 3), "out.weight": (2, 6)},
           {"biases": {0: _kept(8, removed)}})
    assert not any(isinstance(v, torch.fx.Proxy) for v in m.cache.values())


# ------------------------------------------------------------- parameters read as data; wrapped helpers

class TableMLP(nn.Module):
    """Swin v2's continuous position bias: a constant coordinate table goes through an MLP."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(1, 5, 5, 4))
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):  # x: (B, 6)
        return self.fc(x) + self.mlp(self.table).mean((1, 2))


def test_buffer_read_as_data_is_masked_by_verify():
    # removing column 1 of the table and of mlp.0's weight equals zeroing that column in the original
    m = TableMLP()
    _check(m, (torch.randn(2, 6),), {"table:3": [1], "mlp.0.weight:0": [0, 7]},
           {"table": (1, 5, 5, 3), "mlp.0.weight": (6, 3), "mlp.2.weight": (3, 6)},
           {"table": {3: _kept(4, [1])}, "mlp.2.weight": {1: _kept(8, [0, 7])}})


@torch.fx.wrap
def _pad_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    size[0] = max(size[0], x.shape[-1])  # mutates its list argument, like torchvision's swin3d helper
    return F.pad(x, (0, size[0] - x.shape[-1]))


class MutatingHelper(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 1)
        self.head = nn.Conv1d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)) + _pad_to(self.conv(x), [x.shape[-1]]).sigmoid())


@pytest.mark.filterwarnings("ignore:fxprune. no rule for 1 op")  # the helper has no rule: its dims are pinned
def test_wrapped_helper_mutating_its_list_argument():
    m = MutatingHelper()
    gm = fxprune.trace(m, (torch.randn(1, 3, 5),))  # shape propagation runs the helper on plain lists
    assert gm.graph.find_nodes(op="output")[0].args[0].meta["val"].shape == (1, 2, 5)
    graph = fxprune.analyze(m, (torch.randn(1, 3, 5),))
    plan = fxprune.plan_by_ratio(graph, 0.5)
    fxprune.verify(m, fxprune.prune(m, plan, (torch.randn(1, 3, 5),)), plan, (torch.randn(1, 3, 5),))


# ------------------------------------------------------------------------ torchvision Swin helpers

class SwinBlock(nn.Module):
    """Patch merging, then torchvision's (shifted) window attention on a residual stream."""

    def __init__(self, v2: bool):
        from torchvision.models import swin_transformer as tvs
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.merge = (tvs.PatchMergingV2 if v2 else tvs.PatchMerging)(4)  # 4 -> 8 channels
        attn = tvs.ShiftedWindowAttentionV2 if v2 else tvs.ShiftedWindowAttention
        self.attn = attn(8, [2, 2], [1, 1], num_heads=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: (B, H, W, 3)
        x = self.merge(self.embed(x))
        x = x + self.attn(x)
        return self.head(x)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_swin_window_attention(v2):
    from fxprune.rules.swin import window_attention
    m = SwinBlock(v2)
    x = (torch.randn(1, 8, 8, 3),)
    # residual channels {1, 6}; head-dim column 0 of q/k (rows 0, 4 of q and 8, 12 of k: heads x 4 dims);
    # column 3 of v (rows 16 + 3, 16 + 7), i.e. proj columns 3 and 7
    plan = {"merge.reduction.weight:0": [1, 6], "attn.qkv.weight:0": [19]}
    if not v2:
        plan["attn.qkv.weight:0"] = [0, 19]
    small = _check(m, x, plan, {
        "merge.reduction.weight": (6, 16), "attn.qkv.weight": (22 if v2 else 18, 6),
        "attn.proj.weight": (6, 6), "head.weight": (2, 6)},
        {"attn.qkv.weight": {0: _kept(24, [19, 23] if v2 else [0, 4, 8, 12, 19, 23]), 1: _kept(8, [1, 6])},
         "attn.proj.weight": {0: _kept(8, [1, 6]), 1: _kept(8, [3, 7])}}, train=True)
    (node,) = small.graph.find_nodes(op="call_function", target=window_attention)
    assert (node.kwargs["qk_dim"], node.kwargs["v_dim"]) == ((4, 3) if v2 else (3, 3))
    if v2:  # cosine attention: q/k columns are statistics inputs, pinned
        graph = fxprune.analyze(m, x)
        with pytest.raises(fxprune.PlanError, match="cosine attention"):
            graph.expand(fxprune.PrunePlan({"attn.qkv.weight:0": [0]}))


# ------------------------------------------------------------------ tensor_split, repeat_interleave

class SplitRepeat(nn.Module):
    """``tensor_split`` at an index (MViT's class token) and a ``repeat_interleave``d position table."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 1)  # (B, 8, 6): channels 8, tokens 6
        self.pos = nn.Parameter(torch.randn(3, 8))  # repeated twice along the tokens
        self.a = nn.Conv1d(2, 4, 1)
        self.b = nn.Conv1d(6, 4, 1)

    def forward(self, x):
        y = self.conv(x) + self.pos.repeat_interleave(2, dim=0).t()
        head, tail = torch.tensor_split(y, (2,), dim=1)
        return self.a(head) + self.b(tail)


def test_tensor_split_and_repeat_interleave():
    removed = [1, 5, 6]  # one of the 2 head channels, two of the 6 tail ones
    small = _check(SplitRepeat(), (torch.randn(1, 3, 6),), {"conv.weight:0": removed},
                   {"conv.weight": (5, 3, 1), "pos": (3, 5), "a.weight": (4, 1, 1), "b.weight": (4, 4, 1)},
                   {"pos": {1: _kept(8, removed)}, "b.weight": {1: _kept(6, [3, 4])}})
    assert small.graph.find_nodes(op="call_function", target=torch.split)  # the split index was rewritten


# --------------------------------------------------------------------------- torchvision MViT helpers

@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_mvit_helpers(v2):
    # a two-block MViT: v1 has absolute position embeddings, v2 relative ones (_add_rel_pos),
    # a pooled-query shortcut (_add_shortcut) and a projection after attention
    from torchvision.models.video.mvit import MSBlockConfig, MViT
    torch.manual_seed(0)
    block = MSBlockConfig(num_heads=2, input_channels=8, output_channels=8, kernel_q=[3, 3, 3],
                          kernel_kv=[3, 3, 3], stride_q=[1, 1, 1], stride_kv=[1, 2, 2])
    m = MViT((16, 16), 4, [block, block], residual_pool=v2, residual_with_cls_embed=not v2, rel_pos_embed=v2,
             proj_after_attn=v2, num_classes=3, dropout=0.0)
    x = (torch.randn(1, 3, 4, 16, 16),)
    graph = fxprune.analyze(m, x, strict=True)
    plan = fxprune.plan_by_ratio(graph, 0.5)
    assert len(plan) >= 2, plan
    small = fxprune.prune(m, plan, x)
    fxprune.verify(m.eval(), small, plan, x)
    # the MLP hidden width and the attention head dims shrank; heads stay
    assert small.get_submodule("blocks.0.mlp.0").out_features < 32
    assert small.get_submodule("blocks.0.attn.qkv").out_features < 48


# ----------------------------------------------------------------------------- OrderedDict outputs

class Segmenter(nn.Module):
    """torchvision's segmentation models return ``OrderedDict(out=..., aux=...)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        from collections import OrderedDict
        y = torch.relu(self.conv(x))
        result = OrderedDict()
        result["out"] = self.out(y)
        result["aux"] = self.aux(y)
        return result


def test_ordered_dict_output_kept():
    from collections import OrderedDict
    m = Segmenter()
    x = (torch.randn(1, 3, 5, 5),)
    small = _check(m, x, {"conv.weight:0": [0, 7]}, {"conv.weight": (6, 3, 3, 3), "aux.weight": (2, 6, 1, 1)})
    out = small(*x)
    assert type(out) is OrderedDict and list(out) == ["out", "aux"]
    assert fxprune.analyze(m, x).group_of("out.weight", 0).pinned == "model output"


# ------------------------------------------------------------------- norms with running statistics

def _frozen_norms():
    import torchvision
    out = [("torchvision FrozenBatchNorm2d", torchvision.ops.FrozenBatchNorm2d),
           ("SyncBatchNorm", nn.SyncBatchNorm),
           ("InstanceNorm2d(track_running_stats)", lambda c: nn.InstanceNorm2d(c, affine=True,
                                                                               track_running_stats=True))]
    try:
        import timm.layers
        out += [("timm FrozenBatchNormAct2d", timm.layers.FrozenBatchNormAct2d),
                ("timm BatchNormAct2d", timm.layers.BatchNormAct2d)]
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("make", [m for _, m in _frozen_norms()], ids=[n for n, _ in _frozen_norms()])
def test_norm_with_running_stats(make):
    # FrozenBatchNorm2d computes its scale from its buffers in a traced forward: the buffers must stay
    # graph inputs (not constants folded at trace time) so that pruning slices them
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), make(8), nn.Conv2d(8, 4, 1))
    for b in m[1].buffers():
        if b.is_floating_point():
            b.uniform_(0.5, 1.5)
    removed = [1, 5]
    stats = [n for n in ("weight", "bias", "running_mean", "running_var")
             if getattr(m[1], n, None) is not None]
    _check(m, (torch.randn(2, 3, 5, 5),), {"0.weight:0": removed},
           {"0.weight": (6, 3, 1, 1), "2.weight": (4, 6, 1, 1), **{f"1.{n}": (6,) for n in stats}},
           {f"1.{n}": {0: _kept(8, removed)} for n in stats})
