"""``aten.flip`` and ``one_hot`` (Gemma-style vision towers through the export frontend: reversed position
ids, one-hot position lookups). ``torch.flip`` itself has its rule beside ``roll`` in ``pooling.py``; the
export frontend leaves ``aten.flip`` as it is, so that overload is registered here, with the same meaning.

* ``flip(x, dims)``: every dim not flipped is the same dim of the output, index for index; a flipped dim
  stays pinned (removing row ``i`` would move every row after it in the reversed order).
* ``one_hot(ids, num_classes)``: every dim of the integer ``ids`` is the same leading dim of the output; the
  appended class dim stays pinned (its size is the number of classes).

Example:
    >>> import torch, fxprune
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.b(torch.flip(self.a(x), (0,)))
    >>> fxprune.analyze(M(), torch.randn(4, 3), frontend="export").group_of("a.weight", 0).pinned is None
    True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from ._util import arg, norm_dims


def lower_flip(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    dims = arg(node, 1, "dims")
    if x is None or out is None or x.shape != out.shape:
        return
    flipped = norm_dims(dims, x.ndim)
    if flipped is None:
        return
    for d in range(x.ndim):
        if d not in flipped:
            ctx.couple(x, d, out, d)


def lower_one_hot(ctx, node) -> None:
    ids, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if ids is None or out is None or out.ndim != ids.ndim + 1:
        return
    for d in range(ids.ndim):
        ctx.couple(ids, d, out, d)


register("call_function", (torch.ops.aten.flip.default,), "flip", lower_flip)
register("call_function", (F.one_hot, torch.ops.aten.one_hot.default), "one hot", lower_one_hot)
