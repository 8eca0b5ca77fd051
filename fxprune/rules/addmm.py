"""``torch.addmm(bias, x, w)``: ``bias + x @ w`` on 2-D operands (Hugging Face GPT-2's ``Conv1D``).

The contraction dim couples ``x``'s columns with ``w``'s rows; the output's rows are ``x``'s rows and its
columns are ``w``'s columns, which the bias (broadcast over rows) shares.

Example:
    >>> import torch, fxprune
    >>> class Conv1D(torch.nn.Module):  # GPT-2's layer: weight stored (in, out)
    ...     def __init__(self, nx, nf):
    ...         super().__init__()
    ...         self.weight, self.bias = torch.nn.Parameter(torch.randn(nx, nf)), torch.nn.Parameter(torch.zeros(nf))
    ...     def forward(self, x):
    ...         return torch.addmm(self.bias, x, self.weight)
    >>> m = torch.nn.Sequential(Conv1D(4, 8), torch.nn.ReLU(), Conv1D(8, 2))
    >>> g = fxprune.analyze(m, torch.randn(3, 4)).group_of("0.weight", 1)
    >>> g.pinned, sorted(g.members)[:3]
    (None, [('0.bias', 0), ('0.weight', 1), ('2.weight', 0)])
"""
from __future__ import annotations

import torch

from ..registry import register
from ._util import arg


def lower_addmm(ctx, node) -> None:
    bias, x, w = (ctx.tensor(arg(node, i, n)) for i, n in enumerate(("input", "mat1", "mat2")))
    out = ctx.out()
    if x is None or w is None or out is None or x.ndim != 2 or w.ndim != 2:
        return
    ctx.couple(x, 0, out, 0)
    ctx.couple(x, 1, w, 0)  # the contraction
    ctx.couple(w, 1, out, 1)
    if bias is not None:
        ctx.broadcast(out, bias)


register("call_function", (torch.addmm,), "addmm", lower_addmm)
