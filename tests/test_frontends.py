"""Frontends and targets: fx / export / parts, and the module target (the user's own class).

Oracles do not come from the analysis: the original model with the removed rows (and biases) of the
producing layer zeroed by hand, hand-written widths, and greedy generation of that zeroed original.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.errors import FallbackWarning
from helpers import assert_state_unchanged, state_snapshot, tiny_llama


class Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x, **kwargs):
        return x + self.down(torch.relu(self.up(x))) * kwargs.get("scale", 1.0)


class Stack(nn.Module):
    """A ModuleList of blocks, forward(**kwargs), a Python branch on a flag: symbolic_trace fails."""

    def __init__(self, d: int = 8, h: int = 16, n: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, h) for _ in range(n))
        self.head = nn.Linear(d, 4)

    def forward(self, x, **kwargs):
        for blk in self.blocks:
            x = blk(x, **kwargs)
        if kwargs.get("return_hidden", False):
            return x
        return self.head(x)


class Mlp(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class ValueGate(nn.Module):
    """Branches on a tensor value between blocks: neither tracer takes the whole model."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = Mlp(8, 16), Mlp(8, 16), nn.Linear(8, 2)

    def forward(self, x):
        x = self.a(x)
        if x.abs().mean() > 0:  # always true here, but only a real forward knows
            x = self.b(x)
        return self.head(x)


def _zero_rows(model: nn.Module, plan: dict) -> nn.Module:
    """The oracle: a copy of the original with the removed output rows (and biases) zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for key, idx in plan.items():
            name, dim = key.rsplit(":", 1)
            assert dim == "0"
            ref.get_parameter(name)[idx] = 0
            bias = name.rsplit(".", 1)[0] + ".bias"
            if bias in dict(ref.named_parameters()):
                ref.get_parameter(bias)[idx] = 0
    return ref


def test_fx_frontend_is_reported():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert fxprune.analyze(m, torch.randn(1, 4)).frontend == "fx"
    with pytest.raises(fxprune.TraceError, match="frontend"):
        fxprune.analyze(m, torch.randn(1, 4), frontend="jit")


def test_modulelist_kwargs_forward_is_exported_and_pruned_as_its_own_class():
    torch.manual_seed(0)
    model, x = Stack().eval(), torch.randn(2, 5, 8)
    inputs = fxprune.Inputs(x, scale=0.5)
    snap = state_snapshot(model)
    with pytest.raises(fxprune.TraceError):
        fxprune.trace(model, inputs, frontend="fx")
    graph = fxprune.analyze(model, inputs)
    assert graph.frontend == "export"
    free = {g.key: g.size for g in graph.groups if not g.pinned}
    # every block's hidden width is prunable (the residual stream is the model input: pinned)
    assert free == {f"blocks.{i}.up.weight:0": 16 for i in range(3)}
    plan = fxprune.PrunePlan({"blocks.0.up.weight:0": [0, 3, 7], "blocks.2.up.weight:0": list(range(0, 16, 2))})
    small = fxprune.prune(model, plan, inputs)
    assert type(small) is Stack and small is not model
    assert [b.up.out_features for b in small.blocks] == [13, 16, 8]
    assert [b.down.in_features for b in small.blocks] == [13, 16, 8]
    with torch.no_grad():
        want = _zero_rows(model, plan)(x, scale=0.5)
        got = small(x, scale=0.5)
        assert not torch.allclose(model(x, scale=0.5), got, atol=1e-4)  # something was removed
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert fxprune.verify(model, small, plan, inputs).max_abs_diff < 1e-5
    assert_state_unchanged(model, snap)


def test_export_graph_target_keeps_the_call_signature_and_output_structure():
    torch.manual_seed(0)
    model, x = Stack().eval(), torch.randn(2, 5, 8)
    inputs = fxprune.Inputs(x, scale=0.5)  # a float keyword: specialised into the graph
    plan = fxprune.PrunePlan({"blocks.1.up.weight:0": [1, 2]})
    gm = fxprune.prune(model, plan, inputs, output="graph")
    assert isinstance(gm, torch.fx.GraphModule)
    assert not any(n.op == "call_module" for n in gm.graph.nodes)  # the exporter's guard is gone
    with torch.no_grad():
        torch.testing.assert_close(gm(x), _zero_rows(model, plan)(x, scale=0.5), atol=1e-5, rtol=1e-5)
    assert fxprune.verify(model, gm, plan, inputs).max_abs_diff < 1e-5


def test_module_target_refuses_a_constant_it_cannot_carry():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.qkv(x).view(b, t, 2, 4)  # the head size 4 is written in forward
            return self.out(h.relu().reshape(b, t, 8))

    torch.manual_seed(0)
    model, x = Heads().eval(), torch.randn(1, 3, 8)
    graph = fxprune.analyze(model, x)
    plan = fxprune.PrunePlan({"qkv.weight:0": graph.group_of("qkv.weight", 0).classes[0]})
    with pytest.raises(fxprune.RewriteError, match="view"):
        fxprune.prune(model, plan, x, output="module")
    gm = fxprune.prune(model, plan, x, output="graph")
    assert fxprune.verify(model, gm, plan, x).max_abs_diff < 1e-5


def test_value_branch_between_blocks_falls_back_to_parts():
    torch.manual_seed(0)
    model, x = ValueGate().eval(), torch.randn(2, 8)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        graph = fxprune.analyze(model, x)
    assert graph.frontend == "parts"
    assert sum(issubclass(w.category, FallbackWarning) for w in ws) == 1
    free = {g.key for g in graph.groups if not g.pinned}
    assert free == {"a.up.weight:0", "b.up.weight:0"}
    plan = fxprune.PrunePlan({"a.up.weight:0": [0, 1, 2, 3], "b.up.weight:0": [15]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        small = fxprune.prune(model, plan, x)
    assert (small.a.up.out_features, small.b.up.out_features) == (12, 15)
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zero_rows(model, plan)(x), atol=1e-5, rtol=1e-5)


def test_autograd_frontend_records_the_whole_value_gate():
    """The same model recorded below Python in one forward: the branch taken is in the graph, the groups are
    those of the parts frontend, and the user's class is pruned (module target)."""
    torch.manual_seed(0)
    model, x = ValueGate().eval(), torch.randn(2, 8)
    graph = fxprune.analyze(model, x, frontend="autograd")
    assert graph.frontend == "autograd" and graph.recorded == [""]
    assert {g.key for g in graph.groups if not g.pinned} == {"a.up.weight:0", "b.up.weight:0"}
    assert graph.group_of("a.down.weight", 0).pinned == "model input"  # the residual stream is the input's
    plan = fxprune.PrunePlan({"a.up.weight:0": [0, 1, 2, 3], "b.up.weight:0": [15]})
    small = fxprune.prune(model, plan, x, frontend="autograd")
    assert type(small) is ValueGate and (small.a.up.out_features, small.a.down.in_features) == (12, 12)
    assert (small.b.up.out_features, small.b.down.in_features) == (15, 15)
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zero_rows(model, plan)(x), atol=1e-5, rtol=1e-5)


def test_compensated_parts_model_verifies_against_the_mean_filled_original():
    """Bias compensation on a model pruned in parts: the pruned model equals the original whose removed
    hidden channels read their means (a pre-hook, not the analysis), and verify(compensate=) agrees."""
    torch.manual_seed(0)
    model, x = ValueGate().eval(), torch.randn(4, 8)
    means = {"a.down": torch.randn(16), "b.down": torch.randn(16)}
    plan = {"a.up.weight:0": [0, 1], "b.up.weight:0": [3]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        small = fxprune.prune(model, plan, x, compensate=means)
        assert type(small) is ValueGate and small.a.down.in_features == 14
        ref = copy.deepcopy(model)
        for layer, idx in (("a.down", [0, 1]), ("b.down", [3])):
            def fill(_, args, idx=idx, mean=means[layer]):
                h = args[0].clone()
                h[..., idx] = mean[idx]
                return (h,)
            ref.get_submodule(layer).register_forward_pre_hook(fill)
        with torch.no_grad():
            torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        assert fxprune.verify(model, small, plan, x, compensate=means).max_abs_diff < 1e-5
        with pytest.raises(fxprune.VerificationError):
            fxprune.verify(model, small, plan, x)  # the zeroed original is not what was built


class Chain(nn.Module):
    """Every frontend takes it: whole (fx, export), in parts (its children), or recorded below Python."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = Mlp(8, 16), Mlp(8, 16), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


def test_every_frontend_returns_one_class_with_one_interface():
    """fx, export, parts and autograd give the same class, the same public attributes and the same groups;
    apply and verify work on each, and each pruned model computes the zeroed original."""
    torch.manual_seed(0)
    model, x = Chain().eval(), torch.randn(3, 8)
    plan = {"a.up.weight:0": [0, 5], "b.up.weight:0": [3]}
    want = _zero_rows(model, plan)(x).detach()
    graphs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        for frontend in ("fx", "export", "parts", "autograd"):
            graphs[frontend] = fxprune.analyze(model, x, frontend=frontend)
    public = {f: sorted(a for a in dir(g) if not a.startswith("_")) for f, g in graphs.items()}
    for frontend, graph in graphs.items():
        assert type(graph) is fxprune.ChannelGraph and graph.frontend == frontend
        assert public[frontend] == public["fx"], frontend
        assert {g.key: g.size for g in graph.groups if g.pinned is None} == \
            {"a.up.weight:0": 16, "b.up.weight:0": 16}, frontend
        g = graph.group_of("b.up.weight", 0)
        assert sorted(m for m in g.members if "." in m[0] and m[0].split(".")[-1] in ("weight", "bias")) == \
            [("b.down.weight", 1), ("b.up.bias", 0), ("b.up.weight", 0)], frontend
        net = graph.to_networkx("a.up.weight:0")
        assert sorted(d["name"] for _, d in net.nodes(data=True) if d["param"]) == \
            ["a.down.weight", "a.up.bias", "a.up.weight"], frontend
        with pytest.raises(fxprune.PlanError, match="did you mean a.up.weight"):
            graph.group_of("a.up.wieght", 0)
        with pytest.raises(fxprune.PlanError, match="pinned"):
            graph.expand({"a.down.weight:0": [0]})  # the residual stream is the model input's
        small = graph.apply(fxprune.PrunePlan(plan), model, x)
        assert small is not model and (small.get_submodule("a.up").out_features,
                                       small.get_submodule("b.up").out_features) == (14, 15), frontend
        with torch.no_grad():
            torch.testing.assert_close(small(x), want, atol=1e-5, rtol=1e-5)
            report = graph.verify(small, fxprune.PrunePlan(plan), (x,), 1e-5, 1e-5)
        assert report.max_abs_diff < 1e-5, frontend
        assert repr(graph).startswith("ChannelGraph(") and "2 prunable" in repr(graph), frontend
    # what the capture was: one graph, three traced parts with two stitched interfaces, one recording
    fx, export, parts, autograd = graphs.values()
    for whole in (fx, export):
        assert (whole.parts, whole.untraced, whole.recorded, whole.stitched) == ([], [], [], 0)
        assert whole.counts_from_ir and "parts" not in repr(whole)
    assert [p.path for p in parts.parts] == ["a", "b", "head"] and [p for p, _ in parts.untraced] == [""]
    assert parts.stitched == 2 and parts.recorded == [] and not parts.counts_from_ir
    assert "3 traced parts" in repr(parts) and "2 stitched interfaces" in repr(parts)
    assert [p.path for p in autograd.parts] == [""] and autograd.recorded == [""]
    assert "recorded below Python" in repr(autograd)
    assert isinstance(fx.apply(fxprune.PrunePlan(plan), model), torch.fx.GraphModule)  # fx: graph target
    assert all(type(g.apply(fxprune.PrunePlan(plan), model, x)) is Chain for g in (export, parts, autograd))
    for g in (parts, autograd):  # no graph of the whole model to return
        with pytest.raises(fxprune.PlanError, match="output='graph' needs one graph of the whole model"):
            g.apply(fxprune.PrunePlan(plan), model, x, output="graph")
    assert not hasattr(fxprune.frontend.partial, "PartialGraph")


# -- Hugging Face ------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra; not installed")


def test_llama_mlp_pruned_into_its_own_class_and_generates_like_the_zeroed_original():
    model, ids = tiny_llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    snap = state_snapshot(model)
    graph = fxprune.analyze(model, inputs)
    assert graph.frontend == "export"
    free = {g.key: g.size for g in graph.groups if not g.pinned}
    for i in range(2):  # every MLP's intermediate width is one prunable group
        assert free[f"model.layers.{i}.mlp.gate_proj.weight:0"] == 128
    plan = fxprune.PrunePlan({f"model.layers.{i}.mlp.gate_proj.weight:0": list(range(i, 128, 4))
                              for i in range(2)})
    small = fxprune.prune(model, plan, inputs)
    assert type(small) is transformers.LlamaForCausalLM
    for layer in small.model.layers:
        assert (layer.mlp.gate_proj.out_features, layer.mlp.up_proj.out_features,
                layer.mlp.down_proj.in_features) == (96, 96, 96)
    oracle = _zero_rows(model, plan)
    with torch.no_grad():
        oracle_up = copy.deepcopy(oracle)  # gate rows zeroed => silu(0) * up = 0: the up rows do not matter
        torch.testing.assert_close(small(ids, use_cache=False).logits, oracle_up(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(small.generate(ids, max_new_tokens=6, do_sample=False),
                       oracle.generate(ids, max_new_tokens=6, do_sample=False))
    assert fxprune.verify(model, small, plan, inputs).max_abs_diff < 1e-5
    assert_state_unchanged(model, snap)


def test_llama_head_dims_need_the_graph_target():
    model, ids = tiny_llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    graph = fxprune.analyze(model, inputs)
    g = graph.group_of("model.layers.0.self_attn.v_proj.weight", 0)
    assert g.pinned is None
    v = "model.layers.0.self_attn.v_proj.weight:0"
    plan = fxprune.PrunePlan({v: next(idx for k, idx in g.all_classes if k == v)})  # v head dim 0 only
    with pytest.raises(fxprune.RewriteError, match="view"):
        fxprune.prune(model, plan, inputs, output="module")
    gm = fxprune.prune(model, plan, inputs, output="graph")
    out = gm(ids)
    assert type(out).__name__ == "CausalLMOutputWithPast"  # called and answering like the model
    assert fxprune.verify(model, gm, plan, inputs).max_abs_diff < 1e-4


def test_llama_uniform_head_dims_are_written_back_into_the_class_and_config():
    model, ids = tiny_llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    graph = fxprune.analyze(model, inputs)
    qk = graph.group_of("model.layers.0.self_attn.q_proj.weight", 0)  # every attention (shared RoPE)
    assert qk.classes[0] == [h * 16 + d for h in range(4) for d in (0, 8)]  # RoPE pair (0, 8) of every head
    vs = [graph.group_of(f"model.layers.{i}.self_attn.v_proj.weight", 0) for i in range(2)]
    assert [len(v.classes) for v in vs] == [16, 16] and vs[0].key != qk.key  # v head dims: a group per layer
    # RoPE pair (0, 8) of q/k, and head dims 0 and 8 of v in every head: head_dim 16 -> 14 everywhere
    plan = fxprune.PrunePlan({qk.key: qk.classes[0], **{v.key: v.classes[0] + v.classes[8] for v in vs}})
    small = fxprune.prune(model, plan, inputs)
    assert type(small) is transformers.LlamaForCausalLM
    attn = small.model.layers[1].self_attn
    assert (attn.head_dim, attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == \
        (14, 56, 28, 56)
    assert (small.config.head_dim, model.config.head_dim) == (14, 16)  # the original's config untouched
    ref = copy.deepcopy(model)  # oracle: q/k rows of dims 0 and 8 of every head zeroed (scores lose them)
    with torch.no_grad():
        for layer in ref.model.layers:
            for proj, heads in ((layer.self_attn.q_proj, 4), (layer.self_attn.k_proj, 2),
                                (layer.self_attn.v_proj, 2)):
                rows = [h * 16 + d for h in range(heads) for d in (0, 8)]
                proj.weight[rows] = 0
        torch.testing.assert_close(small(ids, use_cache=False).logits, ref(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)


def test_llama_mlp_config_round_trips_through_save_pretrained(tmp_path):
    model, ids = tiny_llama()
    plan = fxprune.PrunePlan({f"model.layers.{i}.mlp.gate_proj.weight:0": list(range(0, 128, 2)) for i in range(2)})
    small = fxprune.prune(model, plan, fxprune.Inputs(ids, use_cache=False))
    assert (small.config.intermediate_size, model.config.intermediate_size) == (64, 128)
    small.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is transformers.LlamaForCausalLM
    with torch.no_grad():
        assert torch.equal(again(ids).logits, small(ids).logits)


def test_llama_whole_kv_groups_removed_into_the_class_config_and_back():
    model, ids = tiny_llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    g = fxprune.analyze(model, inputs).group_of("model.layers.0.self_attn.q_proj.weight", 0)
    q0 = "model.layers.0.self_attn.q_proj.weight:0"
    # per layer: kv group 0 and 1 (2 query heads each), then query head 0 and 1 of every group
    assert [idx for k, idx in g.head_classes if k == q0] == [
        list(range(32)), list(range(32, 64)), list(range(16)) + list(range(32, 48)),
        list(range(16, 32)) + list(range(48, 64))]
    plan = fxprune.PrunePlan({f"model.layers.{i}.self_attn.q_proj.weight:0": list(range(32, 64)) for i in range(2)})
    small = fxprune.prune(model, plan, inputs)
    assert type(small) is transformers.LlamaForCausalLM
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (2, 1)
    attn = small.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (32, 16, 32)
    ref = copy.deepcopy(model)  # oracle: KV head 1's values zeroed, so query heads 2 and 3 output zero
    with torch.no_grad():
        for layer in ref.model.layers:
            layer.self_attn.v_proj.weight[16:] = 0
        torch.testing.assert_close(small(ids, use_cache=False).logits, ref(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(small.generate(ids, max_new_tokens=5, do_sample=False),
                       ref.generate(ids, max_new_tokens=5, do_sample=False))


def test_llama_same_query_head_of_every_kv_group_removed():
    """GQA: query head 1 of both kv groups goes (q heads 1 and 3); k and v keep both kv heads."""
    model, ids = tiny_llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    rows = list(range(16, 32)) + list(range(48, 64))
    plan = fxprune.PrunePlan({f"model.layers.{i}.self_attn.q_proj.weight:0": rows for i in range(2)})
    small = fxprune.prune(model, plan, inputs)
    assert type(small) is transformers.LlamaForCausalLM
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (2, 2)
    attn = small.model.layers[1].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (32, 32, 32)
    ref = copy.deepcopy(model)  # oracle: o_proj's columns of query heads 1 and 3 zeroed
    with torch.no_grad():
        for layer in ref.model.layers:
            layer.self_attn.o_proj.weight[:, rows] = 0
        torch.testing.assert_close(small(ids, use_cache=False).logits, ref(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)
    assert fxprune.verify(model, small, plan, inputs).max_abs_diff < 1e-4
    graph = fxprune.analyze(model, inputs)
    exp = graph.expand(plan).plan
    assert exp["model.layers.0.self_attn.o_proj.weight:1"] == rows
    assert "model.layers.0.self_attn.k_proj.weight:0" not in exp
    assert graph.expand(exp).plan == exp  # closed: expanding the expanded plan changes nothing
