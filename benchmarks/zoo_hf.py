"""The ``hf`` list of the zoo catalogue (``benchmarks/zoo_models.py``): every ``*ForCausalLM`` class of
transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (transformers 5.24) whose config builds tiny, plus BERT,
ViT and T5, each from a random tiny config: hidden 64, 2 layers, 4 heads, 2 kv heads where the family has GQA,
MLP width 128, vocabulary 100, 64 positions (``HF_TINY``, set on every config field of that name the config
class has) and the family's own overrides (``HF_FAMILIES``). A class listed under several model types is
swept once, under the first; ``HF_SKIPPED`` says why every other model type is left out.

transformers is imported only when a model is built: the catalogue itself stays cheap.

    >>> spec = [s for s in hf_specs() if s.name == "hf/llama"][0]
    >>> spec.source, spec.model_name, spec.input_shape
    ('hf', 'LlamaForCausalLM', (1, 8))
    >>> {"hf/bert_model", "hf/vit", "hf/t5"} <= {s.name for s in hf_specs()}
    True
"""
from __future__ import annotations

from typing import Any

__all__ = ["HF_EXTRA", "HF_FAMILIES", "HF_SKIPPED", "HF_TINY", "build_hf", "hf_config", "hf_specs"]

IDS = (1, 8)  # batch, tokens

# Set on every config class that has the field (or maps it: GPT-2's n_embd is hidden_size).
HF_TINY: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=100, max_position_embeddings=64, n_positions=64, head_dim=16,
    # encoder-decoder configs whose *ForCausalLM is their decoder (BART family, Whisper)
    d_model=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128, encoder_layers=2,
    encoder_attention_heads=4, encoder_ffn_dim=128,
    # mixtures of experts
    moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_local_experts=4,
    n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
    # multi-head latent attention (DeepSeek), its indexer (V3.2)
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, qk_head_dim=16, v_head_dim=16,
    index_head_dim=16, index_n_heads=2, index_topk=4,
    # special tokens inside the vocabulary
    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    sliding_window=16, max_window_layers=2,
)

# model_type -> the family's own config overrides (beyond HF_TINY); "" keys are not config fields.
HF_FAMILIES: dict[str, dict[str, Any]] = {
    **{t: {} for t in (
        "afmoe apertus apertus1p5_text arcee aria_text axk1 bailing_hybrid bamba bart beam bert_lm "
        "bert-generation big_bird bigbird_pegasus biogpt bitnet blenderbot blenderbot-small bloom camembert "
        "cohere cohere2 cohere2_moe cpmant ctrl cwm data2vec-text deepseek_v2 deepseek_v3 "
        "deepseek_v4 diffllama doge dory dots1 electra ernie ernie4_5 ernie4_5_moe exaone4 exaone_moe falcon "
        "falcon_h1 falcon_mamba flex_olmo flint gemma gemma2 gemma3_text gemma4_unified_text glm glm4 "
        "glm4_moe gpt2 gpt_bigcode gpt_neox gpt_neox_japanese gpt_oss granite "
        "granite_swa granitemoe granitemoe_swa granitemoehybrid granitemoeshared helium hrm_text "
        "hunyuan_v1_dense hunyuan_v1_moe hy_v3 hy_v4 hyperclovax inkling_text jais2 jamba jetmoe kolibri1 "
        "laguna lara_mini lfm2 lfm3 llama mamba marian mbart megatron-bert mellum mimo_v2_flash minicpm3 "
        "minimax minimax_m2 minimax_m3_vl_text ministral ministral3 mistral mixtral modernbert-decoder mpt "
        "mvp nanochat nemotron olmo olmo2 olmo3 olmo_hybrid olmoe openai-gpt opt pegasus persimmon phi phi3 "
        "phimoe plbart qwen2 qwen2_moe qwen3 qwen3_moe qwen3_next recurrent_gemma rembert roberta "
        "roberta-prelayernorm roformer rwkv seed_oss smollm3 solar_open stablelm starcoder2 trocr "
        "vaultgemma whisper xglm xlm xlm-roberta xlm-roberta-xl xlstm youtu").split()},
    "codegen": {"rotary_dim": 8},          # default 64 rotary dims > the head size 16
    "gptj": {"rotary_dim": 8},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 16},
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1},  # hidden * expand = heads * head_dim
    "xlnet": {"d_head": 16, "d_inner": 128},
    "zaya": {"num_experts_per_tok": 1},    # the only value the class supports
    "gemma4_text": {"vocab_size_per_layer_input": 100, "hidden_size_per_layer_input": 16},
    # multi-head latent attention: one kv head per query head (2 kv heads break its shapes)
    **{t: {"num_key_value_heads": 4} for t in ("axk2", "deepseek_v32", "glm4_moe_lite", "glm_moe_dsa",
                                               "dots3_note_text")},
    "roc_bert": {"pronunciation_vocab_size": 20, "pronunciation_embed_dim": 16, "shape_vocab_size": 20,
                 "shape_embed_dim": 16},
    "dbrx": {"d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 64,
             "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
             "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2}},
    "llama4_text": {"intermediate_size_mlp": 128, "interleave_moe_layer_step": 2, "num_local_experts": 2,
                    "num_experts_per_tok": 1},
    "qwen3_5_text": {}, "qwen3_5_moe_text": {}, "qwen4_exp_text": {},
}

# Not causal-LM decoders, in the list because issue 11 names them: model_type -> (class, config overrides).
HF_EXTRA: dict[str, tuple[str, dict[str, Any]]] = {
    "bert_model": ("BertModel", {}),
    "vit": ("ViTModel", {"image_size": 32, "patch_size": 8}),
    "t5": ("T5ForConditionalGeneration", {"d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4,
                                          "decoder_start_token_id": 0}),
}

_VISION = "a multimodal model: its causal LM takes image/audio inputs or a composite (text + vision) config"
HF_SKIPPED: dict[str, str] = {
    **{t: _VISION for t in ("fuyu gemma3 gemma3n gemma4 gemma4_unified gemma4_unified_assistant got_ocr2 "
                            "llama4 mllama moss_transcribe_diarize musicgen musicgen_melody qwen3_5 "
                            "qwen3_5_moe "
                            "qwen4_exp phi4_multimodal git emu3 dots3_note moshi").split()},
    **{t: "the same class as " + c for t, c in (
        ("exaone", "llama (LlamaForCausalLM)"), ("internlm3", "llama (LlamaForCausalLM)"),
        ("iquestcoder", "llama (LlamaForCausalLM)"), ("gpt-sw3", "gpt2 (GPT2LMHeadModel)"),
        ("sarvam_mla", "deepseek_v3"), ("sarvam_moe", "glm4_moe")
    )},
    "gemma4_assistant": "refuses a tiny config: its draft-model config rejects every per-layer input size "
                        "but 0, "
                        "and its text sub-config's default is 256",
    "blt": "byte latent transformer: a composite config (patcher + encoder + decoder), no tiny top-level "
           "fields",
    "xmod": "needs a language id per input (set_default_language / lang_ids): not an ids-only decoder",
    "cohere_compass_text": "refuses a tiny config: KeyError 'full_attention' building its layer types",
    "gemma3n_text": "refuses a tiny config: per-layer KV-sharing layer types must match 35 default layers",
    "lfm2_moe": "refuses a tiny config: TypeError building its layer types at 2 layers",
    "longcat_flash": "refuses a tiny config: layer count and expert routing fields are not the common ones",
    "nemotron_h": "refuses a tiny config: its hybrid block pattern string sets the layer count",
    "prophetnet": "n-gram predicting encoder-decoder: its decoder needs ngram streams, not plain ids",
    "reformer": "axial position embeddings need the sequence length to be their product (4096 by default)",
    "zamba": "refuses a tiny config: its layers_block_type pattern must match the layer count",
    "zamba2": "refuses a tiny config: its layers_block_type pattern and hybrid_layer_ids must match",
    "inkling2_text": "refuses a tiny config: 15.8 M parameters at hidden 64 (fixed relative-position tables)",
    "inkling2_loop_text": "refuses a tiny config: 14.5 M parameters at hidden 64 (fixed relative-position "
                          "tables)",
    "kimi_linear": "refuses a tiny config: 4.4 M parameters at hidden 64 (linear-attention heads fixed at "
                   "128)",
}
# BertLMHeadModel (model_type bert) is "bert_lm", BertModel of issue 11 "bert_model"
_TYPE = {"bert_lm": "bert", "bert_model": "bert"}  # spec family -> transformers model_type


def hf_config(family: str, overrides: dict[str, Any]):
    """The tiny config of ``family`` (a transformers model_type): ``HF_TINY`` where the class has the field,
    then ``overrides``."""
    import dataclasses

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    cls = CONFIG_MAPPING[_TYPE.get(family, family)]
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    known |= set(getattr(cls, "attribute_map", None) or {})
    kw = {k: v for k, v in HF_TINY.items() if k in known}
    kw.update(overrides)
    return cls(**kw)


def hf_specs() -> list:
    """The ``hf`` list: one spec per family, named ``hf/<model_type>`` (``model_name`` is the class)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

    from zoo_models import Spec
    out = []
    for fam, kw in HF_FAMILIES.items():
        cls = causal[_TYPE.get(fam, fam)]
        out.append(Spec(f"hf/{fam}", "hf", cls, IDS, kw, fam))
    for fam, (cls, kw) in HF_EXTRA.items():
        out.append(Spec(f"hf/{fam}", "hf", cls, (2, 3, 32, 32) if fam == "vit" else IDS, kw, fam))
    return sorted(out, key=lambda s: s.name)


def build_hf(spec, seed: int = 0):
    """``(model.eval(), fxprune.Inputs)``: token ids with ``use_cache=False`` for a decoder, ids alone for
    BERT, pixels for ViT, ids and decoder ids for T5."""
    import torch
    import transformers

    import fxprune
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_name)(hf_config(spec.family, spec.kwargs)).eval()
    g = torch.Generator().manual_seed(1)
    if spec.family == "vit":
        return model, fxprune.Inputs(torch.randn(*spec.input_shape, generator=g))
    ids = torch.randint(3, 100, spec.input_shape, generator=g)
    if spec.family == "bert_model":
        return model, fxprune.Inputs(ids)
    if spec.family == "t5":
        return model, fxprune.Inputs(ids, decoder_input_ids=ids[:, :5], use_cache=False)
    return model, fxprune.Inputs(ids, use_cache=False)
