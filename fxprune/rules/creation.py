"""Tensor creation: ``zeros``/``ones``/``full``/``empty``/``arange``/``rand*``, ``*_like`` and ``new_*``.

A fresh tensor's dims are constants of the graph, so they stay pinned; a size computed from another
tensor's pruned dim (``torch.zeros(B, C)`` with ``C = x.shape[1]``) is frozen to its original value, so the
pinned size still holds after pruning. ``*_like(x)`` has ``x``'s shape: every dim goes with ``x``'s
(the values are the same everywhere, or random). ``x.new_zeros(...)`` only reads ``x``'s dtype and device.
"""
from __future__ import annotations

import torch
import torch.fx
from torch.fx.node import map_arg

from ..registry import register
from ._util import arg, reads_pruned

_FRESH = ("zeros", "ones", "full", "empty", "arange", "linspace", "logspace", "eye", "rand", "randn",
          "randint", "randperm", "tensor", "as_tensor", "scalar_tensor")
_LIKE = ("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like")
_NEW = ("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")


def lower_like(ctx, node) -> None:
    ctx.couple_all(ctx.tensor(arg(node, 0, "input")), ctx.out())


def lower_new(ctx, node) -> None:
    ctx.touch(ctx.tensor(arg(node, 0, "input")))  # dtype and device only; the output's dims stay pinned


def lower_fresh(ctx, node) -> None:
    """Nothing to couple: the output's dims are pinned after the rule (constants of the graph)."""


def rewrite_sizes(rctx, node) -> None:
    """Freeze size arguments that read a pruned dim to their original values (the output is pinned)."""
    def freeze(a: torch.fx.Node):
        val = a.meta.get("val")
        if isinstance(val, (int, torch.SymInt)) and not isinstance(val, bool) and reads_pruned(a, rctx):
            return int(val)
        if isinstance(val, torch.Size) and reads_pruned(a, rctx):
            return tuple(val)
        return a

    node.args = map_arg(node.args, freeze)  # tensor arguments are left as they are
    node.kwargs = map_arg(node.kwargs, freeze)


def _fns(names):
    return tuple(f for n in names if callable(f := getattr(torch, n, None)))


register("call_function", _fns(_FRESH), "creation", lower_fresh, rewrite_sizes)
register("call_function", _fns(_LIKE), "creation like", lower_like)
register("call_method", _NEW, "creation new", lower_new, rewrite_sizes)
