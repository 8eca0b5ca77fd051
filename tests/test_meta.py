"""Models on the ``meta`` device: analysis, structure-only plans, scores from elsewhere, pruning without
weights.

A tiny Llama with GQA (hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 96) is built twice from one
config: on ``meta`` (no values) and on the CPU. Plans chosen on meta must equal the same plans chosen on the
CPU copy, and the pruned meta model must have the widths and config written out here by hand.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import fxprune
from fxprune.scores import load_scores, save_scores

transformers = pytest.importorskip("transformers")

HIDDEN, INTER, HEADS, KV, HEAD_DIM, LAYERS = 64, 96, 4, 2, 16, 2


def _llama(device: str) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV, intermediate_size=INTER, vocab_size=128,
                                   use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def models():
    out = {}
    for dev in ("meta", "cpu"):
        m = _llama(dev)
        x = torch.zeros(1, 8, dtype=torch.long, device=dev)
        out[dev] = (m, x, fxprune.analyze(m, x))
    return out


def _widths(m: torch.nn.Module) -> dict:
    c = m.config
    return {"hidden": c.hidden_size, "inter": c.intermediate_size, "heads": c.num_attention_heads,
            "kv": c.num_key_value_heads,
            "shapes": {n: tuple(p.shape) for n, p in m.named_parameters()}}


def _summary(graph) -> list:
    return [(g.key, g.size, g.pinned is None, len(g.all_classes),
             [len(p.all_classes) for p in g.head_parts()]) for g in graph.groups]


def test_meta_analysis_finds_every_mlp_head_kv_group_and_hidden(models):
    m, _, graph = models["meta"]
    assert all(p.is_meta for p in m.parameters())
    for i in range(LAYERS):
        mlp = graph.group_of(f"model.layers.{i}.mlp.up_proj.weight", 0)
        assert mlp.pinned is None and len(mlp.all_classes) == INTER
        vo = graph.group_of(f"model.layers.{i}.self_attn.v_proj.weight", 0)
        assert vo.pinned is None and vo.size == KV * HEAD_DIM
        qk = graph.group_of(f"model.layers.{i}.self_attn.q_proj.weight", 0)
        # one head part per layer: its kv groups and the query heads of every group
        parts = [p for p in qk.head_parts() if p.all_classes[0][0].startswith(f"model.layers.{i}.")]
        assert len(parts) == 1 and len(parts[0].all_classes) == KV + HEADS // KV
        kv_rows = sorted(len(idx) for _, idx in parts[0].all_classes[:KV])
        assert kv_rows == [HEADS // KV * HEAD_DIM] * KV  # a kv group removes its query heads' rows
    hidden = graph.group_of("model.embed_tokens.weight", 1)
    assert hidden.pinned is None and len(hidden.all_classes) == HIDDEN
    assert _summary(graph) == _summary(models["cpu"][2])


def test_plan_by_ratio_on_meta_equals_cpu_and_prunes_without_weights(models):
    m, x, graph = models["meta"]
    cm, cx, cgraph = models["cpu"]
    plan = fxprune.plan_by_ratio(graph, 0.25, importance="structure")
    assert plan == fxprune.plan_by_ratio(cgraph, 0.25, importance="structure")
    assert plan["model.layers.0.mlp.gate_proj.weight:0"] == list(range(72, 96))  # the last quarter
    heads = fxprune.plan_by_ratio(graph, 0.5, heads=True, importance="structure")
    assert heads == fxprune.plan_by_ratio(cgraph, 0.5, heads=True, importance="structure") and len(heads)
    with pytest.warns(UserWarning, match="meta device"):
        assert fxprune.plan_by_ratio(graph, 0.25) == plan  # auto: structure on meta, said once
    with pytest.raises(fxprune.MetaTensorError, match=r"model\.\S+\.weight"):
        fxprune.plan_by_ratio(graph, 0.25, importance="l2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.prune(m, plan, x)
        csmall = fxprune.prune(cm, plan, cx)
    assert type(small) is type(m) and all(p.is_meta for p in small.parameters())
    w = _widths(small)
    assert (w["hidden"], w["inter"], w["heads"], w["kv"]) == (48, 72, HEADS, KV)
    assert w["shapes"]["model.layers.1.mlp.down_proj.weight"] == (48, 72)
    assert w["shapes"]["model.layers.0.self_attn.k_proj.weight"][1] == 48
    assert w == _widths(csmall)
    assert all(p.is_meta for p in m.parameters()) and m.config.hidden_size == HIDDEN  # the user's model


@pytest.mark.parametrize("opts, expect", [
    (dict(pruning_ratio=0.3, round_to=8), dict(hidden=40, inter=64, heads=HEADS, kv=KV)),
    (dict(pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5),
     dict(hidden=HIDDEN, inter=INTER, heads=2, kv=KV)),
    (dict(target_params=0.7), None),
])
def test_pruner_on_meta_equals_cpu(models, opts, expect):
    m, x, _ = models["meta"]
    cm, cx, _ = models["cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = fxprune.Pruner(m, x, importance="structure", **opts)
        small = p.step()
        cp = fxprune.Pruner(cm, cx, importance="structure", **opts)
        csmall = cp.step()
    assert p.plan == cp.plan and len(p.plan)
    assert type(small) is type(m) and all(t.is_meta for t in small.parameters())
    w = _widths(small)
    assert w == _widths(csmall)
    if expect is not None:
        assert {k: w[k] for k in expect} == expect
    else:  # the budget, counted on meta from the analysis, on the CPU by a forward
        n = sum(t.numel() for t in small.parameters())
        assert n <= 0.7 * sum(t.numel() for t in m.parameters()) < n + 2 * HIDDEN * 128


def test_default_and_value_criteria_on_meta(models):
    m, x, _ = models["meta"]
    with pytest.warns(UserWarning, match="meta device"):
        p = fxprune.Pruner(m, x, pruning_ratio=0.25)  # default: structure, said once
    assert type(p.importance).__name__ == "StructureImportance"
    with pytest.raises(fxprune.MetaTensorError, match=r"MagnitudeImportance needs the values of 'model\."):
        fxprune.Pruner(m, x, importance="l2", pruning_ratio=0.25).step()


def test_from_scores_meta_equals_cpu_and_files(models, tmp_path):
    m, x, graph = models["meta"]
    cm, cx, _ = models["cpu"]
    gen = torch.Generator().manual_seed(1)
    scores = {f"model.layers.{i}.mlp.up_proj.weight:0": torch.rand(INTER, generator=gen)
              for i in range(LAYERS)}
    with pytest.warns(UserWarning, match="have no scores"):  # attention and hidden groups: left alone, said
        p = fxprune.Pruner.from_scores(m, x, scores, pruning_ratio=0.5, iterative_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.step()
        small = p.step()
        for path in (tmp_path / "imp.pt", tmp_path / "imp.safetensors"):
            save_scores(scores, path)
            assert all(torch.equal(load_scores(path)[k], v) for k, v in scores.items())
        cp = fxprune.Pruner.from_scores(cm, cx, path, pruning_ratio=0.5, iterative_steps=2)  # the file
        cp.step()
        csmall = cp.step()
    assert p.plan == cp.plan and _widths(small) == _widths(csmall)
    removed = graph.expand(p.plan).plan
    for i in range(LAYERS):  # oracle: the 48 lowest scores of each layer, over two steps of 24
        lowest = sorted(torch.argsort(scores[f"model.layers.{i}.mlp.up_proj.weight:0"])[:48].tolist())
        assert removed[f"model.layers.{i}.mlp.up_proj.weight:0"] == lowest
    assert _widths(small)["shapes"]["model.layers.0.mlp.up_proj.weight"] == (48, HIDDEN)
    assert "model.embed_tokens.weight:1" not in removed


def test_bad_scores_are_named(models, tmp_path):
    m, x, _ = models["meta"]
    with pytest.raises(fxprune.PlanError, match="did you mean 'model.layers.0.mlp.up_proj.weight'"):
        fxprune.Pruner.from_scores(m, x, {"model.layers.0.mlp.upproj.weight:0": torch.ones(INTER)})
    with pytest.raises(fxprune.PlanError, match="95 scores for a dim of size 96"):
        fxprune.Pruner.from_scores(m, x, {"model.layers.0.mlp.up_proj.weight:0": torch.ones(INTER - 1)})
    with pytest.raises(fxprune.PlanError, match="NaN"):
        nan = torch.full((INTER,), float("nan"))
        fxprune.Pruner.from_scores(m, x, {"model.layers.0.mlp.up_proj.weight:0": nan})
    with pytest.raises(fxprune.PlanError, match="cannot read scores from .*missing.pt"):
        fxprune.Pruner.from_scores(m, x, tmp_path / "missing.pt")


@pytest.mark.zoo
@pytest.mark.parametrize("kv", [32, 8])
def test_7b_shapes_on_meta(kv):
    """Llama-2-7B and a GQA 7B (Mistral-7B shape): every MLP, head, kv group and the hidden size prunable."""
    cfg = transformers.LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=kv, intermediate_size=11008 if kv == 32 else 14336,
                                   vocab_size=32000, use_cache=False)
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    graph = fxprune.analyze(m, torch.zeros(1, 8, dtype=torch.long, device="meta"))
    for i in range(32):
        assert graph.group_of(f"model.layers.{i}.mlp.up_proj.weight", 0).pinned is None
        assert graph.group_of(f"model.layers.{i}.self_attn.v_proj.weight", 0).pinned is None
    parts = [p for g in graph.groups if g.pinned is None for p in g.head_parts()]
    assert len(parts) == 32 and all(len(p.all_classes) == (32 if kv == 32 else kv + 32 // kv) for p in parts)
    assert graph.group_of("model.embed_tokens.weight", 1).pinned is None
