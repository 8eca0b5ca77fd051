"""The export frontend's repeated-layer path (:mod:`fxprune.frontend.repeat`) against the whole export.

Every check builds the same model twice (same seed) and exports / analyses one copy with the fast path and
one with ``repeat.ENABLED = False``: graphs must be equal node for node (names, targets, arguments, shapes,
module stacks), analyses equal group for group, plans equal, and the pruned real-weight model must verify.
Models whose layers differ must take the whole export (and say so in the log), and give the same result.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import pytest
import torch

import fxprune
from fxprune.frontend import repeat

transformers = pytest.importorskip("transformers")

LOGGER = "fxprune.frontend.repeat"


@contextmanager
def whole_export():
    old = repeat.ENABLED
    repeat.ENABLED = False
    try:
        yield
    finally:
        repeat.ENABLED = old


def _hf(family: str, layers: int, device: str = "cpu", **extra) -> torch.nn.Module:
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    cfg = cls(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=128, use_cache=False, **extra)
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _ids(device: str = "cpu") -> torch.Tensor:
    return torch.arange(8, device=device).reshape(1, 8) % 100


def _node_sig(n: torch.fx.Node) -> tuple:
    return (n.op, n.name, str(n.target), str(n.args), str(n.kwargs), repeat._val_sig(n.meta.get("val")),
            str(n.meta.get("nn_module_stack")), n.meta.get("stack_trace"))


def _graph_sig(gm: torch.fx.GraphModule) -> tuple:
    params = [(k, tuple(p.shape)) for k, p in gm.named_parameters()]
    buffers = [(k, tuple(b.shape)) for k, b in gm.named_buffers()]
    return [_node_sig(n) for n in gm.graph.nodes], params, buffers, gm.code, gm.meta["fxprune"].constants


def _traced_both(make, inputs, caplog):
    """(fast, whole) exports of two copies of one model, the fast path's log lines, and its model."""
    model = make()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        caplog.clear()
        fast = fxprune.trace(model, inputs, frontend="export")
        said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    with whole_export():
        whole = fxprune.trace(make(), inputs, frontend="export")
    return fast, whole, said, model


def _analysis_sig(graph) -> list:
    out = []
    for g in graph.groups:
        out.append((g.key, g.size, g.pinned, g.members, g.classes, g.all_classes, g.head_classes,
                    [(p.key, p.all_classes) for p in g.head_parts()]))
    return out


@pytest.mark.parametrize("family,layers", [("llama", 5), ("qwen2", 4)])
def test_repeated_graph_equals_whole_export(family, layers, caplog):
    """Node for node: the same names, targets, arguments, shapes and module stacks; the same parameters
    (the model's own tensors)."""
    inputs = fxprune.Inputs(_ids("meta"))
    fast, whole, said, model = _traced_both(lambda: _hf(family, layers, "meta"), inputs, caplog)
    assert any(f"cut to 3 of {layers} layers" in s for s in said), said
    assert _graph_sig(fast) == _graph_sig(whole)
    # the parameters of a repeated layer are the model's tensors, registered as in the whole export
    last = f"model.layers.{layers - 1}.mlp.up_proj.weight"
    assert fast.get_parameter(last) is model.get_parameter(last)


def test_repeated_analysis_plans_and_real_weights(caplog):
    """Equal analyses (groups, keys, members, classes, pins, heads) and equal plans (structure and L2 on
    real weights); the plan prunes the model and the result verifies against the masked original."""
    x = _ids()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fast_model = _hf("llama", 5)
        fast = fxprune.analyze(fast_model, x)
    assert any("cut to 3 of 5 layers" in r.getMessage() for r in caplog.records)
    with whole_export():
        whole_model = _hf("llama", 5)
        whole = fxprune.analyze(whole_model, x)
    assert _analysis_sig(fast) == _analysis_sig(whole)
    assert sum(g.pinned is None for g in fast.groups) >= 5 * 2  # every MLP and v/o group, and more
    for imp in ("structure", "l2"):
        a = fxprune.plan_by_ratio(fast, 0.25, importance=imp)
        b = fxprune.plan_by_ratio(whole, 0.25, importance=imp)
        assert dict(a) == dict(b) and len(a) > 0
    heads = fxprune.plan_by_ratio(fast, 0.5, heads=True, importance="l2")
    assert dict(heads) == dict(fxprune.plan_by_ratio(whole, 0.5, heads=True, importance="l2"))
    plan = fxprune.plan_by_ratio(fast, 0.25, importance="l2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.prune(fast_model, plan, x)
    fxprune.verify(fast_model, small, plan, x)
    up = small.get_submodule("model.layers.4.mlp.up_proj")
    assert up.out_features == 96 - 24  # the last (repeated) layer lost a quarter of its MLP


def _fallback_message(make, inputs, caplog) -> list:
    fast, whole, said, _ = _traced_both(make, inputs, caplog)
    assert _graph_sig(fast) == _graph_sig(whole)
    assert not any("repeated the last" in s for s in said), said
    return said


def test_sliding_window_layers_take_the_whole_export(caplog):
    """Qwen2 with sliding-window attention on some layers only: the layers' attributes differ."""
    types = ["full_attention", "sliding_attention"] * 2
    said = _fallback_message(lambda: _hf("qwen2", 4, "meta", layer_types=types, use_sliding_window=True,
                                         sliding_window=4), fxprune.Inputs(_ids("meta")), caplog)
    assert any("exporting the whole of Qwen2ForCausalLM" in s and "model.layers.1 differs" in s
               for s in said), said


def test_per_layer_widths_take_the_whole_export(caplog):
    """A pruned model whose layers have different MLP widths (layer 3's MLP narrowed by hand)."""
    def make():
        m = _hf("llama", 5, "meta")
        with torch.device("meta"):
            mlp = m.model.layers[3].mlp
            mlp.gate_proj = torch.nn.Linear(64, 88, bias=False)
            mlp.up_proj = torch.nn.Linear(64, 88, bias=False)
            mlp.down_proj = torch.nn.Linear(88, 64, bias=False)
        return m
    said = _fallback_message(make, fxprune.Inputs(_ids("meta")), caplog)
    assert any("model.layers.3 differs from model.layers.0" in s for s in said), said


class _Block(torch.nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.fc = torch.nn.Linear(width, width)

    def forward(self, x, extra=None):
        return torch.relu(self.fc(x if extra is None else x + extra))


class _Gelu(_Block):
    def forward(self, x, extra=None):
        return torch.nn.functional.gelu(self.fc(x))


class _Stack(torch.nn.Module):
    """``kind``: "plain" (a chain), "between" (the parent scales between layers), "first" (every later layer
    also reads the first layer's output), "all" (the output sums every layer's output), "mixed" (one layer of
    another class)."""

    def __init__(self, kind: str, n: int = 5):
        super().__init__()
        self.kind = kind
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(_Block() for _ in range(n))
        if kind == "mixed":
            self.layers[3] = _Gelu()

    def forward(self, x):
        outs, first = [], None
        for i, layer in enumerate(self.layers):
            x = layer(x, (x if first is None else first) if self.kind == "first" else None)
            if self.kind == "between":
                x = x * 0.5
            first = x if first is None else first
            outs.append(x)
        return torch.stack(outs).sum(0) if self.kind == "all" else x


@pytest.mark.parametrize("kind,why", [("between", "layers.1 do not follow those of layers.0"),
                                      ("first", "does not repeat"),
                                      ("all", "reads"),
                                      ("mixed", "layers.3 differs from layers.0")])
def test_layers_that_do_not_repeat_take_the_whole_export(kind, why, caplog):
    """Each of these would give a wrong graph if its layer were repeated; the checks see it."""
    said = _fallback_message(lambda: _Stack(kind), fxprune.Inputs(torch.randn(2, 8)), caplog)
    assert any(why in s for s in said), said


def test_plain_stack_repeats_and_prunes(caplog):
    """A non-HF stack takes the fast path; its analysis equals the whole export's and a plan verifies."""
    x = torch.randn(2, 8)
    fast, whole, said, _ = _traced_both(lambda: _Stack("plain", 6), fxprune.Inputs(x), caplog)
    assert any("cut to 3 of 6 layers" in s for s in said) and _graph_sig(fast) == _graph_sig(whole)
    m = _Stack("plain", 6)
    graph = fxprune.analyze(m, fxprune.Inputs(x), frontend="export")
    plan = fxprune.plan_by_ratio(graph, 0.25, importance="l2")
    # every layer but the last (its output is the model's) loses channels
    assert {k for k in plan if k.endswith("weight:0")} == {f"layers.{i}.fc.weight:0" for i in range(5)}
    small = fxprune.prune(m, plan, fxprune.Inputs(x), frontend="export")
    fxprune.verify(m, small, plan, fxprune.Inputs(x))


def test_hooks_and_tied_layers_are_not_repeated():
    m = _Stack("plain", 5)
    assert repeat.repeated_layers(m)[0] == "layers"
    h = m.layers[2].register_forward_hook(lambda *a: None)
    assert repeat.repeated_layers(m) is None
    h.remove()
    m.layers[4].fc.weight = m.layers[1].fc.weight
    assert repeat.repeated_layers(m) is None


def test_from_scores_file_on_meta_equals_whole_export(tmp_path, caplog):
    """Scores computed elsewhere, from a file, on a meta model of five layers: the same pruned shapes as with
    the whole export, no weight materialised, every layer's MLP 96 -> 72 wide."""
    from fxprune.scores import save_scores

    gen = torch.Generator().manual_seed(1)
    scores = {f"model.layers.{i}.mlp.up_proj.weight:0": torch.rand(96, generator=gen) for i in range(5)}
    path = tmp_path / "scores.safetensors"
    save_scores(scores, path)
    shapes = []
    for fast in (True, False):
        old, repeat.ENABLED = repeat.ENABLED, fast
        try:
            m = _hf("llama", 5, "meta")
            caplog.clear()
            with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger=LOGGER):
                warnings.simplefilter("ignore")  # groups without scores are named in a warning
                small = fxprune.Pruner.from_scores(m, _ids("meta"), path, pruning_ratio=0.25).step()
        finally:
            repeat.ENABLED = old
        assert any("cut to 3 of 5" in r.getMessage() for r in caplog.records) == fast
        assert all(p.is_meta for p in small.parameters())
        shapes.append([(k, tuple(p.shape)) for k, p in small.named_parameters()])
    assert shapes[0] == shapes[1]
    widths = {s[0] for k, s in shapes[0] if k.endswith("up_proj.weight")}
    assert widths == {72}


def test_config_depth_other_than_the_list_takes_the_whole_export(caplog):
    """A config that runs fewer layers than the list holds (``layers[:num_hidden_layers]``)."""
    def make():
        m = _hf("llama", 6, "meta")
        m.config.num_hidden_layers = 4
        return m
    said = _fallback_message(make, fxprune.Inputs(_ids("meta")), caplog)
    assert any("the config says 4 layers, model.layers holds 6" in s for s in said), said


def test_activation_partials_compare_by_value():
    """Gemma and Starcoder2 make ``partial(gelu, approximate="tanh")`` per layer: alike, not one object."""
    from functools import partial

    gelu = torch.nn.functional.gelu
    assert repeat._same_value(partial(gelu, approximate="tanh"), partial(gelu, approximate="tanh"))
    assert not repeat._same_value(partial(gelu, approximate="tanh"), partial(gelu, approximate="none"))


def test_an_unexpected_failure_warns_and_exports_the_whole_model(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(repeat, "_attach", broken)
    x = fxprune.Inputs(torch.randn(2, 8))
    with pytest.warns(UserWarning, match=r"layers of _Stack's layers failed \(RuntimeError: boom\)"):
        gm = fxprune.trace(_Stack("plain", 5), x, frontend="export")
    with whole_export():
        assert _graph_sig(gm) == _graph_sig(fxprune.trace(_Stack("plain", 5), x, frontend="export"))
