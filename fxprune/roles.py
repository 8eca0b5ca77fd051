"""Layer roles: what a parameter is to the op that uses it (a conv weight, a norm bias, ...).

Criteria select layers by role (:class:`LayerRole`), read from the graph for a ``GraphModule`` and from the
owning module's class otherwise; :mod:`fxprune.importance` re-exports both names.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerRole", "layer_roles"]


@dataclass(frozen=True)
class LayerRole:
    """What a parameter is to the op that uses it: ``kind`` is a module class standing for the op (a functional
    ``conv2d`` is ``nn.modules.conv._ConvNd``), ``attr`` the argument it fills (``weight``, ``bias``, ...).

    Criteria select layers by role, not by the type of the module that owns the parameter: in a traced
    GraphModule a ``Conv2d`` subclass with its own ``forward`` is a plain ``Module`` whose weight feeds
    ``torch.conv2d``.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> class Same(torch.nn.Conv2d):
        ...     def forward(self, x):
        ...         return torch.nn.functional.conv2d(x, self.weight, self.bias, padding=1)
        >>> gm = fxprune.trace(torch.nn.Sequential(Same(1, 2, 3)), torch.randn(1, 1, 4, 4))
        >>> imp.layer_roles(gm)["0.weight"].kind.__name__
        '_ConvNd'
    """

    kind: type
    attr: str
    transposed: bool = False


_CONV_FNS = (torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d)
_CONVT_FNS = (torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d, F.conv_transpose1d,
              F.conv_transpose2d, F.conv_transpose3d)
# function -> (role class, argument names in order: a parameter's role is the argument it fills)
_FN_ROLES: dict[Any, tuple[type, tuple[str, ...]]] = {
    **{f: (nn.modules.conv._ConvNd, ("input", "weight", "bias")) for f in _CONV_FNS},
    **{f: (nn.modules.conv._ConvTransposeNd, ("input", "weight", "bias")) for f in _CONVT_FNS},
    F.linear: (nn.Linear, ("input", "weight", "bias")),
    torch._C._nn.linear: (nn.Linear, ("input", "weight", "bias")),
    F.batch_norm: (nn.modules.batchnorm._BatchNorm, ("input", "running_mean", "running_var", "weight", "bias")),
    F.layer_norm: (nn.LayerNorm, ("input", "normalized_shape", "weight", "bias")),
    F.group_norm: (nn.GroupNorm, ("input", "num_groups", "weight", "bias")),
}
_ROLE_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[int, dict[str, LayerRole]]]" = weakref.WeakKeyDictionary()


def layer_roles(model: nn.Module) -> dict[str, LayerRole]:
    """The role of every parameter/buffer of ``model`` that a module or a functional conv/linear/norm uses.

    For a ``torch.fx.GraphModule`` the roles come from the graph: a leaf module's own class, or the functional
    op a ``get_attr`` feeds (followed through value-preserving ops such as the ``reshape`` of a standardised
    weight). For any other model they come from the owning module's class. Parameters used by nothing
    known have no entry.
    """
    graph = getattr(model, "graph", None)
    stamp = id(graph) ^ (len(graph.nodes) if isinstance(graph, torch.fx.Graph) else 0)
    hit = _ROLE_CACHE.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    roles: dict[str, LayerRole] = {}
    for prefix, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, torch.fx.GraphModule) or type(mod) is nn.Module:
            continue  # a traced container: its parameters' roles come from the graph
        for attr, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            roles[f"{prefix}.{attr}" if prefix else attr] = LayerRole(
                type(mod), attr, bool(getattr(mod, "transposed", False)))
    if isinstance(graph, torch.fx.Graph):
        for node in graph.nodes:
            if node.op == "get_attr" and isinstance(node.target, str) and node.target not in roles:
                role = _role_from_uses(node)
                if role is not None:
                    roles[node.target] = role
    _ROLE_CACHE[model] = (stamp, roles)
    return roles


def _role_from_uses(node: torch.fx.Node, depth: int = 6) -> LayerRole | None:
    """The role of a parameter read by ``node``: the known op it reaches as an argument, through at most
    ``depth`` ops that take it as their first input (reshape, standardisation, a scale)."""
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for cur in frontier:
            for user in cur.users:
                spec = _FN_ROLES.get(user.target) if user.op == "call_function" else None
                if spec is not None:
                    names = spec[1]
                    pos = next((i for i, a in enumerate(user.args) if a is cur), None)
                    attr = names[pos] if pos is not None and pos < len(names) else next(
                        (k for k, a in user.kwargs.items() if a is cur), None)
                    if attr is not None and attr != "input":
                        return LayerRole(spec[0], attr, user.target in _CONVT_FNS)
                    if attr == "input" and cur is not node and spec[0] is nn.modules.batchnorm._BatchNorm:
                        nxt.append(user)  # weight standardisation (timm StdConv2d) normalises the weight itself
                    continue
                if user.op in ("call_function", "call_method") and user.args and user.args[0] is cur:
                    nxt.append(user)
        frontier = nxt
    return None
