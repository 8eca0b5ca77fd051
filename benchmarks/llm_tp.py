#!/usr/bin/env python
"""Torch-Pruning 1.6.1 worker of ``benchmarks/llm.py``: its LLM recipe on SmolLM2-135M, one configuration.

Run as a subprocess (``python benchmarks/llm_tp.py '<json config>'``) so that a hang or a memory blow-up
costs one configuration: the parent enforces a timeout and an address-space cap. Prints one JSON line
(``RESULT {...}``).

The recipe (Torch-Pruning's ``examples/LLMs/prune_llm.py``, re-expressed): ``MetaPruner`` with
``num_heads={q_proj: heads, k_proj: kv heads, v_proj: kv heads}``, ``prune_num_heads=True``,
``prune_head_dims=False`` (RoPE untouched), ``head_pruning_ratio`` per layer, ``global_pruning=False``,
``output_transform=lambda out: out.logits``; afterwards the attention attributes and the config fields
(``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``) are updated by hand, as the example
does. To prune the same structure as fxprune (MLP width, or heads + MLP width, never the hidden size), the
layers that write the residual stream (``o_proj``, ``down_proj``) and ``lm_head`` are in ``ignored_layers``
(their input channels are still pruned); without heads, the attention projections too.

``patch_rope``: Torch-Pruning's grouping never finishes on transformers 5's Llama, whose ``rotate_half``
concatenates with ``dim=-1`` (see ``shared/reference/torch-pruning.md``); with it set, ``rotate_half`` is
replaced by the same computation with a positive ``dim`` before the pruner is built (same numbers). ``attn``:
an attention implementation to set first (``"eager"``: GQA's ``repeat_kv`` instead of SDPA's ``enable_gqa``).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llm_data  # noqa: E402


def patch_rotate_half() -> None:
    """``rotate_half`` with ``torch.cat(..., dim=x.ndim - 1)``: same numbers, a dim Torch-Pruning reads."""
    from transformers.models.llama import modeling_llama

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=x.ndim - 1)

    modeling_llama.rotate_half = rotate_half


def fix_attributes(model, pruner) -> None:
    """What Torch-Pruning's LLM example does by hand after ``step()``: head counts and config fields."""
    cfg = model.config
    for layer in model.model.layers:
        att = layer.self_attn
        q_heads = att.q_proj.out_features // att.head_dim
        kv_heads = att.k_proj.out_features // att.head_dim
        att.num_key_value_groups = q_heads // kv_heads
        att.config.num_attention_heads, att.config.num_key_value_heads = q_heads, kv_heads
    first = model.model.layers[0]
    cfg.num_attention_heads = first.self_attn.q_proj.out_features // first.self_attn.head_dim
    cfg.num_key_value_heads = first.self_attn.k_proj.out_features // first.self_attn.head_dim
    cfg.intermediate_size = first.mlp.gate_proj.out_features
    cfg.hidden_size = model.model.embed_tokens.embedding_dim


def run(cfg: dict) -> dict:
    import torch_pruning as tp

    torch.set_num_threads(cfg.get("threads", 1))
    out: dict = {"patch_rope": cfg["patch_rope"]}
    if cfg["patch_rope"]:
        patch_rotate_half()
    if cfg.get("snapshot"):
        model, windows = llm_data.load_snapshot(cfg["snapshot"])
        calib, evals = windows["calib"], windows["eval"]
    else:
        model = llm_data.load_smollm2()
        calib, evals = llm_data.token_windows(cfg["calib"], cfg["eval"])
    print("STAGE model loaded", flush=True)
    if cfg.get("attn"):
        model.set_attn_implementation(cfg["attn"])
    ex = calib[0][:, :cfg.get("example_len", 16)]
    layers = model.model.layers
    mlp = [m for L in layers for m in (L.mlp.gate_proj, L.mlp.up_proj)]
    num_heads = {}
    for L in layers:
        num_heads[L.self_attn.q_proj] = model.config.num_attention_heads
        num_heads[L.self_attn.k_proj] = model.config.num_key_value_heads
        num_heads[L.self_attn.v_proj] = model.config.num_key_value_heads
    ignored = [model.lm_head] + [m for L in layers for m in (L.self_attn.o_proj, L.mlp.down_proj)]
    heads = cfg["head_ratio"] > 0
    if not heads:
        ignored += [m for L in layers for m in (L.self_attn.q_proj, L.self_attn.k_proj, L.self_attn.v_proj)]
    crit = cfg["criterion"]
    imp = {"l2": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
           "taylor": lambda: tp.importance.GroupTaylorImportance(group_reduction="mean"),
           "activation": lambda: tp.importance.ActivationImportance()}[crit]()
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model, ex, importance=imp, global_pruning=False, pruning_ratio=0.0,
            pruning_ratio_dict={tuple(mlp): cfg["mlp_ratio"]}, ignored_layers=ignored,
            num_heads=num_heads if heads else {}, prune_num_heads=heads, prune_head_dims=False,
            head_pruning_ratio=cfg["head_ratio"], output_transform=lambda o: o.logits)
    out["build_s"] = time.time() - t0
    print(f"STAGE MetaPruner built in {out['build_s']:.1f} s", flush=True)
    t0 = time.time()
    if crit == "taylor":  # Torch-Pruning reads .grad: the summed loss over the calibration windows
        model.zero_grad(set_to_none=True)
        for ids in calib:
            model(ids, labels=ids, use_cache=False).loss.backward()
    elif crit == "activation":
        with torch.no_grad(), imp.compute_importance(model):
            for ids in calib:
                model(ids, use_cache=False)
    out["calib_s"] = time.time() - t0
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    model.zero_grad(set_to_none=True)
    fix_attributes(model, pruner)
    out["prune_s"] = time.time() - t0
    print(f"STAGE pruned in {out['prune_s']:.1f} s", flush=True)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["intermediate"] = [L.mlp.gate_proj.out_features for L in layers]
    out["q_heads"] = [L.self_attn.q_proj.out_features // L.self_attn.head_dim for L in layers]
    out["kv_heads"] = [L.self_attn.k_proj.out_features // L.self_attn.head_dim for L in layers]
    t0 = time.time()
    out["ppl"] = llm_data.perplexity(model, evals)
    out["eval_s"] = time.time() - t0
    return out


def main() -> int:
    cfg = json.loads(sys.argv[1])
    try:
        res = run(cfg)
    except Exception as e:  # recorded by the parent, not fatal
        res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
