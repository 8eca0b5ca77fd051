"""Save and load a pruned Hugging Face model whose ``config.json`` cannot describe it.

A stock class built from its config gives every layer the same widths, so a model pruned globally (a
different MLP width per layer), or one whose head size the config derives (GPT-2 and BERT with heads removed),
does not load with ``from_pretrained``. :func:`save_pretrained` writes what ``model.save_pretrained`` writes
and ``fxprune.json`` next to it: the class, the shape of every tensor the stock class would shape
differently, and the int and float attributes of modules that differ from a stock build (head counts, ``split_size``,
an attention's ``scaling``, a layer's own config fields). Non-persistent buffers, which a stock build
recomputes from the config (a RoPE ``inv_freq`` with head dims removed), go to ``fxprune_buffers.safetensors``. :func:`from_pretrained` builds the stock class from the config,
reshapes those tensors, sets those attributes and loads the weights, so the result is the model's own class
with the same tensors, bit for bit.

Example:
    >>> import tempfile, torch, fxprune, transformers
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
    >>> m = transformers.LlamaForCausalLM(cfg).eval()
    >>> small = fxprune.prune(m, {"model.layers.0.mlp.gate_proj.weight:0": list(range(16))},
    ...                       fxprune.Inputs(torch.randint(0, 50, (1, 4)), use_cache=False))
    >>> with tempfile.TemporaryDirectory() as d:                       # layer 0: 48 wide, layer 1: 64
    ...     info = fxprune.hf.save_pretrained(small, d)
    ...     back = fxprune.hf.from_pretrained(d)
    >>> sorted(info["shapes"])[0], type(back).__name__, back.model.layers[0].mlp.down_proj.in_features
    ('model.layers.0.mlp.down_proj.weight', 'LlamaForCausalLM', 48)
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import os
from typing import Any, Dict

import torch
import torch.nn as nn

from ..errors import PlanError
from .config import scalar_attrs, stock_build

__all__ = ["save_pretrained", "from_pretrained"]

log = logging.getLogger(__name__)

_META = "fxprune.json"
_BUFFERS = "fxprune_buffers.safetensors"


def _config_fields(m: nn.Module, shared: Any) -> Dict[str, Any]:
    """Fields of a module's own config copy that differ from the model's config (Phi-3 attention)."""
    cfg = getattr(m, "config", None)
    if cfg is None or cfg is shared or not hasattr(cfg, "to_dict"):
        return {}
    base = shared.to_dict()
    return {k: v for k, v in cfg.to_dict().items() if base.get(k) != v and type(v) in (int, float, bool)}


def describe(model: nn.Module) -> tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """What ``fxprune.json`` records of ``model`` (shapes, attributes, module configs, buffer names) and its
    non-persistent buffers. Reads shapes only: ``model`` may live on the ``meta`` device (its buffers are then
    meta tensors, which a caller replaces; see :func:`fxprune.hf.prune_checkpoint`)."""
    stock = stock_build(type(model), model.config)
    stock_sd = stock.state_dict()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()
              if k not in stock_sd or stock_sd[k].shape != v.shape}
    stock_mods = dict(stock.named_modules())
    attrs, configs, buffers = {}, {}, {}
    for name, m in model.named_modules():
        ref = stock_mods.get(name)
        if ref is None:
            continue
        want = scalar_attrs(ref)
        diff = {k: v for k, v in scalar_attrs(m).items() if want.get(k) != v}
        if diff:
            attrs[name] = diff
        own = _config_fields(m, model.config)
        if own:
            configs[name] = own
        # every non-persistent buffer: a stock build recomputes them from the config (RoPE inv_freq,
        # Gemma's embedding scale), and with head dims or the hidden size pruned that value is wrong
        for bname in m._non_persistent_buffers_set:
            b = m._buffers.get(bname)
            if isinstance(b, torch.Tensor):
                buffers[f"{name}.{bname}" if name else bname] = b.detach().contiguous().clone()
    info = {"format": 1, "class": f"{type(model).__module__}.{type(model).__qualname__}", "shapes": shapes,
            "attributes": attrs, "module_configs": configs, "buffers": sorted(buffers)}
    return info, buffers


def write_description(directory: str, info: Dict[str, Any], buffers: Dict[str, torch.Tensor]) -> None:
    """Write ``fxprune.json`` (and the buffers file) into ``directory``."""
    from safetensors.torch import save_file

    with open(os.path.join(directory, _META), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    if buffers:
        save_file(buffers, os.path.join(directory, _BUFFERS))


def save_pretrained(model: nn.Module, directory: str, **kwargs: Any) -> Dict[str, Any]:
    """``model.save_pretrained(directory, **kwargs)`` plus ``fxprune.json``: what the config cannot say.
    Returns the recorded description."""
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise PlanError(f"fxprune.hf.save_pretrained needs a transformers PreTrainedModel, got "
                        f"{type(model).__name__}")
    model.save_pretrained(directory, **kwargs)
    _native_names(model, directory)
    info, buffers = describe(model)
    write_description(directory, info, buffers)
    log.info("fxprune.hf.save_pretrained: %d reshaped tensors, %d modules with own attributes",
             len(info["shapes"]), len(info["attributes"]))
    return info


def _weight_files(directory: str) -> list:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def _native_names(model: nn.Module, directory: str) -> None:
    """Rewrite the weights under the model's own state-dict names when ``save_pretrained`` renamed them
    (transformers 5 writes ViT under its legacy checkpoint names and maps them back only in its own loader)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    saved = set()
    for name in _weight_files(directory):
        with safe_open(os.path.join(directory, name), "pt") as f:
            saved.update(f.keys())
    unique: Dict[str, torch.Tensor] = {}
    seen = set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # a tied weight is stored once; load ties it again
            continue
        seen.add(v.data_ptr())
        unique[k] = v
    if set(unique) <= saved:
        return
    for name in _weight_files(directory) + ["model.safetensors.index.json"]:
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    save_file({k: v.detach().contiguous() for k, v in unique.items()}, os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})
    log.info("fxprune.hf.save_pretrained: weights written under the model's own names (%d tensors)", len(unique))


def _resolve(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, leaf = key.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def _load_weights(directory: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd: Dict[str, torch.Tensor] = {}
    for name in _weight_files(directory):
        sd.update(load_file(os.path.join(directory, name)))
    return sd


def from_pretrained(directory: str) -> nn.Module:
    """Load a model written by :func:`save_pretrained` as its own class, in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    meta_path = os.path.join(directory, _META)
    if not os.path.exists(meta_path):
        raise PlanError(f"{directory} has no {_META}: it was not written by fxprune.hf.save_pretrained "
                        "(a model whose config describes it loads with transformers' from_pretrained)")
    with open(meta_path) as f:
        info = json.load(f)
    mod_name, _, qual = info["class"].rpartition(".")
    cls = getattr(importlib.import_module(mod_name), qual)
    cfg = AutoConfig.from_pretrained(directory)
    model = stock_build(cls, cfg, device="cpu")
    for key, shape in info["shapes"].items():
        owner, leaf = _resolve(model, key)
        old = getattr(owner, leaf)
        new = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner.register_buffer(leaf, new, persistent=leaf not in owner._non_persistent_buffers_set)
    for name, values in info["attributes"].items():
        m = model.get_submodule(name)
        for k, v in values.items():
            setattr(m, k, v)
    for name, fields in info["module_configs"].items():
        m = model.get_submodule(name)
        m.config = copy.copy(model.config)
        for k, v in fields.items():
            setattr(m.config, k, v)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()  # a reshaped embedding is a new Parameter: tie lm_head to it again
    sd = _load_weights(directory)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {k for k in missing if getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise PlanError(f"fxprune.hf.from_pretrained: the checkpoint in {directory} does not match "
                        f"{qual}: missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if info["buffers"]:
        for key, t in load_file(os.path.join(directory, _BUFFERS)).items():
            owner, leaf = _resolve(model, key)
            owner.register_buffer(leaf, t, persistent=False)
    return model.eval()
