"""Keep a pruned Hugging Face model's ``config`` in step with its layers.

``save_pretrained`` writes ``config.json`` and ``from_pretrained`` builds the stock class from it, so a
config that still says ``intermediate_size=11008`` after pruning cannot be loaded back. This reads the
widths from the pruned layers (``mlp.down_proj.in_features``, the attention modules' ``head_dim``,
``q_proj``/``k_proj`` rows, the input embedding) and writes the fields the config has. A field is written
only when every layer agrees; when they differ (global pruning) it is left as it is and named in a warning.
The config object is copied first: the user's unpruned model shares the original.

Example:
    >>> import torch, fxprune, transformers
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
    >>> m = transformers.LlamaForCausalLM(cfg).eval()
    >>> ids = torch.randint(0, 50, (1, 4))
    >>> small = fxprune.prune(m, {"model.layers.0.mlp.gate_proj.weight:0": list(range(16))},
    ...                       fxprune.Inputs(ids, use_cache=False))
    >>> small.config.intermediate_size, m.config.intermediate_size
    (48, 64)
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Dict, List

import torch.nn as nn

__all__ = ["sync_config"]

log = logging.getLogger(__name__)


def _widths(model: nn.Module) -> Dict[str, List[int]]:
    """Per-layer widths, keyed by the config field they set."""
    out: Dict[str, List[int]] = {}
    for name, m in model.named_modules():
        leaf = name.rpartition(".")[2]
        down = getattr(m, "down_proj", None)
        if leaf == "mlp" and isinstance(down, nn.Linear):
            out.setdefault("intermediate_size", []).append(down.in_features)
        q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
        hd = getattr(m, "head_dim", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and type(hd) is int and hd > 0:
            out.setdefault("head_dim", []).append(hd)
            out.setdefault("num_attention_heads", []).append(q.out_features // hd)
            out.setdefault("num_key_value_heads", []).append(k.out_features // hd)
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if isinstance(emb, nn.Embedding):
        out["hidden_size"] = [emb.embedding_dim]
    return out


def sync_config(model: nn.Module) -> Dict[str, Any]:
    """Write the pruned widths of ``model`` into a copy of its ``config``; return the changed fields."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return {}
    changes, uneven = {}, []
    for field, values in _widths(model).items():
        if not hasattr(cfg, field) or getattr(cfg, field) is None:
            continue
        if len(set(values)) > 1:
            uneven.append(f"{field} {sorted(set(values))}")
            continue
        if getattr(cfg, field) != values[0]:
            changes[field] = values[0]
    if uneven:
        warnings.warn("fxprune: layers of " + type(model).__name__ + " differ in width (" + "; ".join(uneven)
                      + "): the config keeps the original value of these fields, so from_pretrained cannot "
                      "rebuild this model from config.json alone", stacklevel=4)
    if not changes:
        return {}
    new = copy.deepcopy(cfg)
    for f, v in changes.items():
        setattr(new, f, v)
    for m in model.modules():  # every module holding the shared config gets the copy
        if getattr(m, "config", None) is cfg:
            m.config = new
    log.info("config of %s updated: %s", type(model).__name__, changes)
    return changes
