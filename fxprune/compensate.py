"""Bias compensation (FLAP's baseline compensation): removed input channels leave their mean behind.

When a plan removes input channels ``R`` of a linear layer ``y = W x + b``, the pruned layer computes
``W[:, K] x_K + b``. Compensation adds ``W[:, R] @ mean(x_R)`` to the bias (creating the bias where the layer
had none), so the pruned model equals the original run with the removed inputs of that layer *replaced by
their mean* instead of zeroed. ``fxprune.prune(..., compensate=means)`` applies it and
``fxprune.verify(..., compensate=means)`` checks against that reference; ``means`` is
``{layer qualified name: mean input vector}`` in the coordinates of the model given to ``prune``
(:meth:`fxprune.importance.ActivationImportance.input_means`).

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2, bias=False))
    >>> x = torch.randn(16, 4)
    >>> means = fxprune.calibrate(m, [x], "activation", progress=False).input_means()
    >>> plan = fxprune.PrunePlan({"0.weight:0": [0, 1, 2]})
    >>> small = fxprune.prune(m, plan, x, compensate=means)
    >>> small.get_submodule("2").bias is not None
    True
    >>> fxprune.verify(m, small, plan, x, compensate=means).max_abs_diff < 1e-5
    True
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .errors import PlanError, RewriteError, user_stacklevel

__all__ = ["Compensation", "plan_compensation", "apply_compensation", "input_fills", "add_saved_biases"]

log = logging.getLogger(__name__)

_LINEAR_FNS = (F.linear, torch.ops.aten.linear.default)


@dataclass
class Compensation:
    """One compensated layer: its removed input channels, their means, the bias change ``W[:, R] @ m_R``."""

    name: str
    removed: torch.Tensor
    mean: torch.Tensor
    delta: torch.Tensor


def _param_key(graph: Any, name: str) -> tuple:
    full = f"{name}.weight" if name else "weight"
    return ("param", graph.ctx.canonical.get(full, full))


def _in_dim(mod: nn.Module) -> int | None:
    """The input-feature dim of a layer's weight (None for a module that is not a linear or conv layer)."""
    if isinstance(mod, nn.Linear):
        return 1
    if isinstance(mod, nn.modules.conv._ConvNd):
        return 0 if mod.transposed else 1
    return 0 if type(mod).__name__ == "Conv1D" else None  # Hugging Face GPT-2's transposed linear


def plan_compensation(graph: Any, exp: Any, model: nn.Module, means: Mapping[str, torch.Tensor]
                      ) -> List[Compensation]:
    """The compensations a plan calls for: every ``nn.Linear`` of ``model`` whose input features the expanded
    plan ``exp`` removes and that ``means`` has an entry for. Layers that lose inputs but have no entry, and
    entries for layers fxprune cannot compensate (not ``nn.Linear``), are named once in a warning."""
    out: List[Compensation] = []
    missing: List[str] = []
    unsupported: List[str] = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        in_dim = _in_dim(mod)
        if not isinstance(w, torch.Tensor) or in_dim is None:
            continue
        removed = graph.removed(exp.mask, _param_key(graph, name), in_dim)
        if not len(removed):
            continue
        if name not in means:
            missing.append(name)
            continue
        if not isinstance(mod, nn.Linear) or type(mod).forward is not nn.Linear.forward:
            unsupported.append(f"{name} ({type(mod).__name__})")
            continue
        mean = torch.as_tensor(means[name]).detach().reshape(-1)
        if mean.numel() != w.shape[1]:
            raise PlanError(f"compensate: the mean input of {name!r} has {mean.numel()} entries but the "
                            f"layer has {w.shape[1]} input features: the means were recorded on another model "
                            f"(or before an earlier pruning step)")
        idx = torch.from_numpy(np.asarray(removed, dtype=np.int64))
        m = mean.to(torch.float64)[idx]
        delta = w.detach().to(torch.float64).index_select(1, idx.to(w.device)).cpu() @ m
        gone = graph.removed(exp.mask, _param_key(graph, name), 0)
        if len(gone):  # output features the plan removes too: the pruned bias has only the kept ones
            keep = np.ones(w.shape[0], bool)
            keep[gone] = False
            delta = delta[torch.from_numpy(np.nonzero(keep)[0])]
        out.append(Compensation(name, idx, m, delta))
    for what, names in (("have no entry in `compensate` and are not compensated", missing),
                        ("are not nn.Linear layers and are not compensated (nn.Linear only)", unsupported)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            warnings.warn(f"fxprune: bias compensation: {len(names)} layer(s) whose inputs the plan removes "
                          f"{what}: {shown}", stacklevel=user_stacklevel())
    return out


def _linear_nodes(gm: torch.fx.GraphModule, name: str) -> List[torch.fx.Node]:
    """The functional linear calls of ``gm`` whose weight is the parameter ``<name>.weight``."""
    target = f"{name}.weight" if name else "weight"
    return [n for n in gm.graph.nodes
            if n.op == "call_function" and n.target in _LINEAR_FNS and len(n.args) > 1
            and isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "get_attr"
            and n.args[1].target == target]


def input_fills(graph: Any, comps: List[Compensation]) -> Dict[str, tuple]:
    """``{node name: (removed indices, means, weight or None)}``: the nodes of the analysed graph where each
    compensated layer reads its input (a ``call_module`` of the layer or a functional linear of its weight,
    which then reads the unmasked ``weight``)."""
    fills: Dict[str, tuple] = {}
    for c in comps:
        nodes = [n for n in graph.gm.graph.nodes if n.op == "call_module" and n.target == c.name]
        nodes += _linear_nodes(graph.gm, c.name)
        if not nodes:
            raise PlanError(f"compensate: layer {c.name!r} is not called in the analysed graph")
        for n in nodes:  # a weight read by get_attr is masked like a value: the reference reads it whole
            weight = graph.gm.get_parameter(n.args[1].target) if n.op == "call_function" else None
            fills[n.name] = (c.removed, c.mean, weight)
    return fills


def _new_bias(old: torch.Tensor | None, delta: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    d = delta.to(device=like.device, dtype=like.dtype)
    if old is None:
        return nn.Parameter(d, requires_grad=like.requires_grad)
    return nn.Parameter(old.detach() + d, requires_grad=old.requires_grad)


def apply_compensation(original: nn.Module, small: nn.Module, comps: List[Compensation]) -> None:
    """Add each compensation to its layer's bias in the pruned model ``small`` (a GraphModule or the user's
    class); a layer without a bias gets one. A Hugging Face config that has a switch for those biases
    (``mlp_bias``, ``attention_bias``) is switched on, with zero biases for the other layers it governs."""
    added: List[str] = []
    for c in comps:
        nodes = _linear_nodes(small, c.name) if isinstance(small, torch.fx.GraphModule) else []
        for node in nodes:  # an exported graph: the bias is an argument of the linear call
            _graph_bias(small, node, c)
        if nodes:
            continue
        try:
            mod = small.get_submodule(c.name)
        except AttributeError:
            mod = None
        if not isinstance(mod, nn.Linear):
            raise RewriteError(f"compensate: the pruned model has no linear layer {c.name!r} for the bias")
        if mod.bias is None:
            added.append(c.name)
        mod.bias = _new_bias(mod.bias, c.delta, mod.weight)
    if isinstance(small, torch.fx.GraphModule):
        small.recompile()
    if added:
        _declare_biases(original, small, added)


def _graph_bias(gm: torch.fx.GraphModule, node: torch.fx.Node, c: Compensation) -> None:
    """The bias of a functional linear call: the existing bias parameter changed, or a new one registered."""
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    weight = gm.get_parameter(node.args[1].target)
    owner_name, _, _ = node.args[1].target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if isinstance(b, torch.fx.Node) and b.op == "get_attr":
        bname = b.target.rpartition(".")
        bowner = gm.get_submodule(bname[0]) if bname[0] else gm
        setattr(bowner, bname[2], _new_bias(getattr(bowner, bname[2]), c.delta, weight))
        return
    if b is not None:
        raise RewriteError(f"compensate: the bias of {c.name!r} is computed in the graph, not a parameter",
                           node)
    attr = "bias"
    while hasattr(owner, attr):
        attr += "_"
    owner.register_parameter(attr, _new_bias(None, c.delta, weight))
    with gm.graph.inserting_before(node):
        get = gm.graph.get_attr(f"{owner_name}.{attr}" if owner_name else attr)
    get.meta["val"] = torch.empty(tuple(c.delta.shape), dtype=weight.dtype, device="meta")
    node.args = (node.args[0], node.args[1], get) + tuple(node.args[3:])
    node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}


def _declare_biases(original: nn.Module, small: nn.Module, added: List[str]) -> None:
    """Let ``from_pretrained`` of the stock class load the biases compensation added: switch the config flag
    that creates them (``mlp_bias`` for ``*.mlp.*``, ``attention_bias`` for ``*.self_attn.*``), with zero
    biases for every other layer that flag gives one; warn where the class has no such flag."""
    cfg = getattr(small, "config", None)
    if cfg is None or not hasattr(small, "save_pretrained"):
        return
    unloadable = []
    for flag, part in (("mlp_bias", "mlp"), ("attention_bias", "self_attn")):
        mine = [n for n in added if part in n.split(".")]
        if not mine:
            continue
        if not hasattr(cfg, flag):
            unloadable += mine
            continue
        if not getattr(cfg, flag):
            if cfg is getattr(original, "config", None):
                cfg = small.config = copy.deepcopy(cfg)  # never the original's config
            setattr(cfg, flag, True)
            for name, mod in small.named_modules():
                if part in name.split(".")[:-1] and isinstance(mod, nn.Linear) and mod.bias is None:
                    mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                        device=mod.weight.device),
                                            requires_grad=mod.weight.requires_grad)
            log.info("compensate: config.%s set to True (zero biases for the other layers it governs)", flag)
    unloadable += [n for n in added if not any(p in n.split(".") for p in ("mlp", "self_attn"))]
    if unloadable:
        warnings.warn(f"fxprune: bias compensation added a bias to {len(unloadable)} layer(s) of "
                      f"{type(small).__name__} that its config cannot declare ({', '.join(unloadable[:3])}"
                      f"{', ...' if len(unloadable) > 3 else ''}): save_pretrained stores them, but the "
                      "stock class's from_pretrained drops them; keep the state_dict or use fxprune.save",
                      stacklevel=user_stacklevel())


def add_saved_biases(model: nn.Module, keys: List[str]) -> List[str]:
    """Give every ``nn.Linear`` of ``model`` without a bias one (zeros) where ``keys`` (a saved state dict's)
    hold ``<layer>.bias``: a model rebuilt by replaying a plan lacks the biases compensation created, and
    loading the saved weights fills them. Returns the layers changed.

    Example:
        >>> import torch, fxprune.compensate as c
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3, bias=False))
        >>> c.add_saved_biases(m, ["0.weight", "0.bias"]), m[0].bias.shape
        (['0'], torch.Size([3]))
    """
    done = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.bias is None and (f"{name}.bias" if name else "bias") in keys:
            w = mod.weight
            mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=w.dtype, device=w.device),
                                    requires_grad=w.requires_grad)
            done.append(name)
    return done
