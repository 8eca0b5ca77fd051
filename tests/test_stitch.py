"""Stitched parts (fxprune/frontend/stitch.py): a model that neither tracer takes is traced in parts, and a
tensor the Python between two parts only hands on couples their channels instead of pinning both ends.

Oracles do not come from the analysis: the original model run with the removed channels zeroed by a forward
hook, and widths written by hand. Each model here fails ``symbolic_trace`` and ``torch.export`` (a branch on
a tensor's value), so ``analyze`` falls back to the parts frontend.
"""
from __future__ import annotations

import warnings

import pytest

import torch
import torch.nn.functional as F
from torch import nn

import fxprune


def _is_parts(graph) -> bool:
    """The one graph class every frontend returns, here captured in parts."""
    return type(graph) is fxprune.ChannelGraph and graph.frontend == "parts" and len(graph.parts) > 0


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _zeroed(model, x, where: dict[nn.Module, list[int]]):
    """``model(x)`` with channels ``where[m]`` of module ``m``'s output zeroed (the expectation)."""
    hooks = [m.register_forward_hook(lambda _, __, o, idx=idx: o.index_fill(1, torch.tensor(idx), 0))
             for m, idx in where.items()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


class Block(nn.Module):
    def __init__(self, cin: int, c: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, cout, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class Handoff(nn.Module):
    """``a``'s output reaches ``b`` through a dict and a shape read only; the branch is on the input."""

    def __init__(self, glue=None):
        super().__init__()
        self.a = Block(3, 8, 6)
        self.b = Block(6, 12, 5)
        self.glue = glue
        self.gain = 1.0

    def forward(self, x):
        feats = {"f": self.a(x)}
        if x.sum() > -1e9:  # data-dependent: no tracer takes the whole forward
            n, c, h, w = feats["f"].shape
            f = feats["f"] if self.glue is None else self.glue(feats["f"])
            return (self.b(f) * self.gain).reshape(n, -1, h * w)
        return x


def test_handed_on_tensor_is_stitched_and_pruned_across_the_boundary():
    torch.manual_seed(0)
    model, x = Handoff().eval(), torch.randn(2, 3, 6, 6)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    assert _is_parts(graph) and graph.stitched == 1
    g = graph.group_of("a.conv2.weight", 0)
    assert g.pinned is None and ("b.conv1.weight", 1) in g.members
    plan = {"a.conv2.weight:0": [0, 4]}
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    assert (small.a.conv2.out_channels, small.b.conv1.in_channels) == (4, 4)
    assert type(small.a) is Block  # no graph constant changed: edited in place, the user's class
    torch.testing.assert_close(small(x), _zeroed(model, x, {model.a.conv2: [0, 4]}), rtol=1e-5, atol=1e-6)
    assert _quiet(lambda: fxprune.verify(model, small, plan, x)).max_abs_diff < 1e-5


def test_tensor_read_by_value_between_parts_stays_pinned():
    model, x = Handoff(glue=lambda t: t + 0).eval(), torch.randn(2, 3, 6, 6)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    assert graph.stitched == 0
    assert graph.group_of("a.conv2.weight", 0).pinned
    assert graph.group_of("b.conv1.weight", 1).pinned


class Sliced(nn.Module):
    """``self.features[:5](x)`` runs a Sequential the model does not hold: its layers are called one by one."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                                      nn.ReLU(), nn.Conv2d(16, 4, 1))

    def forward(self, x):
        y = self.features[:5](x)
        y = y if y.sum() > 0 else -y
        return self.features[5](y)


def test_sequential_sliced_in_forward_prunes_inside_the_slice():
    torch.manual_seed(0)
    model, x = Sliced().eval(), torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-1, 1)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    assert graph.group_of("features.0.weight", 0).pinned is None  # conv -> bn -> relu -> conv, stitched
    # the root's branch on y.sum() is recorded below Python (autograd frontend): features.3 is free too
    assert graph.recorded == [""] and graph.group_of("features.3.weight", 0).pinned is None
    plan = {"features.0.weight:0": [1, 2, 7]}
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    f = small.features
    assert (f[0].out_channels, f[1].num_features, f[3].in_channels) == (5, 5, 5)
    assert all(type(a) is type(b) for a, b in zip(f, model.features))  # lone layers keep their classes
    assert f[1].running_mean.shape == (5,)
    torch.testing.assert_close(small(x), _zeroed(model, x, {model.features[1]: [1, 2, 7]}), rtol=1e-5, atol=1e-5)


class KwBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, c, 1)

    def forward(self, x, **kwargs):
        return x + self.conv2(F.relu(self.conv1(x))) * kwargs["scale"]


class Looped(nn.Module):
    """A ModuleList looped over (never called itself), blocks taking ``**kwargs``, a value branch between."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.blocks = nn.ModuleList(KwBlock(8) for _ in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x, scale=0.5)
            if x.amax() > 1e6:
                x = x.clamp(max=1e6)
        return self.head(x.mean((2, 3)))


def test_modulelist_of_kwargs_blocks_with_value_branches():
    torch.manual_seed(0)
    model, x = Looped().eval(), torch.randn(2, 3, 8, 8)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    assert [p.path for p in graph.parts if isinstance(p.module, KwBlock)] == ["blocks.0", "blocks.1", "blocks.2"]
    for i in range(3):
        assert graph.group_of(f"blocks.{i}.conv1.weight", 0).pinned is None
    assert graph.group_of("stem.weight", 0).pinned  # x.amax() reads the residual stream between blocks
    plan = {"blocks.0.conv1.weight:0": [0, 3], "blocks.2.conv1.weight:0": list(range(8))}
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    assert [b.conv1.out_channels for b in small.blocks] == [14, 16, 8]
    expected = _zeroed(model, x, {model.blocks[0].conv1: [0, 3], model.blocks[2].conv1: list(range(8))})
    torch.testing.assert_close(small(x), expected, rtol=1e-5, atol=1e-5)


class Levels(nn.Module):
    """A head shared by two feature levels of different sizes: called twice, stitched at both calls."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, stride=2, padding=1)])
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x):
        feats = [c(x) for c in self.convs]
        if x.mean() > -1e9:
            outs = [self.head(f) for f in feats]
            return torch.cat([o.flatten(1) for o in outs], 1)
        return x


def test_shared_head_couples_every_level():
    torch.manual_seed(0)
    model, x = Levels().eval(), torch.randn(1, 3, 8, 8)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    g = graph.group_of("convs.0.weight", 0)
    assert g.pinned is None
    assert {("convs.1.weight", 0), ("head.0.weight", 1)} <= set(g.members)
    assert graph.group_of("head.0.weight", 0).pinned is None  # inside the head
    plan = {"convs.0.weight:0": [2, 5]}
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    assert [c.out_channels for c in small.convs] == [6, 6] and small.head[0].in_channels == 6
    expected = _zeroed(model, x, {model.convs[0]: [2, 5], model.convs[1]: [2, 5]})
    torch.testing.assert_close(small(x), expected, rtol=1e-5, atol=1e-6)
    assert _quiet(lambda: fxprune.verify(model, small, plan, x)).max_abs_diff < 1e-5


class Detect(nn.Module):
    """A detector-like tail: keeps the positive scores (an output shape that follows the values)."""

    def __init__(self):
        super().__init__()
        self.body = Block(3, 8, 4)

    def forward(self, x):
        scores = self.body(x).flatten(1)
        return [s[s > 0] for s in scores]  # iterating a tensor: symbolic_trace fails too


def test_value_dependent_shapes_skip_torch_export(monkeypatch):
    """``torch.export`` fails on such a forward only after tracing all of it: auto goes to parts directly."""
    calls = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, x = Detect().eval(), torch.randn(1, 3, 6, 6)
    graph = _quiet(lambda: fxprune.analyze(model, x))
    assert graph.frontend == "parts" and calls == []
    assert graph.group_of("body.conv1.weight", 0).pinned is None
    with pytest.raises(fxprune.TraceError, match="indexing by a boolean mask"):
        fxprune.trace(model, x)
    # asked for by name, export is still tried (and fails on its own terms)
    with pytest.raises(fxprune.TraceError, match="depends on tensor values"):
        fxprune.trace(model, x, frontend="export")
    assert calls == [1]


def test_verify_names_the_part_that_differs_across_stitched_interfaces():
    """Masked outputs of stitched parts are compared on the channels their pruned copies keep."""
    torch.manual_seed(0)
    model, x = Handoff().eval(), torch.randn(2, 3, 6, 6)
    plan = {"a.conv2.weight:0": [0, 4], "b.conv1.weight:0": [1]}
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    with torch.no_grad():
        small.b.conv2.bias.add_(1.0)  # a wrong pruned part
    with pytest.raises(fxprune.VerificationError, match="First differing pruned submodule: b ") as info:
        _quiet(lambda: fxprune.verify(model, small, plan, x))
    assert info.value.parts_max_abs_diff is None
    # the Python around the parts differs, every part agrees (a's stitched output on its kept channels)
    small = _quiet(lambda: fxprune.prune(model, plan, x))
    small.gain = 1.5
    with pytest.raises(fxprune.VerificationError, match="Every pruned submodule's output matches") as info:
        _quiet(lambda: fxprune.verify(model, small, plan, x))
    assert info.value.parts_max_abs_diff < 1e-5
