"""Sliding windows over one dim: ``Tensor.unfold(dimension, size, step)`` (timm's halo attention, HaloNet).

``x.unfold(d, size, step)`` replaces dim ``d`` of ``x`` by the number of windows and appends a new last dim
of ``size`` (the position inside a window); every other dim of ``x`` is the same dim of the output, index
for index. So the channels (and batch) pass through, and dim ``d`` and the window dim stay pinned: removing
a row there would move every window. Not to be confused with ``F.unfold`` (im2col, in ``pixel.py``).

Example:
    >>> import torch, fxprune
    >>> class Halo(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         w = self.a(x).unfold(2, 2, 2).unfold(3, 2, 2)      # N, C, H/2, W/2, 2, 2
    ...         return self.b(w.mean((2, 3, 4, 5)))
    >>> g = fxprune.analyze(Halo(), torch.randn(1, 3, 4, 4)).group_of("a.weight", 0)
    >>> g.pinned, ("b.weight", 1) in g.members
    (None, True)
"""
from __future__ import annotations

import torch

from ..registry import register
from ._util import arg, couple_others


def lower_tensor_unfold(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "self")), ctx.out()
    d = arg(node, 1, "dimension")
    if x is None or out is None or not isinstance(d, int) or out.ndim != x.ndim + 1:
        return
    couple_others(ctx, x, out, d % max(x.ndim, 1))  # the appended window dim is left pinned


register("call_method", ("unfold",), "tensor unfold", lower_tensor_unfold)
register("call_function", (torch.Tensor.unfold, torch.ops.aten.unfold.default), "tensor unfold",
         lower_tensor_unfold)
