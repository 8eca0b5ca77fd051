"""Ops that Hugging Face decoders leave in an exported graph with no torch-level twin (the sweep of
``benchmarks/hf_sweep.py`` named them): they pinned Mamba's and Apertus' MLPs, RoPE tables and BERT's
embeddings. Each says which dims go through; everything else stays pinned.

* element-wise ``aten.softplus`` (Mamba's ``dt``, xIELU), ``aten.log_sigmoid``, ``aten.bitwise_not``,
  ``aten.logical_not``: every dim is the output's.
* ``aten.repeat_interleave(x, r, dim)`` (interleaved RoPE tables: GPT-J, Cohere, GLM): output index ``j``
  of ``dim`` is input index ``j // r``; the other dims go through. Only without ``output_size``, a size
  the pruned graph would have to change.
* ``torch.tril`` / ``torch.triu``: the two masked dims stay pinned, the leading dims go through.
* ``aten.gather(x, dim, index)``: every dim but ``dim`` of ``x`` (where it is as long as the output's)
  and every dim of ``index`` go with the output's; ``x``'s gathered dim stays pinned.
* ``aten.topk(x, k, dim)``: values and indices keep every dim of ``x`` but ``dim``.
* ``aten.baddbmm(c, a, b)`` (Bloom's ALiBi scores): ``beta * c + alpha * a @ b``, a batched ``addmm``;
  the contracted dim may lose entries (a zero adds nothing to the sum).
* ``aten.numpy_T`` (``x.T``): dim ``d`` is dim ``ndim - 1 - d`` of the output.

Example:
    >>> import torch, fxprune
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.b(torch.nn.functional.softplus(self.a(x)))
    >>> g = fxprune.analyze(M(), torch.randn(4, 3), frontend="export").group_of("a.weight", 0)
    >>> g.pinned is None, len(g.all_classes)
    (True, 8)
"""
from __future__ import annotations

import torch

from .. import index_map
from ..registry import register
from ._util import arg

aten = torch.ops.aten


def lower_unary(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "self")), ctx.out()
    if x is not None and out is not None and x.shape == out.shape:
        ctx.couple_all(x, out)


def lower_repeat_interleave(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "self")), ctx.out()
    reps, dim = arg(node, 1, "repeats"), arg(node, 2, "dim")
    if x is None or out is None or not isinstance(reps, int) or reps < 1 or dim is None or out.ndim != x.ndim:
        return
    dim = dim % x.ndim
    for d in range(x.ndim):
        if d != dim:
            ctx.couple(x, d, out, d)
    if arg(node, 3, "output_size") is None and out.shape[dim] == reps * x.shape[dim]:
        j, i = index_map.block(out.shape[dim], reps)
        ctx.couple(out, dim, x, dim, pairs=(j, i))


def lower_tri(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or x.shape != out.shape:
        return
    for d in range(x.ndim - 2):  # the last two dims are the masked matrix: positions matter
        ctx.couple(x, d, out, d)


def lower_gather(ctx, node) -> None:
    x, index, out = ctx.tensor(arg(node, 0, "self")), ctx.tensor(arg(node, 2, "index")), ctx.out()
    dim = arg(node, 1, "dim")
    if x is None or out is None or not isinstance(dim, int) or out.ndim != x.ndim:
        return
    dim = dim % x.ndim
    if index is not None and index.shape == out.shape:
        ctx.couple_all(index, out)  # the output has the index's shape, position for position
    for d in range(x.ndim):
        if d != dim and x.shape[d] == out.shape[d]:
            ctx.couple(x, d, out, d)


def lower_topk(ctx, node) -> None:
    x = ctx.tensor(arg(node, 0, "self"))
    dim = arg(node, 2, "dim", -1)
    if x is None or not isinstance(dim, int):
        return
    dim = dim % x.ndim
    for _, out in ctx.out_elems():
        if out.ndim != x.ndim:
            continue
        for d in range(x.ndim):
            if d != dim and x.shape[d] == out.shape[d]:
                ctx.couple(x, d, out, d)


def lower_baddbmm(ctx, node) -> None:
    c, a, b = (ctx.tensor(arg(node, i, n)) for i, n in enumerate(("self", "batch1", "batch2")))
    out = ctx.out()
    if a is None or b is None or out is None or a.ndim != 3 or b.ndim != 3 or out.ndim != 3:
        return
    for ref in (a, b):
        if ref.shape[0] == out.shape[0]:
            ctx.couple(ref, 0, out, 0)
    ctx.couple(a, 1, out, 1)
    ctx.couple(b, 2, out, 2)
    ctx.couple(a, 2, b, 1)  # contracted: a removed entry is zero in both factors and adds nothing
    if c is not None and c.ndim <= 3:
        ctx.broadcast(out, c)


def lower_numpy_t(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "self")), ctx.out()
    if x is None or out is None or tuple(reversed(x.shape)) != tuple(out.shape):
        return
    for d in range(x.ndim):
        ctx.couple(x, d, out, x.ndim - 1 - d)


register("call_function", (aten.softplus.default, aten.log_sigmoid.default, aten.bitwise_not.default,
                           aten.logical_not.default), "element-wise (aten)", lower_unary)
register("call_function", (aten.repeat_interleave.self_int,), "repeat_interleave", lower_repeat_interleave)
register("call_function", (torch.tril, torch.triu, aten.tril.default, aten.triu.default), "tril/triu",
         lower_tri)
register("call_function", (aten.gather.default,), "gather", lower_gather)
register("call_function", (aten.topk.default,), "topk", lower_topk)
register("call_function", (aten.baddbmm.default,), "baddbmm", lower_baddbmm)
register("call_function", (aten.numpy_T.default,), "numpy_T", lower_numpy_t)
