"""The forms real code takes (issue 14): keyword arguments, sizes read as values, bare squeeze, train-mode
tracing, sums over channels, Pruner plans that never empty a value and always replay.

Every check compares against an expectation that does not come from fxprune: the original model with the
removed slices zeroed by hand (``zeroed``), hand-written widths, or a hand-computed reduction.
"""
from __future__ import annotations

import warnings
from typing import Dict, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.errors import InternalError
from fxprune.registry import RULES, Rule

from helpers import zeroed

X_IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def out_rows(prefix: str, idx: Sequence[int]) -> Dict[str, Tuple[int, Sequence[int]]]:
    """Output channels ``idx`` of a conv/linear: weight rows and bias entries."""
    return {f"{prefix}.weight": (0, idx), f"{prefix}.bias": (0, idx)}


def run(m: nn.Module, *args) -> torch.Tensor:
    with torch.no_grad():
        return m(*args)


# ------------------------------------------------------------------------------- 1. keyword arguments

class KwFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(input=self.conv(x), start_dim=1))


class KwEverywhere(nn.Module):
    """The tensor passed by keyword to conv, pooling, pad, norms, softmax, reductions, matmul and linear."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.bn_w = nn.Parameter(torch.rand(8) + 0.5)  # no bias: a zeroed channel stays zero
        self.w2 = nn.Parameter(torch.randn(6, 8) * 0.3)
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        y = F.relu(input=F.conv2d(input=x, weight=self.w1, bias=self.b1, padding=1))
        y = F.pad(input=y, pad=(1, 1, 1, 1))
        y = F.batch_norm(input=y, running_mean=None, running_var=None, weight=self.bn_w, training=True)
        y = F.adaptive_avg_pool2d(input=y, output_size=2)                 # (B, 8, 2, 2)
        y = torch.flatten(input=y.transpose(1, 3), start_dim=0, end_dim=2)  # (B*4, 8)
        h = F.linear(input=y, weight=self.w2)                               # (B*4, 6)
        a = torch.matmul(input=h, other=h.t())
        s = torch.sum(input=F.softmax(input=a, dim=-1), dim=0)
        return self.proj(h) * s.mean()


def test_keyword_tensor_flatten_prunes_like_positional():
    m = KwFlatten().eval()
    removed = [1, 4, 6]
    small = fxprune.prune(m, {"conv.weight:0": removed}, X_IMG)
    assert small.conv.out_channels == 5 and small.fc.in_features == 5 * 36
    keep_fc = [c * 36 + k for c in range(8) if c not in removed for k in range(36)]
    ref = zeroed(m, out_rows("conv", removed))
    torch.testing.assert_close(run(small, X_IMG), run(ref, X_IMG), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.fc.weight, m.fc.weight[:, keep_fc])


def test_keyword_tensors_in_functional_ops():
    m = KwEverywhere().eval()
    graph = fxprune.analyze(m, X_IMG)
    g = graph.group_of("w1", 0)
    assert g.pinned is None and len(g.classes) == 8, g
    plan = fxprune.PrunePlan({"w1:0": [0, 5]})
    small = fxprune.prune(m, plan, X_IMG)
    assert tuple(small.w1.shape) == (6, 3, 3, 3) and tuple(small.w2.shape) == (6, 6)
    # batch_norm with input statistics: a removed channel is zero everywhere, its own statistics only
    ref = zeroed(m, {"w1": (0, [0, 5]), "b1": (0, [0, 5])})
    torch.testing.assert_close(run(small, X_IMG), run(ref, X_IMG), atol=1e-4, rtol=1e-4)


def test_a_failing_rule_raises_internal_error_naming_the_node(monkeypatch):
    def boom(ctx, node):
        raise IndexError("tuple index out of range")

    monkeypatch.setitem(RULES, ("call_function", torch.flatten), Rule("flatten-broken", boom))
    with pytest.raises(InternalError, match="flatten-broken") as e:
        fxprune.analyze(KwFlatten(), X_IMG)
    assert "flatten" in str(e.value)


# --------------------------------------------------------------------------- 2. a size read as a value

class ScaledScores(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        return (q @ k.transpose(-2, -1) * q.size(-1) ** -0.5).softmax(-1)


class ShapeArithmetic(nn.Module):
    """``x.shape[1]`` as a number, next to a view that needs the pruned size."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        z = y.view(b, c, h * w).view(b, c, h, w)           # sizes of the pruned tensor
        return self.head(z) / c + y.numel() / (b * h * w)   # numbers of the original


def test_size_read_in_arithmetic_keeps_the_original_value():
    m = ScaledScores().eval()
    x = torch.randn(2, 5, 8)
    removed = [1, 2, 6]
    small = fxprune.prune(m, {"q.weight:0": removed}, x)
    assert small.q.out_features == small.k.out_features == 5
    ref = zeroed(m, {**out_rows("q", removed), **out_rows("k", removed)})
    torch.testing.assert_close(run(small, x), run(ref, x), atol=1e-5, rtol=1e-5)


def test_shape_unpacked_feeds_views_and_arithmetic():
    m = ShapeArithmetic().eval()
    small = fxprune.prune(m, {"conv.weight:0": [0, 3, 7]}, X_IMG)
    assert small.conv.out_channels == 5
    torch.testing.assert_close(run(small, X_IMG), run(zeroed(m, out_rows("conv", [0, 3, 7])), X_IMG),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ 3. bare squeeze

class BareSqueeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).squeeze())


@pytest.mark.parametrize("batch", [1, 2])
def test_bare_squeeze_keeps_a_pruned_dim_of_size_one(batch):
    m = BareSqueeze().eval()
    x = X_IMG[:batch]
    removed = list(range(7))                                # one channel left
    small = fxprune.prune(m, {"conv.weight:0": removed}, x)
    assert small.conv.out_channels == 1 and small.fc.in_features == 1
    out, ref = run(small, x), run(zeroed(m, out_rows("conv", removed)), x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- 4. self.training

class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, self.training))


class NotTraining(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):  # dropout only in eval mode: an odd model, but the flag must follow the mode
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, not self.training))


def _is_random(m: nn.Module, x: torch.Tensor) -> bool:
    torch.manual_seed(0)
    a = run(m, x)
    torch.manual_seed(1)
    return not torch.equal(a, run(m, x))


@pytest.mark.parametrize("traced_in", ["train", "eval"])
def test_dropout_follows_the_mode_of_the_pruned_model(traced_in):
    m = FunctionalDropout()
    getattr(m, traced_in)()
    x = torch.randn(4, 8)
    removed = [0, 3, 9, 12]
    small = fxprune.prune(m, {"fc1.weight:0": removed}, x)
    assert small.fc1.out_features == 12
    small.eval()
    m.eval()
    assert not _is_random(small, x)
    torch.testing.assert_close(run(small, x), run(zeroed(m, out_rows("fc1", removed)), x), atol=1e-5, rtol=1e-5)
    small.train()
    assert _is_random(small, x)
    torch.jit.script(small)  # the mode read stays scriptable


def test_negated_training_flag():
    m = NotTraining().train()
    x = torch.randn(4, 8)
    small = fxprune.prune(m, {"fc1.weight:0": [2, 5]}, x)
    small.train()
    assert not _is_random(small, x)
    torch.testing.assert_close(run(small, x), run(zeroed(m.train(), out_rows("fc1", [2, 5])), x),
                               atol=1e-5, rtol=1e-5)
    small.eval()
    assert _is_random(small, x)


class BranchOnTraining(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.fc(x)
        if self.training:
            y = y * 2
        return y


def test_forward_branching_on_training_is_reported_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fxprune.trace(BranchOnTraining().eval(), torch.randn(2, 8))
    msgs = [str(w.message) for w in caught if "train and eval mode" in str(w.message)]
    assert len(msgs) == 1 and "follow eval mode" in msgs[0], msgs


# --------------------------------------------------------------------------- 5. sums over channels

class ChannelEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return F.relu(self.conv(x)).pow(2).sum(1)


class ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return torch.cat([y.mean(dim=1, keepdim=True), y.sum(1, keepdim=True)], 1)


def test_sum_over_channels_prunes_exactly():
    m = ChannelEnergy().eval()
    g = fxprune.analyze(m, X_IMG).group_of("conv.weight", 0)
    assert g.pinned is None and len(g.classes) == 8
    removed = [0, 2, 5]
    small = fxprune.prune(m, {"conv.weight:0": removed}, X_IMG)
    assert small.conv.out_channels == 5
    torch.testing.assert_close(run(small, X_IMG), run(zeroed(m, out_rows("conv", removed)), X_IMG),
                               atol=1e-5, rtol=1e-5)


def test_mean_over_channels_is_the_mean_of_the_kept_ones():
    m = ChannelMean().eval()
    removed = [1, 6]
    keep = [c for c in range(8) if c not in removed]
    plan = fxprune.PrunePlan({"conv.weight:0": removed})
    small = fxprune.prune(m, plan, X_IMG)
    y = run(lambda x: F.relu(m.conv(x)), X_IMG)[:, keep]
    expected = torch.cat([y.mean(1, keepdim=True), y.sum(1, keepdim=True)], 1)
    torch.testing.assert_close(run(small, X_IMG), expected, atol=1e-5, rtol=1e-5)
    report = fxprune.verify(m, small, plan, X_IMG)
    assert any("mean" in why for why in report.recomputed.values()), report.recomputed


# ----------------------------------------------------------- 6. Pruner never empties a value dim

class SplitGate(nn.Module):
    def __init__(self, lowest: Sequence[int]):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 4)
        with torch.no_grad():  # the lowest-ranked rows are exactly one split part
            self.fc.weight.mul_(10)
            self.fc.bias.mul_(10)
            self.fc.weight[list(lowest)] *= 0.01
            self.fc.bias[list(lowest)] *= 0.01

    def forward(self, x):
        a, b = self.fc(x).split([2, 6], dim=-1)
        return self.out(torch.cat([torch.sigmoid(a), b], dim=-1))


class ChunkGate(SplitGate):
    def __init__(self, lowest: Sequence[int]):
        super().__init__(lowest)
        self.out = nn.Linear(4, 4)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)
        return self.out(a * torch.sigmoid(b))


@pytest.mark.parametrize("cls,lowest,parts", [(SplitGate, [0, 1], (2, 6)), (ChunkGate, [0, 1, 2, 3], (4, 4))])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_pruner_keeps_every_part_of_a_split(cls, lowest, parts, global_pruning):
    m = cls(lowest).eval()
    x = torch.randn(3, 8)
    pruner = fxprune.Pruner(m, x, pruning_ratio=0.5, global_pruning=global_pruning)
    small = pruner.step()
    removed = pruner.plan["fc.weight:0"]
    first = [i for i in removed if i < parts[0]]
    assert first and len(first) < parts[0] and len(removed) - len(first) < parts[1], removed
    assert small.get_submodule("fc").out_features == 8 - len(removed)
    # by hand: the gate over the kept features of each part (sigmoid(0) != 0, so no zeroing oracle here)
    h = run(m.fc, x)
    keep = [i for i in range(8) if i not in removed]
    ka, kb = [i for i in keep if i < parts[0]], [i for i in keep if i >= parts[0]]
    if cls is SplitGate:
        feats, cols = torch.cat([torch.sigmoid(h[:, ka]), h[:, kb]], -1), ka + kb
    else:
        assert [i + 4 for i in ka] == kb        # a chunk-0 feature gates with its chunk-1 partner
        feats, cols = h[:, ka] * torch.sigmoid(h[:, kb]), ka
    expected = F.linear(feats, m.out.weight[:, cols], m.out.bias)
    torch.testing.assert_close(run(small, x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(fxprune.prune(m, pruner.plan, x), x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------- 7. iterative plans always replay

class FirstLowest:
    """An importance that ranks class 0 lowest in every step: each step's plan reads like the last."""

    def __call__(self, group, model):
        return torch.arange(len(group.all_classes), dtype=torch.float64)


class ConstTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)
        self.offset = torch.linspace(0, 1, 3)  # a plain tensor attribute: a graph constant

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.offset


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.head = nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.gn(self.conv(x)))


def _replays(m: nn.Module, pruner, small, x) -> None:
    replay = fxprune.prune(m, pruner.plan, x)
    assert replay.state_dict().keys() == small.state_dict().keys()
    for k, v in small.state_dict().items():
        assert torch.equal(replay.state_dict()[k], v), k
    fxprune.verify(m, small, pruner.plan, x)


def test_steps_with_identical_plans_are_all_applied():
    m = ConstTensor().eval()
    x = torch.randn(2, 8)
    pruner = fxprune.Pruner(m, x, importance=FirstLowest(), pruning_ratio=0.375, iterative_steps=3)
    plans = []
    for _ in range(3):
        small = pruner.step()
        plans.append(small.meta["fxprune"]["applied"][-1])
    assert plans[0] == plans[1] == plans[2]                    # the same JSON each step
    assert pruner.plan["fc1.weight:0"] == [0, 1, 2]            # and each was applied
    assert small.fc1.out_features == 5
    assert not any(k.startswith("_tensor_constant") for k in pruner.plan), pruner.plan
    _replays(m, pruner, small, x)


def test_group_norm_left_with_one_group_keeps_whole_groups():
    m = GroupNormNet().eval()
    x = torch.randn(2, 3, 4, 4)
    pruner = fxprune.Pruner(m, x, importance=FirstLowest(), pruning_ratio=0.75, iterative_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            small = pruner.step()
    assert (small.gn.num_groups, small.gn.num_channels) == (1, 4)
    assert pruner.plan["gn.weight:0"] == [0, 1, 2, 3]
    nothing = [str(w.message) for w in caught if "removes nothing" in str(w.message)]
    assert len(nothing) == 2 and all("conv.weight:0" in s for s in nothing), nothing
    _replays(m, pruner, small, x)


class DepthwiseMultiplier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.dw = nn.Conv2d(3, 6, 3, padding=1, groups=3)   # input i feeds outputs 2i, 2i+1
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.dw(torch.relu(self.conv(x))))


def test_depthwise_conv_left_with_one_group_keeps_its_blocks():
    m = DepthwiseMultiplier().eval()
    x = torch.randn(2, 3, 6, 6)
    pruner = fxprune.Pruner(m, x, importance=FirstLowest(), pruning_ratio=0.8, iterative_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            small = pruner.step()
    assert (small.dw.groups, small.dw.in_channels, small.dw.out_channels) == (1, 1, 2)
    assert pruner.plan["dw.weight:0"] == [0, 1, 2, 3]       # whole blocks only, as in the original
    _replays(m, pruner, small, x)


# ---------------------------------------------------------------- warnings: once, readable

class Fft(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv1d(3, 8, 1), nn.Conv1d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.fft.fft(self.conv(x)).real + self.conv(x))


def test_op_without_rule_is_named_once_per_model_readably():
    m = Fft().eval()
    x = torch.randn(2, 3, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = fxprune.analyze(m, x)
        plan = fxprune.plan_by_ratio(graph, 0.5)
        small = fxprune.prune(m, plan, x)
        fxprune.verify(m, small, plan, x)
        fxprune.Pruner(m, x, pruning_ratio=0.5, iterative_steps=2).step()
    msgs = [str(w.message) for w in caught if "no rule" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "torch._C._fft.fft_fft" in msgs[0] and "pybind11" not in msgs[0], msgs[0]
