"""Functional RMSNorm, ``F.rms_norm(x, normalized_shape, weight, eps)`` (timm's RmsNorm layers, Gemma-style
vision towers through the export frontend, where ``aten.rms_norm`` is raised to it).

Like LayerNorm without a bias: every dim of ``x`` goes with the same dim of the output and the weight goes
with the normalised (last) dims. Removing a channel changes the mean square, so the node is marked as a
statistic: ``verify`` recomputes it over the kept channels (``masked_rms_norm``); the rewrite sets
``normalized_shape`` to the pruned sizes.

Example:
    >>> import torch, torch.nn.functional as F, fxprune
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.w, self.b = torch.nn.Linear(3, 8), torch.nn.Parameter(torch.ones(8)), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.b(F.rms_norm(self.a(x), (8,), self.w, 1e-6))
    >>> g = fxprune.analyze(M(), torch.randn(2, 3)).group_of("a.weight", 0)
    >>> g.pinned, ("w", 0) in g.members, ("b.weight", 1) in g.members
    (None, True, True)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..registry import register
from ._util import arg, set_arg, gather_kept, scatter_kept


def _k(shape: Any) -> int:
    return 1 if isinstance(shape, int) else len(shape)


def lower_rms_norm(ctx, node) -> None:
    shape = arg(node, 1, "normalized_shape")
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or not (isinstance(shape, int) or
                                        (isinstance(shape, (list, tuple)) and all(isinstance(s, int) for s in shape))):
        return
    ctx.couple_all(x, out)
    w = ctx.tensor(arg(node, 2, "weight"))
    if w is not None:
        for j in range(w.ndim):
            ctx.couple(w, j, x, x.ndim - w.ndim + j)
    ctx.mark_stat(f"RMSNorm normalises over the last {_k(shape)} dim(s)")


def rewrite_rms_norm(rctx, node) -> None:
    old = arg(node, 1, "normalized_shape")
    new = tuple(rctx.new_shape(rctx.tensor(arg(node, 0, "input")))[-_k(old):])
    set_arg(node, 1, "normalized_shape", list(new) if isinstance(old, list) else new)




def masked_rms_norm(vctx, node, args, kwargs) -> torch.Tensor:
    """RMSNorm over the kept channels only, scattered back to the full shape."""
    x = args[0]
    kept = [vctx.kept(vctx.tensor(arg(node, 0, "input")), d) for d in range(x.ndim)]
    k = _k(arg(node, 1, "normalized_shape"))
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    eps = args[3] if len(args) > 3 else kwargs.get("eps")
    xk = gather_kept(x, kept)
    wk = gather_kept(w, kept[x.ndim - k:]) if w is not None else None
    return scatter_kept(x.shape, F.rms_norm(xk, tuple(xk.shape[-k:]), wk, eps), kept)


register("call_function", (F.rms_norm,), "functional rmsnorm", lower_rms_norm, rewrite_rms_norm, masked_rms_norm)
