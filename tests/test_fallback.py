"""The partial-tracing fallback (fxprune/frontend/partial.py): models that ``symbolic_trace`` cannot trace
are analysed, pruned and verified through their traceable submodules.

Oracles that do not come from the analysis: widths written by hand, weights equal to ``index_select`` of
the original at the kept indices, and outputs equal to the original model run with the removed channels
zeroed by a forward hook.
"""
from __future__ import annotations

import copy
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_state_unchanged, check_export_routes, check_train_step, param_count, state_snapshot
from torch import nn

import fxprune
from fxprune.errors import FallbackWarning

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from zoo_checks import train_inputs  # the shared catalogue and its checks live in benchmarks/
from zoo_models import build, get_spec, specs


def _is_parts(graph) -> bool:
    """The one graph class every frontend returns, here captured in parts."""
    return type(graph) is fxprune.ChannelGraph and graph.frontend == "parts" and len(graph.parts) > 0


def _fallback_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, FallbackWarning)]


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------------------------------------- toy models

class Block(nn.Module):
    def __init__(self, cin: int, c: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, cout, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn(self.conv1(x))))


class Gated(nn.Module):
    """Data-dependent control flow around two traceable blocks."""

    def __init__(self):
        super().__init__()
        self.a = Block(3, 8, 6)
        self.b = Block(6, 12, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = self.b(x)
        else:
            x = self.b(-x)
        return self.head(x.mean((2, 3)))


def _gated():
    torch.manual_seed(0)
    m = Gated().eval()
    _randomize_bn(m)
    return m, torch.randn(2, 3, 8, 8)


def test_gated_analyze_warns_once_and_names_the_untraced_module():
    model, x = _gated()
    graph, ws = _fallback_warnings(lambda: fxprune.analyze(model, x))
    assert _is_parts(graph)
    assert len(ws) == 1, [str(w.message) for w in ws]
    msg = str(ws[0].message)
    assert "Gated" in msg and "control flow" in msg and "cannot be rewritten" in msg, msg
    assert ws[0].filename == __file__  # points at the user's call
    assert [p.path for p in graph.parts] == ["a", "b", "head"]  # a lone nn.Linear is a part too
    free = {g.key: g.size for g in graph.groups if not g.pinned}
    assert free == {"a.conv1.weight:0": 8, "b.conv1.weight:0": 12}
    # the boundaries of every traced submodule stay fixed
    for key in ("a.conv2.weight:0", "b.conv1.weight:1"):
        assert graph.group_of(*fxprune.plan.parse_key(key)).pinned, key
    # head's input is made by untraced code (x.mean), and a's output is read by it (x.sum() > 0): pinned
    assert graph.group_of("head.weight", 1).pinned.startswith("input of traced submodule head, made by the root "
                                                              "Gated's forward, which is not traced")
    assert graph.stitched == 0
    g = graph.group_of("a.bn.weight", 0)
    assert g.key == "a.conv1.weight:0"
    assert ("a.conv2.weight", 1) in g.members
    assert [(n, d) for n, d, _ in g.index_classes()][:3] == [("a.conv1.weight", 0), ("a.conv1.bias", 0),
                                                            ("a.bn.weight", 0)]


def test_gated_prune_widths_weights_and_outputs():
    model, x = _gated()
    snap = state_snapshot(model)
    plan = fxprune.PrunePlan({"a.conv1.weight:0": [1, 5], "b.conv1.weight:0": [0, 3, 4, 11]})
    small, ws = _fallback_warnings(lambda: fxprune.prune(model, plan, x))
    assert len(ws) == 1
    assert type(small) is Gated and small is not model  # the user's class, a copy
    assert not isinstance(small.a, torch.fx.GraphModule)  # no graph constants changed: edited in place
    assert (small.a.conv1.out_channels, small.a.bn.num_features, small.a.conv2.in_channels) == (6, 6, 6)
    assert (small.b.conv1.out_channels, small.b.conv2.in_channels, small.b.conv2.out_channels) == (8, 8, 6)
    keep_a = torch.tensor([0, 2, 3, 4, 6, 7])
    assert torch.equal(small.a.conv1.weight, model.a.conv1.weight.index_select(0, keep_a))
    assert torch.equal(small.a.bn.running_var, model.a.bn.running_var.index_select(0, keep_a))
    assert torch.equal(small.a.conv2.weight, model.a.conv2.weight.index_select(1, keep_a))
    assert_state_unchanged(model, snap)
    assert small._fxprune_expanded["a.conv1.weight:0"] == [1, 5]
    assert param_count(small) < param_count(model)

    # oracle: the original with the removed channels zeroed after each block's first conv
    def zero(idx):
        def hook(_, __, out):
            return out.index_fill(1, torch.tensor(idx), 0)
        return hook
    ref = copy.deepcopy(model)
    ref.a.bn.register_forward_hook(zero([1, 5]))
    ref.b.bn.register_forward_hook(zero([0, 3, 4, 11]))
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-3)  # the plan did change the function
    report = fxprune.verify(model, small, plan, x)
    assert report.max_abs_diff < 1e-5
    assert_state_unchanged(model, snap)


def test_gated_plan_by_ratio_and_errors():
    model, x = _gated()
    graph, _ = _fallback_warnings(lambda: fxprune.analyze(model, x))
    plan = fxprune.plan_by_ratio(graph, 0.5)
    assert {k: len(v) for k, v in plan.items()} == {"a.conv1.weight:0": 4, "b.conv1.weight:0": 6}
    small, _ = _fallback_warnings(lambda: fxprune.prune(model, plan, x))
    assert (small.a.conv1.out_channels, small.b.conv1.out_channels) == (4, 6)
    fxprune.verify(model, small, plan, x)
    with pytest.raises(fxprune.PlanError, match="pinned"):
        graph.expand({"a.conv2.weight:0": [0]})  # the output of a traced part: a fixed boundary
    with pytest.raises(fxprune.PlanError, match="did you mean"):
        graph.expand({"a.conv9.weight:0": [0]})


def test_strict_and_untraceable_leaf():
    class Leafy(nn.Module):
        """A module with its own parameter and control flow: its parameter cannot be pruned."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(6, 1, 1))
            self.a = Block(3, 8, 6)

        def forward(self, x):
            x = self.a(x)
            return x * self.scale if x.mean() > 0 else x / self.scale

    model = Leafy().eval()
    graph, ws = _fallback_warnings(lambda: fxprune.analyze(model, torch.randn(1, 3, 8, 8)))
    assert "Leafy" in str(ws[0].message)
    with pytest.raises(fxprune.PlanError, match="not in a traced submodule"):
        graph.expand({"scale:0": [0]})


# ---------------------------------------------------------------------------------------------- calling conventions

class Shuffle(nn.Module):
    """A traceable part whose Python code holds a channel constant (rewritten in its GraphModule),
    called with a keyword argument, a list of tensors and a default."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, feats, scale: float = 1.0, extra=None):
        x = self.conv(feats[0] + feats[1])
        n, _, h, w = x.shape
        x = x.reshape(n, 8, h * w).reshape(n, 8, h, w)  # literal 8: a graph constant
        y = self.out(x) * scale
        return {"y": y, "extra": extra}


class Caller(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.shuffle = Shuffle()
        self.tail = nn.Sequential(nn.Conv2d(4, 6, 1), nn.Conv2d(6, 2, 1))

    def forward(self, x):
        x = self.stem(x)
        feats = [x, x * 2] if x.sum() > -1e9 else [x, x]
        y = self.shuffle(feats, scale=0.5)["y"]
        # the parent reads a parameter of a traced submodule: it must stay as it is
        y = y + self.tail[0].weight.sum()
        return self.tail(y)


def test_graph_constants_replace_the_part_by_its_graphmodule(tmp_path):
    torch.manual_seed(0)
    model = Caller().eval()
    x = torch.randn(1, 3, 5, 5)
    graph, ws = _fallback_warnings(lambda: fxprune.analyze(model, x))
    assert len(ws) == 1 and [p.path for p in graph.parts] == ["stem", "shuffle", "tail"]
    assert graph.group_of("stem.weight", 0).pinned  # x.sum() and x * 2 read its values outside any part
    assert graph.group_of("shuffle.conv.weight", 0).pinned is None
    assert "used outside" in graph.group_of("tail.0.weight", 0).pinned  # the parent's own code reads it
    plan = fxprune.PrunePlan({"shuffle.conv.weight:0": [0, 6]})
    snap = state_snapshot(model)
    small, _ = _fallback_warnings(lambda: fxprune.prune(model, plan, x))
    assert_state_unchanged(model, snap)
    assert isinstance(small.shuffle, torch.fx.GraphModule)  # reshape(n, 8, ...) became reshape(n, 6, ...)
    assert (small.shuffle.conv.out_channels, small.shuffle.out.in_channels) == (6, 6)
    assert set(small.state_dict()) == set(model.state_dict())
    out = small.shuffle([torch.randn(1, 4, 3, 3)] * 2)  # the original signature, defaults included
    assert out["y"].shape == (1, 4, 3, 3) and out["extra"] is None
    report = fxprune.verify(model, small, plan, x)
    assert report.max_abs_diff < 1e-5
    # the pruned model pickles and deep-copies with its GraphModule part
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
        torch.testing.assert_close(copy.deepcopy(small)(x), small(x))


def test_inplace_edits_the_users_model():
    model, x = _gated()
    plan = fxprune.PrunePlan({"a.conv1.weight:0": [2]})
    copy_small, _ = _fallback_warnings(lambda: fxprune.prune(model, plan, x))
    out, _ = _fallback_warnings(lambda: fxprune.prune(model, plan, x, inplace=True))
    assert out is model and model.a.conv1.out_channels == 7
    with torch.no_grad():
        torch.testing.assert_close(model(x), copy_small(x))


def test_module_called_with_varying_constants_is_not_traced():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = Block(3, 8, 3)

        def forward(self, x):
            y = self.blk(x)
            return y if y.sum() > 0 else -y

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = Twice()
            self.scale = Scale()

        def forward(self, x):
            x = self.scale(self.t(x), 1.0)
            return self.scale(x, 2.0)

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 1, 1))

        def forward(self, x, s):
            return x * self.w * s

    graph, ws = _fallback_warnings(lambda: fxprune.analyze(Outer().eval(), torch.randn(1, 3, 4, 4)))
    assert [p.path for p in graph.parts] == ["t.blk"]
    assert "scale (it is called with differently structured arguments or other constants)" in str(ws[0].message)


# ---------------------------------------------------------------------------------------------- torchvision

def _check_model(model, inputs, min_ratio=0.2):
    n0 = param_count(model)
    snap = state_snapshot(model)
    graph, ws = _fallback_warnings(lambda: fxprune.analyze(model, inputs))
    assert _is_parts(graph) and len(ws) == 1
    plan = fxprune.plan_by_ratio(graph, 0.5)
    assert len(plan)
    small, _ = _fallback_warnings(lambda: fxprune.prune(model, plan, inputs))
    assert_state_unchanged(model, snap)
    n1 = param_count(small)
    assert n1 < (1 - min_ratio) * n0, (n0, n1)
    try:
        report = fxprune.verify(model, small, plan, inputs)
    except fxprune.VerificationError as e:
        # A detector's boxes after top-k/NMS flip on near-tied scores under float noise; then every pruned
        # part (backbone, FPN, heads: the whole network before post-processing) must still agree.
        if e.parts_max_abs_diff is None or not type(model).__module__.startswith("torchvision.models.detection"):
            raise
        report = fxprune.VerifyReport(e.parts_max_abs_diff, [e.parts_max_abs_diff], {})
    _assert_interfaces_kept(graph, model, small, inputs)
    return graph, small, report


def _interface_shapes(model, paths, inputs):
    """Shapes of every tensor going into and out of the first call of each module in ``paths``."""
    seen, hooks = {}, []
    for path in paths:
        def hook(_, args, kwargs, out, path=path):
            if path not in seen:
                leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
                seen[path] = [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]
        hooks.append(model.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _assert_interfaces_kept(graph, model, small, inputs):
    """The untraced code around each traced part sees tensors of the original shapes, except where it only
    hands a tensor from one part to the next (stitched interfaces)."""
    paths = [p.path for p in graph.parts if p.path not in graph.stitched_paths]
    before, after = _interface_shapes(model, paths, inputs), _interface_shapes(small, paths, inputs)
    assert before.keys() == after.keys()
    for path in paths:
        a, b = before[path], after[path]
        if path.startswith("roi_heads"):  # the number of boxes depends on the (pruned) model's scores
            a, b = [s[1:] for s in a], [s[1:] for s in b]
        assert a == b, path


def _detection_outputs_nonempty(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    assert isinstance(out, list) and len(out[0]["boxes"]) > 0  # verify compares real detections
    return out


def test_fasterrcnn_mobilenet_v3(tmp_path):
    """The catalogue's smallest detector end to end: prune, verify, train with targets, TorchScript and ONNX
    (torchvision's detectors script but do not trace, and export with the TorchScript-based exporter)."""
    spec = get_spec("fasterrcnn_mobilenet_v3_large_320_fpn")
    model, inputs = build(spec)
    ref = _detection_outputs_nonempty(model, inputs)
    graph, small, report = _check_model(model, inputs)
    assert {"backbone", "rpn.head", "roi_heads.box_head"} <= {p.path for p in graph.parts}
    assert report.max_abs_diff < 1e-3
    with torch.no_grad():
        out = small(*inputs)
    assert [sorted(o) for o in out] == [sorted(o) for o in ref]
    assert len(out[0]["boxes"]) > 0 and out[0]["boxes"].shape[1:] == ref[0]["boxes"].shape[1:]
    assert len(report.output_diffs) == 3  # boxes, scores, labels compared
    check_train_step(small, train_inputs(spec, inputs))
    assert check_export_routes(model, small, inputs, tmp_path, "jit") == "script"
    assert check_export_routes(model, small, inputs, tmp_path, "onnx") == "torchscript"


@pytest.mark.zoo
@pytest.mark.parametrize("name", [s.name for s in specs("detection") + specs("flow")])
def test_untraceable_zoo(name):
    """Every torchvision detector and RAFT (the catalogue's settings: 128x128, 3 classes, all boxes kept):
    pruned through the fallback, the user's model untouched, every traced part keeps its interface shapes,
    and the pruned model equals the masked original (tests/test_zoo.py adds train/TorchScript/ONNX)."""
    model, inputs = build(get_spec(name))
    if name.startswith("raft"):  # no symbolic_trace, but torch.export takes RAFT whole (no parts needed)
        snap = state_snapshot(model)
        graph = _fallback_warnings(lambda: fxprune.analyze(model, inputs))[0]
        assert graph.frontend == "export"
        plan = fxprune.plan_by_ratio(graph, 0.5)
        small = fxprune.prune(model, plan, inputs)
        assert_state_unchanged(model, snap)
        assert param_count(small) < 0.8 * param_count(model)
        assert fxprune.verify(model, small, plan, inputs).max_abs_diff < 1e-2
        return
    _, _, report = _check_model(model, inputs)
    assert report.max_abs_diff < 1e-3


def test_pruner_iterative_on_a_fallback_model():
    model, x = _gated()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        pruner = fxprune.Pruner(model, x, pruning_ratio=0.5, iterative_steps=2)
        for _ in range(2):
            small = pruner.step()  # the second step re-analyses the pruned copy (again through the fallback)
    assert type(small) is Gated
    assert (small.a.conv1.out_channels, small.b.conv1.out_channels) == (4, 6)
    assert fxprune.verify(model, small, pruner.plan, x).max_abs_diff < 1e-5


# ------------------------------------------------------------------------------ robustness (issue 14 item 8)

def _zero_out_channels(model: nn.Module, conv: str, removed) -> nn.Module:
    """A copy whose ``conv`` output channels ``removed`` are zero (weight rows and bias)."""
    ref = copy.deepcopy(model)
    c = ref.get_submodule(conv)
    with torch.no_grad():
        c.weight[list(removed)] = 0
        c.bias[list(removed)] = 0
    return ref


class HoldsScripted(nn.Module):
    """Holds a ``torch.jit.script`` submodule it never calls; the branch on values needs the fallback."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.spare = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 1)))

    def forward(self, x):
        y = self.body(x)
        return y if y.sum() > 0 else -y


class LoopBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class LoopOverBlocks(nn.Module):
    """A ModuleList is never called itself: its blocks are, one by one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.blocks = nn.ModuleList([LoopBlock(), LoopBlock()])

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return x if x.sum() > 0 else -x


class StarredSize(nn.Module):
    """Its only untraceable line for symbolic_trace is ``b, *_ = x.size()``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        b, *_ = x.size()
        y = self.conv2(F.relu(self.conv1(x)))
        return self.fc(y.mean((2, 3)).reshape(b, -1))


def test_unused_scripted_submodule_does_not_break_the_recording():
    m, x = HoldsScripted().eval(), torch.randn(2, 3, 8, 8)
    graph, _ = _fallback_warnings(lambda: fxprune.analyze(m, x))
    assert _is_parts(graph)
    assert graph.group_of("body.0.weight", 0).pinned is None
    small, _ = _fallback_warnings(lambda: fxprune.prune(m, {"body.0.weight:0": [1, 6]}, x))
    assert small.body[0].out_channels == 6 and small.body[2].in_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zero_out_channels(m, "body.0", [1, 6])(x), atol=1e-5, rtol=1e-5)


def test_blocks_of_a_module_list_called_in_a_loop_are_analysed():
    m, x = LoopOverBlocks().eval(), torch.randn(2, 3, 4, 4)
    graph, _ = _fallback_warnings(lambda: fxprune.analyze(m, x))
    assert _is_parts(graph)
    for i in range(2):
        assert graph.group_of(f"blocks.{i}.a.weight", 0).pinned is None
    small, _ = _fallback_warnings(lambda: fxprune.prune(m, {"blocks.1.a.weight:0": [0, 3, 15]}, x))
    assert small.blocks[1].a.out_channels == 13 and small.blocks[1].b.in_channels == 13
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zero_out_channels(m, "blocks.1.a", [0, 3, 15])(x),
                                   atol=1e-5, rtol=1e-5)


def test_starred_size_unpacking_keeps_the_children_prunable():
    m, x = StarredSize().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxprune.analyze(m, x)
        assert graph.group_of("conv1.weight", 0).pinned is None    # conv1 -> conv2 is not a pinned boundary
        small = fxprune.prune(m, {"conv1.weight:0": [2, 5]}, x)
    assert small.conv1.out_channels == 6 and small.conv2.in_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zero_out_channels(m, "conv1", [2, 5])(x), atol=1e-5, rtol=1e-5)
