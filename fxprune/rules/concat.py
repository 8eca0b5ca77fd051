"""Concatenation and splitting: cat/stack, split/chunk/unbind, and ``getitem`` (tuple items and slicing).

Offsets come from the node's own arguments and its output shapes; a ``getitem`` consumer names its chunk,
so consumer order never matters. After pruning, split sizes and slice bounds are rewritten (a ``chunk``
whose parts become unequal turns into a ``split`` with explicit sizes).
"""
from __future__ import annotations

import collections
import operator
from typing import Optional

import numpy as np
import torch

from .. import index_map
from ..registry import register
from ._util import arg


def _couple_part(ctx, part, whole, dim: int, off: int) -> None:
    """``part`` is ``whole[..., off:off + n, ...]`` along ``dim``; every other dim is shared."""
    for d in range(whole.ndim):
        pairs = index_map.offset(part.shape[d], off) if d == dim else None
        ctx.couple(part, d, whole, d, pairs)


def lower_cat(ctx, node) -> None:
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    out = ctx.out()
    refs = [ctx.tensor(t) for t in tensors]
    if out is None or any(r is None for r in refs) or not isinstance(dim, int):
        return
    dim %= out.ndim
    off = 0
    for r in refs:
        if r.ndim != out.ndim:
            continue  # legacy empty tensors
        _couple_part(ctx, r, out, dim, off)
        off += r.shape[dim]


def lower_stack(ctx, node) -> None:
    tensors = arg(node, 0, "tensors")
    out = ctx.out()
    dim = arg(node, 1, "dim", 0) % out.ndim
    for t in tensors:
        r = ctx.tensor(t)
        if r is not None:
            for d in range(r.ndim):
                ctx.couple(r, d, out, d if d < dim else d + 1)


def lower_split(ctx, node) -> None:
    x = ctx.tensor(arg(node, 0, "input"))
    name = node.target if isinstance(node.target, str) else node.target.__name__
    dim = arg(node, 2, "dim", 0) if name != "unbind" else arg(node, 1, "dim", 0)
    if not isinstance(dim, int):
        return
    dim %= x.ndim
    off = 0
    for _, r in ctx.out_elems():
        if name == "unbind":
            for d in range(r.ndim):
                ctx.couple(x, d if d < dim else d + 1, r, d)
            continue
        _couple_part(ctx, r, x, dim, off)
        off += r.shape[dim]


def rewrite_split(rctx, node) -> None:
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "unbind":
        return
    x = rctx.tensor(arg(node, 0, "input"))
    dim = arg(node, 2, "dim", 0) % x.ndim
    elems = rctx.out_elems(node)
    old = [r.shape[dim] for r in elems]
    new = [rctx.new_shape(r)[dim] for r in elems]
    if old == new:
        return
    if name in ("chunk", "tensor_split"):
        node.target = "split" if node.op == "call_method" else torch.split
    sizes_kw = ("chunks", "split_size_or_sections", "split_size", "indices", "sections",
                "tensor_indices_or_sections")
    kwargs = {k: v for k, v in node.kwargs.items() if k not in sizes_kw}
    kwargs.setdefault("dim", dim)
    node.args, node.kwargs = (node.args[0], new), kwargs


def lower_getitem(ctx, node) -> None:
    src, idx = node.args
    val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    if isinstance(val, (tuple, list)):
        if not isinstance(idx, int):
            return
        idx %= len(val)  # ``chunks[-1]`` names the same element as ``chunks[n - 1]``
        for path, r in ctx.out_elems():
            e = ctx.elem(src, (idx,) + path)
            if e is not None:
                ctx.couple_all(e, r)
        return
    x, out = ctx.tensor(src), ctx.out()
    if x is None or out is None:
        return
    plan = _index_plan(idx, x.shape)
    if plan is None:
        return
    for in_d, out_d, sel in plan:
        if in_d is None or out_d is None:
            continue
        ctx.couple(x, in_d, out, out_d, (sel, np.arange(len(sel), dtype=np.int64)))


def _index_plan(idx, shape):
    """[(in_dim, out_dim, selected input indices)] for basic indexing, None if not understood."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice)) or _gather_index(i) is not None)
           for i in items):
        return None
    n_adv = sum(1 for i in items if isinstance(i, torch.fx.Node))
    if n_adv > 1 or (n_adv and any(isinstance(i, int) for i in items)):
        return None  # several advanced indices (or ints beside one) may move dims to the front
    n_used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (len(shape) - n_used) + items[k + 1:]
    items += [slice(None)] * (len(shape) - sum(1 for i in items if i is not None))
    plan, d_in, d_out = [], 0, 0
    for i in items:
        if i is None:
            d_out += 1
        elif isinstance(i, int):
            d_in += 1
        elif isinstance(i, torch.fx.Node):  # x[:, idx]: the gathered dim is replaced by idx's dims (pinned)
            d_in += 1
            d_out += _gather_index(i)
        else:  # a bound computed in the graph (a crop to ``x.shape``): that dim stays pinned, not the others
            literal = all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step))
            if literal and i.step in (None, 1):
                plan.append((d_in, d_out, np.arange(shape[d_in], dtype=np.int64)[i]))
            d_in += 1
            d_out += 1
    return plan


def _gather_index(i) -> Optional[int]:
    """The rank of an integer index tensor (``x[:, idx]``), None for anything else."""
    val = i.meta.get("val") if isinstance(i, torch.fx.Node) else None
    if isinstance(val, torch.Tensor) and not val.is_floating_point() and val.dtype != torch.bool:
        return val.ndim
    return None


def rewrite_getitem(rctx, node) -> None:
    src, idx = node.args
    x = rctx.tensor(src)
    if x is None:
        return
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if Ellipsis in items:
        n_used = sum(1 for i in items if i is not None and i is not Ellipsis)
        k = items.index(Ellipsis)
        lead, tail = items[:k], items[k + 1:]
        full = lead + [slice(None)] * (x.ndim - n_used) + tail
    else:
        full = items
    d_in, changed, new_items = 0, False, []
    for i in full:
        if isinstance(i, slice) and d_in < x.ndim:
            removed = rctx.removed(x, d_in)
            if len(removed) and (i.start is not None or i.stop is not None):
                n = x.shape[d_in]
                start, stop, _ = i.indices(n)
                ns = None if i.start is None else start - int(np.sum(removed < start))
                ne = None if i.stop is None else stop - int(np.sum(removed < stop))
                i = slice(ns, ne, i.step)
                changed = True
        if i is not None:
            d_in += 1
        new_items.append(i)
    if changed:
        node.args = (src, tuple(new_items) if isinstance(idx, tuple) or len(new_items) > 1 else new_items[0])


def lower_container(ctx, node) -> None:
    """``OrderedDict(...)`` before the output (see the FX frontend): its tensors are model outputs."""
    for a in node.args[0].values():
        ref = ctx.tensor(a)
        if ref is not None:
            for d in range(ref.ndim):
                ctx.pin(ref, d, "model output")


register("call_function", (torch.cat, torch.concat, torch.concatenate), "cat", lower_cat)
register("call_function", (collections.OrderedDict,), "container", lower_container)
register("call_function", (torch.stack,), "stack", lower_stack)
register("call_function", (torch.split, torch.chunk, torch.unbind, torch.tensor_split), "split", lower_split,
         rewrite_split)
register("call_method", ("split", "chunk", "unbind", "tensor_split"), "split", lower_split, rewrite_split)
register("call_function", (operator.getitem,), "getitem", lower_getitem, rewrite_getitem)
