"""The stages as PassBase passes, composed with another FX pass in a PassManager."""
import copy

import pytest
import torch
import torchvision
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.passes.infra.pass_manager import PassManager

import fxprune
from fxprune.passes import ApplyPass, prune_passes


def _fuse_pass(gm):
    return PassResult(fuse(gm), True)


def test_prune_then_conv_bn_fusion_verifies():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    plan = fxprune.plan_by_ratio(fxprune.analyze(model, x), 0.5)
    pm = PassManager(passes=prune_passes(plan, (x,)) + [_fuse_pass])
    out = pm(torch.fx.symbolic_trace(model)).graph_module
    # Fusion removed every BatchNorm; widths are the pruned ones.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in out.modules())
    assert out.get_submodule("layer1.0.conv1").out_channels == 32
    fxprune.verify(model, out, plan, x, atol=1e-4, rtol=1e-4)


def test_pass_pipeline_matches_prune():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 64, 64)
    plan = fxprune.plan_by_ratio(fxprune.analyze(model, x), 0.3)
    via_passes = PassManager(passes=prune_passes(plan, (x,)))(torch.fx.symbolic_trace(model)).graph_module
    direct = fxprune.prune(model, plan, x)
    sd1, sd2 = via_passes.state_dict(), direct.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_same_plan_twice_does_not_prune_twice():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    plan = fxprune.PrunePlan({"0.weight:0": [1, 2]})
    passes = prune_passes(plan, (x,))
    once = PassManager(passes=passes)(torch.fx.symbolic_trace(model)).graph_module
    before = copy.deepcopy(once.state_dict())
    res = ApplyPass(plan)(once)
    assert res.modified is False
    assert res.graph_module.get_submodule("0").out_channels == 6
    assert all(torch.equal(before[k], v) for k, v in res.graph_module.state_dict().items())
    # fxprune.prune on its own output with the same plan also leaves it alone
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = fxprune.prune(once, plan, x)
    assert again.get_submodule("0").out_channels == 6
    assert any("already applied" in str(m.message) for m in w)


def test_one_record_holds_the_plan_in_original_coordinates():
    """Pruned twice, the record's plan is the total in the original's coordinates: replayed on the original
    in one go it gives the same tensors; pass state never leaks into the pruned copy."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    first = fxprune.plan_by_ratio(fxprune.analyze(model, x), 0.25)
    small = fxprune.prune(model, first, x)
    second = fxprune.plan_by_ratio(fxprune.analyze(small, x), 0.25)
    smaller = fxprune.prune(small, second, x)
    rec = smaller.meta["fxprune"]
    assert type(rec).__name__ == "GraphRecord" and rec.frontend == "fx" and len(rec.applied) == 2
    assert rec.graph is None and rec.lowered is None
    once = fxprune.prune(model, rec.plan, x)
    sd1, sd2 = once.state_dict(), smaller.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert sum(len(v) for v in rec.plan.values()) > sum(len(v) for v in small.meta["fxprune"].plan.values())


def test_pruned_graph_with_parameters_read_by_get_attr_analyses_again():
    """A parameter read by ``get_attr`` (a functional conv, as timm's patch embedding traces) carries its
    pruned shape in ``meta["val"]``: pruning the pruned graph again works and matches the composed plan."""
    class FnConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = torch.nn.Parameter(torch.randn(8, 3, 2, 2)), torch.nn.Parameter(torch.randn(8))
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x):
            y = torch.nn.functional.conv2d(x, self.w, self.b, 2)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    m, x = FnConv().eval(), torch.randn(1, 3, 8, 8)
    small = fxprune.prune(m, {"w:0": [1, 2]}, x)
    w_nodes = [n for n in small.graph.nodes if n.op == "get_attr" and n.target == "w"]
    assert [n.meta["val"].shape[0] for n in w_nodes] == [6]
    smaller = fxprune.prune(small, {"w:0": [0]}, x)  # original channel 0
    plan = smaller.meta["fxprune"].plan
    assert plan["w:0"] == [0, 1, 2]
    fxprune.verify(m, smaller, plan, x)


def _small_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1)).eval()


def test_apply_mutates_the_graph_module_it_is_given_and_reports_honestly():
    """ApplyPass prunes the GraphModule in place (the traced model keeps its tensors); the same pass again
    reports no change and changes nothing; VerifyPass checks it against the masked original."""
    from fxprune.passes import VerifyPass

    torch.manual_seed(0)
    model, x = _small_net(), torch.randn(2, 3, 8, 8)
    gm = torch.fx.symbolic_trace(model)
    plan = fxprune.PrunePlan({"0.weight:0": [1, 6]})
    passes = prune_passes(plan, x, verify=True)
    res = PassManager(passes=passes)(gm)
    assert res.graph_module is gm and res.modified is True
    assert gm.get_submodule("0").out_channels == 6 and gm.get_submodule("1").num_features == 6
    assert model[0].out_channels == 8 and model[0].weight.shape[0] == 8  # the traced model is untouched
    keep = [i for i in range(8) if i not in (1, 6)]
    assert torch.equal(gm.get_parameter("0.weight"), model[0].weight[keep])
    report = next(p for p in passes if isinstance(p, VerifyPass)).report
    assert report is not None and report.max_abs_diff < 1e-4
    # independent oracle: the original with the two filters (and their BN outputs) zeroed
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked[0].weight[[1, 6]] = 0
        masked[0].bias[[1, 6]] = 0
        masked[1].bias[[1, 6]] = 0
        masked[1].running_mean[[1, 6]] = 0
        assert (masked(x) - model(x)).abs().max() > 1e-3
        assert torch.allclose(gm(x), masked(x), atol=1e-5)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    again = ApplyPass(plan)(gm)
    assert again.modified is False and again.graph_module is gm
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())
    assert gm.meta["fxprune"].applied == [plan.to_json()]


def test_prune_runs_the_passes_and_leaves_inputs_and_the_cached_analysis_alone():
    """prune() on a GraphModule returns a new one (the given one keeps its graph and tensors); two prunes
    after one analyze reuse that analysis (one trace) and leave its GraphModule as analysed."""
    import fxprune.passes.trace as trace_pass

    torch.manual_seed(0)
    model, x = _small_net(), torch.randn(1, 3, 8, 8)
    gm = torch.fx.symbolic_trace(model)
    code, shapes = gm.code, {k: tuple(v.shape) for k, v in gm.state_dict().items()}
    small = fxprune.prune(gm, {"0.weight:0": [0]}, x)
    assert small is not gm and small.get_submodule("0").out_channels == 7
    assert gm.code == code and {k: tuple(v.shape) for k, v in gm.state_dict().items()} == shapes
    assert gm.get_submodule("0").out_channels == 8

    calls = []
    real = trace_pass.trace

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    trace_pass.trace = counting
    try:
        graph = fxprune.analyze(model, x)
        analysed_code = graph.gm.code
        a = fxprune.prune(model, {"0.weight:0": [0, 1]}, x)
        b = fxprune.prune(model, {"0.weight:0": [2]}, x)
    finally:
        trace_pass.trace = real
    assert len(calls) == 1  # analyze traced; both prunes reused its analysis
    assert a.get_submodule("0").out_channels == 6 and b.get_submodule("0").out_channels == 7
    assert graph.gm.code == analysed_code and graph.gm.get_submodule("0").out_channels == 8
    assert fxprune.analyze(model, x) is graph
    fxprune.verify(model, b, {"0.weight:0": [2]}, x)


def test_prune_raises_the_typed_error_not_the_pass_managers():
    model, x = _small_net(), torch.randn(1, 3, 8, 8)
    with pytest.raises(fxprune.PlanError, match="out of range"):
        fxprune.prune(model, {"0.weight:0": [99]}, x)
    with pytest.raises(fxprune.PlanError, match="unknown key"):
        fxprune.prune(model, {"nope.weight:0": [0]}, x)
    # the stock PassManager wraps what a pass raises; PrunePassManager does not
    with pytest.raises(Exception) as info:
        PassManager(passes=prune_passes({"0.weight:0": [99]}, x))(torch.fx.symbolic_trace(model))
    assert not isinstance(info.value, fxprune.FxpruneError)
    assert isinstance(info.value.__cause__, fxprune.PlanError)


def test_one_trace_for_analyze_plan_prune_and_a_budget_step():
    """analyze, plan_by_ratio, prune, verify and a Pruner budget step on the same model and inputs share one
    analysis: the model is traced once."""
    import fxprune.passes.trace as trace_pass

    torch.manual_seed(0)
    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32)
    calls = []
    real = trace_pass.trace

    def counting(*a, **k):
        calls.append(type(a[0]).__name__)
        return real(*a, **k)

    trace_pass.trace = counting
    try:
        plan = fxprune.plan_by_ratio(fxprune.analyze(model, x), 0.5)
        small = fxprune.prune(model, plan, x)
        fxprune.verify(model, small, plan, x)
        stepped = fxprune.Pruner(model, x, target_macs=0.7).step()
    finally:
        trace_pass.trace = real
    assert calls == ["ResNet"], calls
    assert fxprune.count(stepped, x)[0] <= 0.7 * fxprune.count(model, x)[0]
