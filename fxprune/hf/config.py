"""Keep a pruned Hugging Face model's ``config`` in step with its layers.

``save_pretrained`` writes ``config.json`` and ``from_pretrained`` builds the stock class from it, so a
config that still says ``intermediate_size=11008`` after pruning cannot be loaded back. :func:`sync_config`
reads the widths from the pruned layers (each family's MLP, the attention modules' head counts and head
size, the input embedding) and writes the config fields they set. A field is written only when every layer
agrees. The config object is copied first: the user's unpruned model shares the original.

Whether ``config.json`` then describes the model is checked, not assumed: :func:`config_mismatches` builds
the stock class from the new config on the ``meta`` device and compares every parameter's shape. When
they differ (widths that vary per layer; GPT-2 or BERT with heads removed, whose head size is always
``hidden_size // num_attention_heads``), a warning names the first mismatches and points to
:func:`fxprune.hf.save_pretrained`, which stores what the config cannot say.

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
    >>> config_mismatches(small)
    []
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Dict, List

import torch
import torch.nn as nn

from .attention import attention_widths, sync_attention
from ..errors import user_stacklevel

__all__ = ["sync_config", "config_mismatches", "model_widths", "scalar_attrs"]

log = logging.getLogger(__name__)


def _rows(layer: Any) -> int | None:
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        return None
    return int(w.shape[1] if type(layer).__name__ == "Conv1D" else w.shape[0])


def _mlp_width(name: str, m: nn.Module) -> tuple[str, int] | None:
    """``(config field, width)`` of one MLP block of the families transformers ships, else None."""
    leaf = name.rpartition(".")[2]
    down = getattr(m, "down_proj", None)
    if isinstance(down, nn.Linear):  # Llama family, Phi-3 (fused gate_up_proj)
        return "intermediate_size", down.in_features
    if leaf == "intermediate" and isinstance(getattr(m, "dense", None), nn.Linear):  # BERT, ViT
        return "intermediate_size", m.dense.out_features
    if leaf == "mlp" and isinstance(getattr(m, "fc1", None), nn.Linear):  # ViT, CLIP
        return "intermediate_size", m.fc1.out_features
    if leaf == "mlp" and getattr(m, "c_fc", None) is not None:  # GPT-2 (Conv1D)
        width = _rows(m.c_fc)
        return ("n_inner", width) if width else None
    if leaf == "DenseReluDense":  # T5: wi, or wi_0/wi_1 when gated
        wi = getattr(m, "wi", None) or getattr(m, "wi_0", None)
        return ("d_ff", wi.out_features) if isinstance(wi, nn.Linear) else None
    return None


def model_widths(model: nn.Module) -> Dict[str, List[int]]:
    """Per-layer widths of ``model``, keyed by the config field they set (``intermediate_size``, ``n_inner``,
    ``d_ff``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_size``)."""
    out: Dict[str, List[int]] = {}
    for name, m in model.named_modules():
        mlp = _mlp_width(name, m)
        if mlp is not None:
            out.setdefault(mlp[0], []).append(mlp[1])
        w = attention_widths(m)
        if w is not None:
            out.setdefault("num_attention_heads", []).append(w.heads)
            out.setdefault("num_key_value_heads", []).append(w.kv_heads)
            out.setdefault("head_dim", []).append(w.head_dim)
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if isinstance(emb, nn.Embedding):
        out["hidden_size"] = [emb.embedding_dim]
    return out


def _has(cfg: Any, field: str) -> bool:
    try:
        return getattr(cfg, field) is not None
    except Exception:  # AttributeError, or a per-layer field read globally
        return False


def sync_config(model: nn.Module) -> Dict[str, Any]:
    """Write the pruned widths of ``model`` into a copy of its ``config``, set the head counts of its
    attention modules (:func:`fxprune.hf.attention.sync_attention`) and warn when ``config.json`` still
    cannot describe the model. Returns the changed config fields."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return {}
    widths = model_widths(model)
    changes: Dict[str, Any] = {}
    for field, values in widths.items():
        if len(set(values)) > 1 or not values:
            continue
        # head_dim is written even where the config has no such field: the Llama family reads
        # getattr(config, "head_dim", hidden_size // num_attention_heads)
        try:
            present, old = hasattr(cfg, field), getattr(cfg, field, None)
        except Exception:  # a field some configs hold per layer (Gemma 4's head_dim) refuses a global read
            continue
        if (present or field == "head_dim") and old != values[0]:
            changes[field] = values[0]
    if "head_dim" in changes and not _has(cfg, "head_dim"):
        hidden = changes.get("hidden_size", getattr(cfg, "hidden_size", None))
        heads = changes.get("num_attention_heads", getattr(cfg, "num_attention_heads", None))
        if hidden and heads and hidden // heads == changes["head_dim"]:
            del changes["head_dim"]  # the default already gives it
    new = _buildable(type(model), cfg, changes)
    if new is not None:
        for m in model.modules():  # every module holding the shared config gets the copy
            if getattr(m, "config", None) is cfg:
                m.config = new
            for f, v in changes.items():  # a copy a layer kept at init (GemmaMLP.intermediate_size)
                if type(getattr(m, f, None)) is int and getattr(m, f) == getattr(cfg, f, None):
                    setattr(m, f, v)
        log.info("config of %s updated: %s", type(model).__name__, changes)
    sync_attention(model)
    bad = config_mismatches(model)
    if bad:
        uneven = [f"{f} {sorted(set(v))}" for f, v in widths.items() if len(set(v)) > 1]
        why = f"layers differ in width ({'; '.join(uneven)})" if uneven else "the config cannot express them"
        warnings.warn(f"fxprune: config.json of the pruned {type(model).__name__} does not describe its layers: "
                      f"{why}; from_pretrained would build {'; '.join(bad[:3])}"
                      f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}. Save it with "
                      "fxprune.hf.save_pretrained and load it with fxprune.hf.from_pretrained.",
                      stacklevel=user_stacklevel())
    return changes


def _buildable(cls: type, cfg: Any, changes: Dict[str, Any]) -> Any:
    """A copy of ``cfg`` with ``changes`` that the stock class still builds from; head fields a class
    rejects (BERT: ``hidden_size`` must be a multiple of ``num_attention_heads``) are left out and the
    rest kept: the layers still say the truth, and ``fxprune.hf.save_pretrained`` records them."""
    heads = ("num_attention_heads", "num_key_value_heads", "head_dim")
    for attempt in (changes, {k: v for k, v in changes.items() if k not in heads}):
        if not attempt:
            return None
        new = copy.deepcopy(cfg)
        try:
            for f, v in attempt.items():  # a read-only property (FalconConfig.head_dim) raises here
                setattr(new, f, v)
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(copy.deepcopy(new))
        except Exception as e:  # the class validates its config in __init__
            log.info("config fields %s rejected by %s: %s", sorted(attempt), cls.__name__, e)
            continue
        if attempt is not changes:
            dropped = {k: v for k, v in changes.items() if k not in attempt}
            changes.clear()
            changes.update(attempt)
            log.info("config of %s keeps %s: the class cannot build from the pruned values %s", cls.__name__,
                     sorted(dropped), dropped)
        return new
    return None


def scalar_attrs(m: nn.Module) -> Dict[str, Any]:
    """The public int and float attributes of one module (head counts, ``split_size``, an attention's
    ``scaling``, Gemma's embedding scale): what a stock build derives from the config besides shapes."""
    return {k: v for k, v in vars(m).items() if type(v) in (int, float) and not k.startswith("_")}


def stock_build(cls: type, cfg: Any, device: str = "meta") -> nn.Module:
    """``cls`` built from a copy of ``cfg`` on ``device``: on ``meta`` (the default) it takes no memory and
    ~0.5 s for a 7B shape, to compare shapes; on ``cpu`` it is the skeleton weights are loaded into."""
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' init-time notices about the config
        return cls(copy.deepcopy(cfg))


def config_mismatches(model: nn.Module) -> List[str]:
    """``"name: shape from config vs pruned shape"`` for every tensor of ``model`` that the stock class built
    from its config would shape differently (empty when ``save_pretrained`` round-trips)."""
    try:
        stock = stock_build(type(model), model.config)
    except Exception as e:  # a class that will not build from its own config on meta
        return [f"(the stock class did not build: {type(e).__name__}: {e})"]
    shapes = {k: v.shape for k, v in stock.state_dict().items()}
    out = [f"{k} {list(shapes[k])} instead of {list(v.shape)}" for k, v in model.state_dict().items()
           if k in shapes and shapes[k] != v.shape]
    ref = dict(stock.named_modules())
    for name, m in model.named_modules():
        if name in ref:
            want = scalar_attrs(ref[name])
            out += [f"{name}.{k} = {want[k]!r} instead of {v!r}" for k, v in scalar_attrs(m).items()
                    if k in want and want[k] != v]
    return out
