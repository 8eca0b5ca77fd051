"""Shape ops: view/reshape/flatten/unflatten/squeeze/unsqueeze, permute/transpose, expand, repeat.

A reshape is cut into runs of dims with equal products. A 1↔1 run is the identity; a run that merges or
splits dims is a grid constraint (:mod:`fxprune.grid`): the merged dim keeps a sub-grid of its factors,
so whole heads, head dims, or both can go.
Constant sizes in ``view``/``reshape``/``expand``/``unflatten`` are rewritten after pruning.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.fx
import torch.nn as nn

from ..context import TRef
from ..registry import register
from ._util import arg, fixed_size, reads_pruned, set_arg


def _runs(a: Tuple[int, ...], b: Tuple[int, ...]) -> List[Tuple[List[int], List[int]]]:
    """Pair runs of non-1 dims of ``a`` and ``b`` with equal products."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    runs, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ra, rb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                ra.append(ia[i]); pa *= a[ia[i]]; i += 1  # noqa: E702
            elif pb < pa and j < len(ib):
                rb.append(ib[j]); pb *= b[ib[j]]; j += 1  # noqa: E702
            else:
                return runs
        runs.append((ra, rb))
    return runs


def lower_reshape(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None:
        return
    for ra, rb in _runs(x.shape, out.shape):
        if len(ra) == 1 and len(rb) == 1:
            ctx.couple(x, ra[0], out, rb[0])
        elif len(rb) == 1:  # merge: the output dim is the grid of the input dims
            ctx.grid(out, rb[0], [(x, d) for d in ra])
        else:  # split (or a run that regroups: its merged size is both grids' product)
            if len(ra) > 1:
                mid = TRef(("value", node.name, ("run", ra[0])), (math.prod(x.shape[d] for d in ra),))
                ctx.grid(mid, 0, [(x, d) for d in ra])
                x_ref, xd = mid, 0
            else:
                x_ref, xd = x, ra[0]
            ctx.grid(x_ref, xd, [(out, d) for d in rb])


def _rewrite_sizes(sizes, old: Tuple[int, ...], new: Tuple[int, ...], rctx):
    if isinstance(sizes, torch.fx.Node):  # the whole shape computed in the graph
        return tuple(new) if any(o != n for o, n in zip(old, new)) or reads_pruned(sizes, rctx) else sizes
    out = [fixed_size(s, o, n, rctx) for s, o, n in zip(sizes, old, new)]
    return type(sizes)(out) if isinstance(sizes, (list, tuple)) else out


def rewrite_view(rctx, node) -> None:
    """Replace constant sizes of ``view``/``reshape``/``expand`` by the pruned ones."""
    out = rctx.tensor(node)
    old, new = out.shape, rctx.new_shape(out)
    if node.op == "call_function":  # torch.reshape(x, shape)
        set_arg(node, 1, "shape", _rewrite_sizes(arg(node, 1, "shape"), old, new, rctx))
        return
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.fx.Node)):
        node.args = (node.args[0], _rewrite_sizes(rest[0], old, new, rctx))
    elif rest:
        node.args = (node.args[0],) + tuple(_rewrite_sizes(list(rest), old, new, rctx))
    elif "size" in node.kwargs or "shape" in node.kwargs:
        k = "size" if "size" in node.kwargs else "shape"
        node.kwargs = {**node.kwargs, k: _rewrite_sizes(node.kwargs[k], old, new, rctx)}


def rewrite_unflatten(rctx, node) -> None:
    x, out = rctx.tensor(arg(node, 0, "input")), rctx.tensor(node)
    old, new = out.shape, rctx.new_shape(out)
    if old == new:
        return
    if node.op == "call_module":
        m = rctx.module(node)
        d = m.dim % x.ndim
        m.unflattened_size = tuple(new[d:d + len(m.unflattened_size)])
        return
    d = arg(node, 1, "dim") % x.ndim
    sizes = arg(node, 2, "sizes")
    set_arg(node, 2, "sizes", _rewrite_sizes(sizes, old[d:d + len(sizes)], new[d:d + len(sizes)], rctx))


def rewrite_squeeze(rctx, node) -> None:
    """A bare ``squeeze()`` names the dims it squeezed in the original, so a dim that pruning brings to
    size 1 is not squeezed too (the pruned model would change its output's shape)."""
    if arg(node, 1, "dim") is not None or node.target in (torch.unsqueeze, "unsqueeze", "unsqueeze_"):
        return
    x = rctx.tensor(arg(node, 0, "input"))
    if x is None or not any(n == 1 and o != 1 for o, n in zip(x.shape, rctx.new_shape(x))):
        return
    dims = tuple(d for d, o in enumerate(x.shape) if o == 1)
    set_arg(node, 1, "dim", dims[0] if len(dims) == 1 else dims)


def lower_permute(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    n = x.ndim
    name = node.target if isinstance(node.target, str) else node.target.__name__
    perm = list(range(n))
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 2 or not isinstance(arg(node, 1, "dims"), (list, tuple)) \
            else arg(node, 1, "dims")
        perm = [d % n for d in dims]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = arg(node, 1, "dim0") % n, arg(node, 2, "dim1") % n
        perm[a], perm[b] = perm[b], perm[a]
    elif name in ("t", "mT") and n >= 2:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    elif name in ("movedim", "moveaxis"):
        src, dst = arg(node, 1, "source"), arg(node, 2, "destination")
        src, dst = ([src], [dst]) if isinstance(src, int) else (src, dst)
        rest = [d for d in range(n) if d not in [s % n for s in src]]
        perm = [None] * n
        for s, t in zip(src, dst):
            perm[t % n] = s % n
        it = iter(rest)
        perm = [p if p is not None else next(it) for p in perm]
    for od, idim in enumerate(perm):
        ctx.couple(out, od, x, idim)


def lower_expand(ctx, node) -> None:
    """Dims kept couple index-wise. A size-1 dim broadcast to ``n`` is free when the node's sizes are
    rewritten (``expand``): its copies can be removed (a GQA ``repeat_kv`` group)."""
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    off = out.ndim - x.ndim
    rewritten = node.target in ("expand", "expand_as")
    for d in range(out.ndim):
        xd = d - off
        if xd >= 0 and x.shape[xd] == out.shape[d] and x.shape[xd] != 1:
            ctx.couple(x, xd, out, d)
        elif rewritten and (xd < 0 or x.shape[xd] == 1) and out.shape[d] > 1:
            ctx.touch(out, d)
            if xd >= 0:
                ctx.touch(x, xd)
    other = ctx.tensor(arg(node, 1, "other"))
    if other is not None:  # expand_as reads only the other tensor's size
        ctx.touch(other)


def lower_reshape_as(ctx, node) -> None:
    """``x.reshape_as(other)`` / ``x.expand_as(other)``: the output takes ``other``'s (pruned) shape."""
    other = ctx.tensor(arg(node, 1, "other"))
    (lower_expand if node.target == "expand_as" else lower_reshape)(ctx, node)
    if other is not None:
        ctx.couple_all(other, ctx.out())


def lower_repeat_interleave(ctx, node) -> None:
    """``x.repeat_interleave(r, dim)``: index ``i * r + k`` of the output is the grid of ``x``'s index
    ``i`` and copy ``k`` (a GQA ``repeat_kv``: kv group ``i``, query head ``k`` of it)."""
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    r, dim = arg(node, 1, "repeats"), arg(node, 2, "dim")
    if isinstance(r, torch.fx.Node) and ctx.tensor(r) is None and isinstance(dim, int) and x is not None \
            and out is not None and x.shape[dim] and out.shape[dim] % x.shape[dim] == 0:
        r = out.shape[dim] // x.shape[dim]  # a count computed from sizes (GCViT: B // q.shape[0])
    if x is None or out is None or not isinstance(dim, int) or not isinstance(r, int):
        return  # flattened, or repeats given per index: every dim pinned
    dim %= x.ndim
    for d in range(x.ndim):
        if d != dim:
            ctx.couple(x, d, out, d)
    ctx.grid(out, dim, [(x, dim), (_copies(node, r), 0)])


def _copies(node, r: int) -> TRef:
    """The pseudo dim of the ``r`` copies a repeat makes of each index."""
    return TRef(("value", node.name, ("copies",)), (r,))


def rewrite_repeat_interleave(rctx, node) -> None:
    """The repeat count is the pruned output's size over the pruned input's (copies removed)."""
    x, out, dim = rctx.tensor(arg(node, 0, "input")), rctx.tensor(node), arg(node, 2, "dim")
    if x is None or out is None or not isinstance(dim, int) or not x.shape[dim]:
        return
    nx, no = rctx.new_shape(x)[dim], rctx.new_shape(out)[dim]
    if nx and no // nx != out.shape[dim] // x.shape[dim]:
        set_arg(node, 1, "repeats", no // nx)


def lower_repeat(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    off = out.ndim - x.ndim
    for d in range(x.ndim):
        if x.shape[d] == out.shape[d + off]:
            ctx.couple(x, d, out, d + off)


register("call_function", (torch.reshape,), "reshape", lower_reshape, rewrite_view)
register("call_method", ("view", "reshape"), "reshape", lower_reshape, rewrite_view)
register("call_function", (torch.flatten, torch.unsqueeze, torch.ravel), "reshape", lower_reshape)
register("call_method", ("flatten", "unsqueeze", "ravel", "unsqueeze_"), "reshape", lower_reshape)
register("call_function", (torch.squeeze,), "reshape", lower_reshape, rewrite_squeeze)
register("call_method", ("squeeze", "squeeze_"), "reshape", lower_reshape, rewrite_squeeze)
register("call_module", (nn.Flatten,), "reshape", lower_reshape)
register("call_function", (torch.unflatten,), "unflatten", lower_reshape, rewrite_unflatten)
register("call_method", ("unflatten",), "unflatten", lower_reshape, rewrite_unflatten)
register("call_module", (nn.Unflatten,), "unflatten", lower_reshape, rewrite_unflatten)
register("call_function", (torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.t,
                           torch.movedim, torch.moveaxis), "permute", lower_permute)
register("call_method", ("permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"),
         "permute", lower_permute)
register("call_method", ("expand",), "expand", lower_expand, rewrite_view)
register("call_method", ("expand_as", "reshape_as", "view_as"), "reshape_as", lower_reshape_as)
register("call_function", (torch.broadcast_to,), "expand", lower_expand)
register("call_method", ("repeat", "tile"), "repeat", lower_repeat)
register("call_function", (torch.repeat_interleave,), "repeat_interleave", lower_repeat_interleave,
         rewrite_repeat_interleave)
register("call_method", ("repeat_interleave",), "repeat_interleave", lower_repeat_interleave,
         rewrite_repeat_interleave)
