"""Head counts of a pruned Hugging Face attention module, read back from its projections.

An exported graph holds head counts as literals, and the module target can only guess which attribute a
literal came from (:func:`fxprune.targets.module.carry_constants` reads by value, and ``layer_idx == 2``
looks just like ``num_key_value_groups == 2``). For the attention modules transformers ships the meaning
of each attribute is known, so this sets them from the projections' sliced widths instead: ``H`` query heads
(rows of the query projection over the head size), ``KV`` key/value heads, and every derived attribute
(``num_key_value_groups = H // KV``, ``all_head_size = H * head_dim``, GPT-2's ``split_size``...).

Example:
    >>> import torch, transformers
    >>> from fxprune.hf.attention import attention_widths
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    >>> attn = transformers.LlamaForCausalLM(cfg).model.layers[0].self_attn
    >>> attention_widths(attn)
    AttentionWidths(heads=4, kv_heads=2, head_dim=8)
"""
from __future__ import annotations

import copy
from typing import Dict, NamedTuple, Optional

import torch.nn as nn

__all__ = ["AttentionWidths", "attention_widths", "sync_attention"]

# attribute holding the head size, per family (the first one present is read)
_HEAD_SIZE = ("head_dim", "attention_head_size", "key_value_proj_dim")
# (query, key, value) projection names; a single name is a fused q|k|v projection
_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"))
_FUSED = ("qkv_proj", "c_attn", "query_key_value", "Wqkv")


class AttentionWidths(NamedTuple):
    """Head counts and head size of one attention module."""

    heads: int
    kv_heads: int
    head_dim: int


def _out(layer: nn.Module) -> Optional[int]:
    """Output width of a projection: ``nn.Linear`` rows, or GPT-2 ``Conv1D``'s ``nf`` columns."""
    w = getattr(layer, "weight", None)
    if w is None or w.ndim != 2:
        return None
    return int(w.shape[1]) if type(layer).__name__ == "Conv1D" else int(w.shape[0])


def _in(layer: nn.Module) -> Optional[int]:
    w = getattr(layer, "weight", None)
    if w is None or w.ndim != 2:
        return None
    return int(w.shape[0]) if type(layer).__name__ == "Conv1D" else int(w.shape[1])


def _output_projection(m: nn.Module) -> Optional[nn.Module]:
    for name in ("o_proj", "o", "out_proj", "dense"):
        layer = getattr(m, name, None)
        if isinstance(layer, nn.Module) and hasattr(layer, "weight"):
            return layer
    c = getattr(m, "c_proj", None)  # GPT-2 attention's output Conv1D (its MLP has one too, but no c_attn)
    return c if getattr(m, "c_attn", None) is not None else None


def attention_widths(m: nn.Module) -> Optional[AttentionWidths]:
    """``(heads, kv_heads, head_dim)`` of a transformers attention module, or None for any other module."""
    hd = next((getattr(m, a) for a in _HEAD_SIZE if type(getattr(m, a, None)) is int), None)
    if not hd:
        return None
    for q, k, v in _SEPARATE:
        layers = [getattr(m, n, None) for n in (q, k, v)]
        if all(isinstance(x, nn.Module) for x in layers):
            rows = [_out(x) for x in layers]
            if None in rows or rows[0] % hd or rows[1] % hd:
                return None
            return AttentionWidths(rows[0] // hd, rows[1] // hd, hd)
    fused = next((getattr(m, n) for n in _FUSED if isinstance(getattr(m, n, None), nn.Module)), None)
    o = _output_projection(m)
    if fused is None or o is None:
        return None
    total, q_rows = _out(fused), _in(o)  # q rows = the output projection's input width
    if total is None or q_rows is None or q_rows % hd or (total - q_rows) % (2 * hd):
        return None
    return AttentionWidths(q_rows // hd, (total - q_rows) // (2 * hd), hd)


def _derived(w: AttentionWidths) -> Dict[str, int]:
    """Every attribute name transformers' attention modules use for these widths."""
    return {"num_heads": w.heads, "num_attention_heads": w.heads, "n_heads": w.heads,
            "num_key_value_heads": w.kv_heads, "num_key_value_groups": w.heads // max(w.kv_heads, 1),
            "all_head_size": w.heads * w.head_dim, "inner_dim": w.heads * w.head_dim,
            "split_size": w.heads * w.head_dim}


def sync_attention(model: nn.Module) -> Dict[str, int]:
    """Set the head-count attributes of every attention module of ``model`` from its projections; a module
    whose forward reads head counts from its ``config`` (Phi-3) gets a copy with its own counts when they
    differ from the shared one. Returns ``{"module.attr": value}`` for what changed."""
    changed: Dict[str, int] = {}
    for name, m in model.named_modules():
        w = attention_widths(m)
        if w is None or w.kv_heads == 0 or w.heads % w.kv_heads:
            continue
        for attr, value in _derived(w).items():
            old = getattr(m, attr, None)
            if type(old) is int and old != value:
                setattr(m, attr, value)
                changed[f"{name}.{attr}"] = value
        cfg = getattr(m, "config", None)
        own = {"num_attention_heads": w.heads, "num_key_value_heads": w.kv_heads}
        if cfg is not None and any(getattr(cfg, k, v) not in (v, None) for k, v in own.items()):
            m.config = copy.copy(cfg)  # shallow: this layer's counts only; the rest stays shared
            for k, v in own.items():
                if getattr(cfg, k, None) is not None:
                    setattr(m.config, k, v)
    return changed
