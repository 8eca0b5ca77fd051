"""Every bad input gets a typed ``fxprune.FxpruneError`` whose message names what is wrong, and the user's
model is left exactly as it was (same tensors, same Parameter objects, same submodules)."""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_state_unchanged, state_snapshot
from torch import nn

import fxprune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class DataDependent(Net):
    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if x.sum() > 0:
            x = x * 2
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class WithFFT(Net):
    """torch.fft.fft mixes conv1's output channels (dim 1): no rule can say which channel goes where."""

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.fft.fft(x, dim=1).abs()
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


X = (torch.randn(1, 3, 8, 8),)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def _raises(exc_type, fn, *names, model=None):
    """Call fn, expect exc_type, check its message names every string in names, model unchanged."""
    snap = state_snapshot(model) if model is not None else None
    with pytest.raises(exc_type) as info:
        fn()
    assert isinstance(info.value, fxprune.FxpruneError)
    msg = str(info.value)
    for n in names:
        assert n in msg, f"{type(info.value).__name__} message does not name {n!r}: {msg}"
    if model is not None:
        assert_state_unchanged(model, snap)
    return info.value


# ---------------------------------------------------------------------------------------------- plans

def test_index_out_of_range(net):
    plan = fxprune.PrunePlan({"conv1.weight:0": [2, 8]})
    e = _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), "conv1.weight", model=net)
    assert "8" in str(e)


def test_index_out_of_range_on_second_key(net):
    plan = fxprune.PrunePlan({"conv1.weight:0": [0, 1], "conv2.weight:0": [99]})
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), "conv2.weight", model=net)


@pytest.mark.parametrize("idx", [[-1], [0, -3]])
def test_negative_indices(idx):
    _raises(fxprune.PlanError, lambda: fxprune.PrunePlan({"conv1.weight:0": idx}), "conv1.weight")


def test_duplicate_indices():
    _raises(fxprune.PlanError, lambda: fxprune.PrunePlan({"conv1.weight:0": [1, 2, 1]}), "conv1.weight")


@pytest.mark.parametrize("key", ["conv1.weight", "conv1.weight:x", ":0"])
def test_malformed_key(key):
    _raises(fxprune.PlanError, lambda: fxprune.PrunePlan({key: [0]}))


def test_non_int_indices():
    _raises(fxprune.PlanError, lambda: fxprune.PrunePlan({"conv1.weight:0": ["a"]}), "conv1.weight")


def test_plan_empties_group(net):
    plan = fxprune.PrunePlan({"conv1.weight:0": list(range(8))})
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), "conv1.weight", model=net)


def test_plan_empties_group_through_coupled_member(net):
    # bn1.weight:0 is in conv1's group; removing all its 8 channels empties the group
    plan = fxprune.PrunePlan({"conv1.weight:0": [0, 1, 2, 3], "bn1.weight:0": [4, 5, 6, 7]})
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), model=net)


@pytest.mark.parametrize("key,name", [("nope.weight:0", "nope.weight"), ("conv1.weight:7", "conv1.weight"),
                                      ("conv1.nope:0", "conv1.nope")])
def test_unknown_key(net, key, name):
    plan = fxprune.PrunePlan({key: [0]})
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), name, model=net)


@pytest.mark.parametrize("key,name", [("fc.weight:0", "fc.weight"), ("fc.bias:0", "fc.bias"),
                                      ("conv1.weight:1", "conv1.weight")])
def test_pinned_group(net, key, name):
    """The logits (fc out) and the model's input channels (conv1 in) are the interface: pinned."""
    graph = fxprune.analyze(net, X)
    p, d = key.rsplit(":", 1)
    assert graph.group_of(p, int(d)).pinned
    plan = fxprune.PrunePlan({key: [0]})
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X), name, model=net)


# ---------------------------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("fn", ["analyze", "prune"])
def test_wrong_input_shape(net, fn):
    bad = (torch.randn(1, 4, 8, 8),)                 # conv1 wants 3 channels
    call = {"analyze": lambda: fxprune.analyze(net, bad),
            "prune": lambda: fxprune.prune(net, fxprune.PrunePlan({"conv1.weight:0": [0]}), bad)}[fn]
    _raises(fxprune.ShapeInfoError, call, "conv1", model=net)


def test_wrong_input_rank(net):
    _raises(fxprune.ShapeInfoError, lambda: fxprune.analyze(net, (torch.randn(3, 8),)), "conv1", model=net)


@pytest.mark.parametrize("fn", ["trace", "analyze", "prune"])
def test_non_tensor_input(net, fn):
    bad = ("hello",)
    call = {"trace": lambda: fxprune.trace(net, bad),
            "analyze": lambda: fxprune.analyze(net, bad),
            "prune": lambda: fxprune.prune(net, fxprune.PrunePlan({"conv1.weight:0": [0]}), bad)}[fn]
    snap = state_snapshot(net)
    with pytest.raises(fxprune.FxpruneError) as info:
        call()
    e = info.value
    assert isinstance(e, (fxprune.ShapeInfoError, fxprune.TraceError)), type(e)
    msg = str(e)
    # names the offending input: its type (str) or the placeholder it was given to (x)
    assert "str" in msg or re.search(r"\bx\b", msg), msg
    assert_state_unchanged(net, snap)


def test_wrong_number_of_inputs(net):
    bad = (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    snap = state_snapshot(net)
    with pytest.raises(fxprune.FxpruneError) as info:
        fxprune.analyze(net, bad)
    assert isinstance(info.value, (fxprune.ShapeInfoError, fxprune.TraceError))
    assert_state_unchanged(net, snap)


# ---------------------------------------------------------------------------------------------- tracing

def test_untraceable_model():
    """trace() raises; analyze/prune fall back to the traceable submodules with one FallbackWarning, and
    a plan on a parameter outside them is a PlanError naming the untraced module."""
    from fxprune.errors import FallbackWarning

    model = DataDependent().eval()
    e = _raises(fxprune.TraceError, lambda: fxprune.trace(model, X), model=model)
    assert "DataDependent" in str(e) or "x.sum() > 0" in str(e), str(e)
    with pytest.warns(FallbackWarning, match="DataDependent") as rec:
        graph = fxprune.analyze(model, X)
    assert len([w for w in rec if issubclass(w.category, FallbackWarning)]) == 1
    # the root's forward (a branch on x.sum()) is recorded below Python: conv1 is prunable, the output is not
    assert graph.recorded == [""] and graph.group_of("conv1.weight", 0).pinned is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        _raises(fxprune.PlanError, lambda: fxprune.prune(model, fxprune.PrunePlan({"fc.weight:0": [0]}), X),
                "fc.weight", "model output", model=model)


class SplitOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return torch.split(self.conv(x), 4, 1)  # a tuple-valued node is the model output


def test_tuple_output_returned_whole_is_pinned():
    graph = fxprune.analyze(SplitOut(), X)
    assert graph.group_of("conv.weight", 0).pinned == "model output"


# ---------------------------------------------------------------------------------------------- unsupported ops

def test_unsupported_op_strict():
    torch.manual_seed(0)
    model = WithFFT().eval()
    e = _raises(fxprune.UnsupportedOpError, lambda: fxprune.analyze(model, X, strict=True), "fft", model=model)
    # the message points at the user's source line, not at torch internals
    assert "test_bad_input.py" in str(e), str(e)
    plan = fxprune.PrunePlan({"conv2.weight:0": [0]})
    _raises(fxprune.UnsupportedOpError, lambda: fxprune.prune(model, plan, X, strict=True), "fft", model=model)


def test_unsupported_op_lenient_pins_and_warns():
    torch.manual_seed(0)
    model = WithFFT().eval()
    snap = state_snapshot(model)
    with pytest.warns(Warning, match="fft"):
        graph = fxprune.analyze(model, X, strict=False)
    # conv1's output channels flow into fft: pinned; conv2's output channels do not: still prunable
    assert graph.group_of("conv1.weight", 0).pinned
    assert graph.group_of("conv2.weight", 0).pinned is None
    # pruning the pinned dim is a PlanError; pruning elsewhere works and verifies
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _raises(fxprune.PlanError,
                lambda: fxprune.prune(model, fxprune.PrunePlan({"conv1.weight:0": [0]}), X), "conv1.weight",
                model=model)
        plan = fxprune.PrunePlan({"conv2.weight:0": [0, 5]})
        small = fxprune.prune(model, plan, X)
        fxprune.verify(model, small, plan, X)
    assert small.state_dict()["conv2.weight"].shape[0] == 14
    assert small.state_dict()["conv1.weight"].shape[0] == 8
    assert_state_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------- inplace

BAD_PLANS = {
    "out_of_range": {"conv1.weight:0": [0, 1], "conv2.weight:0": [99]},
    "empties": {"conv2.weight:0": [0], "conv1.weight:0": list(range(8))},
    "unknown": {"conv1.weight:0": [0], "nope.weight:0": [0]},
    "pinned": {"conv1.weight:0": [0], "fc.weight:0": [1]},
}


@pytest.mark.parametrize("which", list(BAD_PLANS))
def test_inplace_failure_leaves_module_untouched(net, which):
    plan = fxprune.PrunePlan(BAD_PLANS[which])
    _raises(fxprune.PlanError, lambda: fxprune.prune(net, plan, X, inplace=True), model=net)
    # and the model still runs as before
    with torch.no_grad():
        assert net(*X).shape == (1, 10)


@pytest.mark.parametrize("which", list(BAD_PLANS))
def test_inplace_failure_leaves_graph_module_untouched(net, which):
    gm = fxprune.trace(net, X)
    code = gm.code
    with torch.no_grad():
        before = gm(*X)
    plan = fxprune.PrunePlan(BAD_PLANS[which])
    _raises(fxprune.PlanError, lambda: fxprune.prune(gm, plan, X, inplace=True), model=gm)
    assert gm.code == code
    with torch.no_grad():
        assert torch.equal(gm(*X), before)


def test_inplace_success_then_model_is_the_result(net):
    """Sanity for the failure tests above: inplace=True does work on a good plan."""
    reference = copy.deepcopy(net)
    gm = fxprune.trace(net, X)
    plan = fxprune.PrunePlan({"conv1.weight:0": [0, 3]})
    small = fxprune.prune(gm, plan, X, inplace=True)
    fxprune.verify(reference, small, plan, X)
    assert small.state_dict()["conv1.weight"].shape[0] == 6
