"""Rules written for timm families whose channels were pinned for want of a rule (found by the zoo sweep).

Each test builds a tiny module with the op as the family uses it, prunes a hand-picked plan, checks the
widths by hand and compares the pruned model with a copy of the original whose removed rows are zeroed
(and checks that pruning did change the output, so the comparison can fail).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune


class Halo(nn.Module):
    """HaloNet's window gathering: ``Tensor.unfold`` over H then W, channels carried through."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        w = torch.relu(self.a(x)).unfold(2, 4, 2).unfold(3, 4, 2)  # N, C, nH, nW, 4, 4
        n, c, h, ww = w.shape[:4]
        return self.b(w.mean((-1, -2)).reshape(n, c, h, ww))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_tensor_unfold_channels_prune_and_match_the_zeroed_original(frontend):
    torch.manual_seed(0)
    model = Halo().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxprune.analyze(model, (x,), frontend=frontend)
    assert graph.frontend == frontend
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and ("b.weight", 1) in group.members
    plan = fxprune.PrunePlan({"a.weight:0": [1, 2, 6]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 5 and small.b.weight.shape[1] == 5
    _assert_equals_zeroed(model, small, x, [1, 2, 6])


def test_tensor_unfold_keeps_the_window_dims_pinned():
    class Mix(nn.Module):  # a Linear over the window positions: those rows are not channels
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x).unfold(3, 4, 4)).sum(1)  # channels summed away: not the output

    graph = fxprune.analyze(Mix().eval(), (torch.randn(1, 3, 4, 8),))
    assert graph.group_of("a.weight", 0).pinned is None
    assert graph.group_of("b.weight", 1).pinned  # the window dim: pinned by the rule's default-deny


class Grouped(nn.Module):
    """timm's CPU backbones (cpubone) normalise with GroupNorm in a forward only ``torch.export`` takes."""

    def __init__(self):
        super().__init__()
        self.a, self.n, self.b = nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.n(self.a(x))))


def test_exported_group_norm_prunes_whole_groups_and_matches_the_zeroed_original():
    # aten.group_norm has a sixth argument (cudnn_enabled): raised to F.group_norm it must be dropped
    torch.manual_seed(0)
    model = Grouped().eval()
    with torch.no_grad():
        model.n.weight.uniform_(0.5, 1.5)
        model.n.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 5, 5)
    graph = fxprune.analyze(model, (x,), frontend="export")
    assert graph.group_of("a.weight", 0).pinned is None
    plan = fxprune.PrunePlan({"a.weight:0": [2, 3]})  # one whole group of two channels
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.b.weight.shape[1] == 6 and small.n.weight.shape[0] == 6
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for t in (ref.a.weight, ref.a.bias, ref.n.weight, ref.n.bias):
            t[[2, 3]] = 0
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-4)


class AutocastOff(nn.Module):
    """EfficientViT (MIT): in-place hardswish, and attention under ``torch.autocast(enabled=False)``, which
    ``torch.export`` records as a ``wrap_with_autocast`` call on a subgraph."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(3, 8, 1), nn.Hardswish(inplace=True), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.act(self.a(x))
        with torch.autocast(device_type="cpu", enabled=False):
            h = torch.relu(h) * 2.0
        return self.b(h)


def test_exported_inplace_hardswish_and_autocast_off_region_prune_and_match_the_zeroed_original():
    torch.manual_seed(0)
    model = AutocastOff().eval()
    x = torch.randn(2, 3, 5, 5)
    with _no_rule_warning():
        graph = fxprune.analyze(model, (x,), frontend="export")
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and ("b.weight", 1) in group.members
    plan = fxprune.PrunePlan({"a.weight:0": [0, 4, 7]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 5 and small.b.weight.shape[1] == 5
    _assert_equals_zeroed(model, small, x, [0, 4, 7])


def _assert_equals_zeroed(model, small, x, removed):
    """``small`` computes what ``model`` computes with rows ``removed`` of ``a`` zeroed, and differs from it."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.a.weight[removed] = 0
        ref.a.bias[removed] = 0
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-4)


class _no_rule_warning:
    """Fails when the analysis warns that an op has no rule (the ops above must all have one)."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        msgs = [str(w.message) for w in self._caught if "no rule" in str(w.message)]
        assert not msgs, msgs[0]
        return False


class GemmaLike(nn.Module):
    """Gemma-style vision tower ops: functional RMSNorm, positions reversed by ``flip`` and looked up one-hot,
    a ``no_grad`` region (``wrap_with_set_grad_enabled`` under ``torch.export``)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 4)
        self.w = nn.Parameter(torch.rand(8) + 0.5)
        self.pos = nn.Parameter(torch.randn(5, 8))

    def forward(self, x):  # x: (N, T=5, 3)
        ids = torch.arange(x.shape[1]).flip(0)
        h = self.a(x) + F.one_hot(ids, 5).to(x.dtype) @ self.pos
        with torch.no_grad():
            h = h * 1.0
        h = torch.flip(F.rms_norm(h, (8,), self.w, 1e-6), (1,))
        return self.b(h)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_rms_norm_flip_one_hot_no_grad_prune_and_match_the_masked_original(frontend):
    torch.manual_seed(0)
    model = GemmaLike().eval()
    x = torch.randn(2, 5, 3)
    with _no_rule_warning():
        graph = fxprune.analyze(model, (x,), frontend=frontend)
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and {("w", 0), ("pos", 1), ("b.weight", 1)} <= set(group.members)
    removed = [1, 6]
    plan = fxprune.PrunePlan({"a.weight:0": removed})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.w.shape[0] == 6 and small.b.weight.shape[1] == 6
    # RMSNorm's statistics change with the channels: the oracle is the original computed over the kept
    # channels, i.e. the same ops on hand-sliced parameters
    keep = [i for i in range(8) if i not in removed]
    with torch.no_grad():
        ids = torch.arange(5).flip(0)
        h = F.linear(x, model.a.weight[keep], model.a.bias[keep]) + F.one_hot(ids, 5).float() @ model.pos[:, keep]
        h = torch.flip(F.rms_norm(h, (6,), model.w[keep], 1e-6), (1,))
        want = F.linear(h, model.b.weight[:, keep], model.b.bias)
        torch.testing.assert_close(small(x), want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-4)
    report = fxprune.verify(model, small, plan, (x,))
    assert report.max_abs_diff < 1e-4


class ResizedPositions(nn.Module):
    """NaFlexViT: a position table resized along the tokens by 1-d linear interpolation, added to the tokens
    (``aten.upsample_linear1d`` under ``torch.export``)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 4)
        self.pos = nn.Parameter(torch.randn(1, 8, 4))  # (1, D, L0)

    def forward(self, x):  # x: (N, L=6, 3)
        pos = F.interpolate(self.pos, size=x.shape[1], mode="linear", align_corners=False).transpose(1, 2)
        return self.b(torch.relu(self.a(x) + pos))


def test_exported_linear_1d_interpolation_keeps_channels_prunable_and_matches_the_zeroed_original():
    torch.manual_seed(0)
    model = ResizedPositions().eval()
    x = torch.randn(2, 6, 3)
    with _no_rule_warning():
        graph = fxprune.analyze(model, (x,), frontend="export")
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and ("pos", 1) in group.members
    plan = fxprune.PrunePlan({"a.weight:0": [2, 5]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.pos.shape[1] == 6 and small.b.weight.shape[1] == 6
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.a.weight[[2, 5]] = 0
        ref.a.bias[[2, 5]] = 0
        ref.pos[:, [2, 5]] = 0
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-4)


class RelPosTable(nn.Module):
    """MViTv2: a relative-position table gathered by distance (``aten.index.Tensor``) and a sliced in-place
    update (``aten.copy_``) under ``torch.export``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)
        self.table = nn.Parameter(torch.randn(7, 8))

    def forward(self, x):  # x: (4, 3)
        dist = torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3
        y = self.a(x)[:, None, :] * self.table[dist]  # (4, 4, 8)
        y[:, 1:] = y[:, 1:] * 2.0 + 1.0
        return self.b(y)


def test_exported_index_by_tensor_and_copy_prune_and_match_the_zeroed_original():
    torch.manual_seed(0)
    model = RelPosTable().eval()
    x = torch.randn(4, 3)
    gm = torch.export.export(model, (x,), strict=False).module()
    targets = {str(n.target) for n in gm.graph.nodes}
    assert {"aten.index.Tensor", "aten.copy_.default"} <= targets  # the ops this test is about
    with _no_rule_warning():
        graph = fxprune.analyze(model, (x,), frontend="export")
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and {("table", 1), ("b.weight", 1)} <= set(group.members)
    plan = fxprune.PrunePlan({"a.weight:0": [1, 4]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.table.shape[1] == 6 and small.b.weight.shape[1] == 6
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a removed channel is 1.0 after the update in the original: zero b's columns too
        for t in (ref.a.weight, ref.a.bias):
            t[[1, 4]] = 0
        ref.b.weight[:, [1, 4]] = 0
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-4)


class GlobalQuery(nn.Module):
    """GCViT: a global query repeated over the batch by a count computed from sizes
    (``q_global.repeat_interleave(B // q_global.shape[0], dim=0)``)."""

    def __init__(self):
        super().__init__()
        self.a, self.q, self.b = nn.Linear(3, 8), nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):  # x: (B, T, 3)
        g = self.q(x.mean(0, keepdim=True))
        g = g.repeat_interleave(x.shape[0] // g.shape[0], dim=0)
        return self.b(self.a(x) * g)


def test_repeat_interleave_by_a_size_expression_prunes_and_matches_the_zeroed_original():
    torch.manual_seed(0)
    model = GlobalQuery().eval()
    x = torch.randn(2, 4, 3)
    graph = fxprune.analyze(model, (x,))
    group = graph.group_of("a.weight", 0)
    assert group.pinned is None and {("q.weight", 0), ("b.weight", 1)} <= set(group.members)
    plan = fxprune.PrunePlan({"a.weight:0": [2, 5]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.q.weight.shape[0] == 6 and small.b.weight.shape[1] == 6
    _assert_equals_zeroed(model, small, x, [2, 5])


class HybridReshapeAs(nn.Module):
    """ViT hybrids (``vit_tiny_r_s16_p8_224``) under ``torch.export``: ``x.reshape_as(other)`` stays an aten
    op unless raised to the ``reshape_as`` method."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))                       # (N, 8, 2, 2)
        t = h.flatten(2).transpose(1, 2)                # (N, 4, 8)
        return self.b(t.reshape_as(t.contiguous()) * 1.5)


def test_exported_reshape_as_keeps_channels_prunable_and_matches_the_zeroed_original():
    torch.manual_seed(0)
    model = HybridReshapeAs().eval()
    x = torch.randn(2, 3, 2, 2)
    with _no_rule_warning():
        graph = fxprune.analyze(model, (x,), frontend="export")
    assert graph.group_of("a.weight", 0).pinned is None
    plan = fxprune.PrunePlan({"a.weight:0": [0, 3]})
    small = fxprune.prune(model, plan, (x,))
    assert small.a.weight.shape[0] == 6 and small.b.weight.shape[1] == 6
    _assert_equals_zeroed(model, small, x, [0, 3])
