"""Hugging Face families through the export frontend: MLP widths found prunable in every layer, pruned,
and equal to the masked original (verify) — or, for the ones whose forward writes sizes the module target
cannot carry (fused projections), returned as a GraphModule called like the model."""
from __future__ import annotations

import warnings

import pytest
import torch

import fxprune

T = pytest.importorskip("transformers", reason="transformers is in the test extra; not installed")

_DEC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
            max_position_embeddings=64)


def _decoder(cfg_cls, model_cls, **kw):
    return lambda: model_cls(cfg_cls(**{**_DEC, **kw}))


CASES = {
    "llama": (_decoder(T.LlamaConfig, T.LlamaForCausalLM, num_key_value_heads=2), "mlp.gate_proj"),
    "qwen2": (_decoder(T.Qwen2Config, T.Qwen2ForCausalLM, num_key_value_heads=2), "mlp.gate_proj"),
    "mistral": (_decoder(T.MistralConfig, T.MistralForCausalLM, num_key_value_heads=2), "mlp.gate_proj"),
    "qwen3": (_decoder(T.Qwen3Config, T.Qwen3ForCausalLM, num_key_value_heads=2, head_dim=16), "mlp.gate_proj"),
    "gemma": (_decoder(T.GemmaConfig, T.GemmaForCausalLM, num_key_value_heads=2, head_dim=16), "mlp.gate_proj"),
    "phi3": (_decoder(T.Phi3Config, T.Phi3ForCausalLM, num_key_value_heads=2, pad_token_id=0), "mlp.down_proj"),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                                    n_positions=64)), "mlp.c_fc"),
    "bert": (lambda: T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=128, vocab_size=100, max_position_embeddings=64)),
             "intermediate.dense"),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                           num_heads=4, vocab_size=100)), "DenseReluDense.wi"),
}
# the first parameter of the MLP, its dim that holds the intermediate width
_MLP_DIM = {"phi3": 1, "gpt2": 1}


def _inputs(name, ids):
    if name == "t5":
        return fxprune.Inputs(ids, decoder_input_ids=ids, use_cache=False)
    if name == "bert":
        return fxprune.Inputs(ids)
    return fxprune.Inputs(ids, use_cache=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_mlp_is_prunable_and_verifies(name):
    build, mlp = CASES[name]
    torch.manual_seed(0)
    model, ids = build().eval(), torch.randint(0, 100, (1, 8))
    inputs = _inputs(name, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxprune.analyze(model, inputs)
        assert graph.frontend == "export"
        mlp_params = [n for n, _ in model.named_parameters() if f"{mlp}.weight" in n]
        assert len(mlp_params) >= 2, mlp_params  # one per layer (T5: encoder and decoder)
        for p in mlp_params:
            g = graph.group_of(p, _MLP_DIM.get(name, 0))
            assert g.pinned is None and len(g.all_classes) >= 64, (p, g)
        plan = fxprune.plan_by_ratio(graph, 0.25)
        small = fxprune.prune(model, plan, inputs)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.85 * before
    assert fxprune.verify(model, small, plan, inputs).max_abs_diff < 1e-4
