"""Gathers by an integer tensor and in-place copies as ``torch.export`` records them (MViTv2's relative
position tables, ``table[dist]``, and its sliced assignment ``attn[:, :, 1:, 1:] = ...``).

* ``aten.index.Tensor(x, [None, .., idx, None, ..])`` with one index tensor at dim ``k``: the output is
  ``x.shape[:k] + idx.shape + x.shape[k+1:]``; the dims before ``k`` and after it are the same dims of the
  output, index for index (a table's channel columns pass through). Dim ``k`` and the index dims stay
  pinned: which rows are read is data. More than one index tensor: everything stays pinned.
* ``aten.copy_(dst, src)``: the output is ``dst`` holding ``src`` (broadcast), so every dim of the output
  goes with that dim of ``dst`` and, broadcast, of ``src``.

Example (a relative-position table gathered by distance, its columns prunable with the layer feeding it):
    >>> import torch, fxprune
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.table = torch.nn.Linear(3, 8), torch.nn.Parameter(torch.randn(7, 8))
    ...     def forward(self, x):   # x: (4, 3)
    ...         dist = torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3
    ...         return (self.a(x)[:, None, :] * self.table[dist]).sum(-1)
    >>> g = fxprune.analyze(M(), torch.randn(4, 3), frontend="export").group_of("a.weight", 0)
    >>> g.pinned, ("table", 1) in g.members
    (None, True)
"""
from __future__ import annotations

import torch

from ..registry import register


def lower_index_tensor(ctx, node) -> None:
    x, out = ctx.tensor(node.args[0]), ctx.out()
    indices = list(node.args[1]) if len(node.args) > 1 and isinstance(node.args[1], (list, tuple)) else []
    at = [k for k, i in enumerate(indices) if i is not None]
    if x is None or out is None or len(at) != 1:
        return
    k = at[0]
    idx = ctx.tensor(indices[k])
    n = len(idx.shape) if idx is not None else None
    if n is None or out.ndim != x.ndim - 1 + n:
        return
    for d in range(x.ndim):
        if d < k:
            ctx.couple(x, d, out, d)
        elif d > k:
            ctx.couple(x, d, out, d - 1 + n)


def lower_copy_(ctx, node) -> None:
    dst, src, out = ctx.tensor(node.args[0]), ctx.tensor(node.args[1]) if len(node.args) > 1 else None, ctx.out()
    if dst is None or out is None or dst.shape != out.shape:
        return
    ctx.couple_all(dst, out)
    if src is not None:
        ctx.broadcast(out, src)


register("call_function", (torch.ops.aten.index.Tensor,), "index by tensor", lower_index_tensor)
register("call_function", (torch.ops.aten.copy_.default,), "copy_", lower_copy_)
