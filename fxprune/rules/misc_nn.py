"""LocalResponseNorm, GLU, ``narrow`` and ``index_select``.

* ``LocalResponseNorm`` normalises each channel by its neighbours' squares: channels are prunable, the
  pruned model normalises over the kept channels only (a statistic that changes, like LayerNorm's; ``verify``
  recomputes it over the kept channels).
* ``glu(x, dim)`` = ``a * sigmoid(b)`` with ``a, b`` the halves of ``dim``: output ``j`` goes with inputs ``j`` and
  ``j + C/2`` (one class), so both halves always keep the same channels.
* ``narrow(dim, start, length)`` is a slice: the kept window maps index-wise, ``start``/``length`` are rewritten.
* ``index_select(dim, index)`` gathers along ``dim`` by values (pinned); every other dim goes through.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GLU(), torch.nn.Linear(4, 2))
    >>> [sorted(i) for _, i in fxprune.analyze(m, torch.randn(1, 3)).group_of("0.weight", 0).all_classes][:2]
    [[0, 4], [1, 5]]
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg, set_arg, couple_others


def lower_lrn(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or x.ndim < 2:
        return
    ctx.couple_all(x, out)
    ctx.mark_stat("LocalResponseNorm normalises by neighbouring channels")


def masked_lrn(vctx, node, args, kwargs) -> torch.Tensor:
    """LocalResponseNorm over the kept channels only, scattered back to the full shape."""
    x = args[0]
    kept = vctx.kept(vctx.tensor(arg(node, 0, "input")), 1)
    if node.op == "call_module":
        m = vctx.module(node)
        size, alpha, beta, k = m.size, m.alpha, m.beta, m.k
    else:
        size = args[1] if len(args) > 1 else kwargs["size"]
        alpha, beta, k = [args[i] if len(args) > i else kwargs.get(n, d)
                          for i, n, d in ((2, "alpha", 1e-4), (3, "beta", 0.75), (4, "k", 1.0))]
    if kept is None:
        return F.local_response_norm(x, size, alpha, beta, k)
    y = F.local_response_norm(x.index_select(1, kept), size, alpha, beta, k)
    return x.new_zeros(x.shape).index_copy(1, kept, y)


def lower_glu(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    dim = ctx.module().dim if node.op == "call_module" else arg(node, 1, "dim", -1)
    if x is None or out is None or not isinstance(dim, int):
        return
    dim %= x.ndim
    couple_others(ctx, x, out, dim)
    half = out.shape[dim]
    ctx.couple(x, dim, out, dim, (np.arange(2 * half, dtype=np.int64), np.arange(2 * half, dtype=np.int64) % half))


def lower_narrow(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    dim, start = arg(node, 1, "dim"), arg(node, 2, "start")
    if x is None or out is None or not isinstance(dim, int):
        return
    dim %= x.ndim
    couple_others(ctx, x, out, dim)
    if isinstance(start, int) and isinstance(arg(node, 3, "length"), int):
        start %= max(x.shape[dim], 1)
        sel = np.arange(start, start + out.shape[dim], dtype=np.int64)
        ctx.couple(x, dim, out, dim, (sel, np.arange(len(sel), dtype=np.int64)))


def rewrite_narrow(rctx, node) -> None:
    x, out = rctx.tensor(arg(node, 0, "input")), rctx.tensor(node)
    dim, start = arg(node, 1, "dim"), arg(node, 2, "start")
    if x is None or out is None or not isinstance(dim, int) or not isinstance(start, int):
        return
    removed = rctx.removed(x, dim % x.ndim)
    if len(removed):
        s = start % max(x.shape[dim], 1)
        set_arg(node, 2, "start", s - int(np.sum(removed < s)))
        set_arg(node, 3, "length", rctx.new_shape(out)[dim % x.ndim])


def lower_index_select(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    dim = arg(node, 1, "dim")
    if x is None or out is None or not isinstance(dim, int):
        return
    dim %= x.ndim
    couple_others(ctx, x, out, dim)
    ctx.pin(x, dim, f"index_select gathers dim {dim} by index values ({node.name})")


register("call_module", (nn.LocalResponseNorm,), "local response norm", lower_lrn, masked_eval=masked_lrn)
register("call_function", (F.local_response_norm,), "local response norm", lower_lrn, masked_eval=masked_lrn)
register("call_module", (nn.GLU,), "glu", lower_glu)
register("call_function", (F.glu,), "glu", lower_glu)
register("call_function", (torch.narrow,), "narrow", lower_narrow, rewrite_narrow)
register("call_method", ("narrow",), "narrow", lower_narrow, rewrite_narrow)
register("call_function", (torch.index_select,), "index_select", lower_index_select)
register("call_method", ("index_select",), "index_select", lower_index_select)
