"""Reductions and normalising ops over a dim: the reduced dim is pinned, the others go through.

``x.mean((2, 3))`` couples batch and channels and pins the spatial dims; ``x.amax(1)`` pins the channels.
Sums are the exception: removed channels are zero in the masked original, so ``x.pow(2).sum(1)`` may lose
channels exactly; a mean divides by the count, so it may too, with its statistics recomputed by verify.
Vector norms are sums too (a zero entry adds nothing to any p-norm, and none exceeds a max of absolute
values), and so is the normaliser of ``F.normalize``. Softmax-like ops keep the dim but pin it (removing
entries changes the normaliser: exp(0) is not 0).

``torch.max(x, y)`` / ``torch.min(x, y)`` with a tensor ``y`` (and ``x.max(y)``) are not reductions but the
element-wise ``maximum``/``minimum``: they get the element-wise rule (dims coupled under broadcasting).

Example:
    >>> import torch, fxprune
    >>> class Floor(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    ...         self.register_buffer("eps", torch.tensor(0.1))
    ...     def forward(self, x):
    ...         return self.b(torch.max(self.a(x), self.eps))
    >>> fxprune.analyze(Floor(), torch.randn(2, 3)).group_of("a.weight", 0).pinned is None
    True
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import lookup, register
from ._util import arg, norm_dims

_REDUCE = ("sum", "mean", "amax", "amin", "std", "var", "norm", "prod", "logsumexp", "all", "any", "argmax",
           "argmin", "median", "nansum", "nanmean", "count_nonzero")
_MIN_MAX = ("max", "min")  # reductions, or element-wise against a second tensor (lower_min_max)
_SUMS = ("sum", "nansum")
_MEANS = ("mean", "nanmean")
_KEEP = ("softmax", "log_softmax", "cumsum", "cumprod", "cummax", "cummin", "sort", "argsort", "normalize")


def lower_reduce(ctx, node) -> None:
    x = ctx.tensor(arg(node, 0, "input"))
    if x is None:
        return
    dims = arg(node, 1, "dim")
    if node.target in (torch.norm, "norm"):
        dims = arg(node, 2, "dim")
    keep = bool(arg(node, 3 if node.target in (torch.norm, "norm") else 2, "keepdim", False))
    reduced = norm_dims(dims, x.ndim)
    reduced = list(range(x.ndim)) if reduced is None else reduced
    for _, out in ctx.out_elems():
        od = 0
        for d in range(x.ndim):
            if d in reduced:
                od += 1 if keep else 0
                continue
            if od < out.ndim and out.shape[od] == x.shape[d]:
                ctx.couple(x, d, out, od)
            od += 1
    if _name(node) in _SUMS + _MEANS or _vector_norm(node):
        # removed channels are zero in the masked original, so they add nothing to a sum: the summed
        # dims may lose channels; a mean also divides by their count (statistics change, like LayerNorm)
        for d in reduced:
            ctx.touch(x, d)
        if _name(node) in _MEANS:
            ctx.mark_stat("mean over a dim that loses channels")


def lower_min_max(ctx, node) -> None:
    """``max``/``min``: element-wise against a second tensor (``torch.max(x, y)``), else a reduction."""
    if ctx.tensor(arg(node, 1, "other")) is not None:
        lookup("call_function", torch.maximum).lower(ctx, node)  # the element-wise family's rule
    else:
        lower_reduce(ctx, node)


def _vector_norm(node) -> bool:
    """``torch.norm``/``Tensor.norm`` of a vector p-norm (the nuclear norm is not a sum of entries)."""
    return _name(node) == "norm" and arg(node, 1, "p", "fro") != "nuc"


def _name(node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def masked_mean(vctx, node, args, kwargs) -> torch.Tensor:
    """The mean over the kept entries of every reduced dim (what the pruned model computes)."""
    x, ref = args[0], vctx.tensor(arg(node, 0, "input"))
    dims = norm_dims(args[1] if len(args) > 1 else kwargs.get("dim"), x.ndim)
    for d in range(x.ndim) if dims is None else dims:
        kept = vctx.kept(ref, d)
        if kept is not None:
            x = x.index_select(d, kept.to(x.device))
    fn = getattr(torch, node.target) if isinstance(node.target, str) else node.target
    return fn(x, *args[1:], **kwargs)


def lower_keep(ctx, node) -> None:
    x = ctx.tensor(arg(node, 0, "input"))
    if node.op == "call_module":
        dim = getattr(ctx.module(), "dim", None)
    elif node.target is F.normalize:
        dim = arg(node, 2, "dim", 1)
    else:
        dim = arg(node, 1, "dim")
    pinned = norm_dims(dim, x.ndim)
    pinned = list(range(x.ndim)) if pinned is None else pinned
    if node.target is F.normalize or node.target == "normalize":
        pinned = []  # x / ||x||_p: removed (zeroed) entries leave the norm as it is
    for _, out in ctx.out_elems():
        for d in range(x.ndim):
            if d not in pinned and out.ndim == x.ndim:
                ctx.couple(x, d, out, d)


def lower_diff(ctx, node) -> None:
    """``torch.diff(x, n, dim)``: differences along ``dim`` (pinned: its size changes); other dims go through.
    Transformers computes one on position ids to detect packed sequences."""
    x = ctx.tensor(arg(node, 0, "input"))
    if x is None or arg(node, 3, "prepend") is not None or arg(node, 4, "append") is not None:
        return
    along = norm_dims(arg(node, 2, "dim", -1), x.ndim)
    for _, out in ctx.out_elems():
        for d in range(x.ndim):
            if d not in along and out.ndim == x.ndim:
                ctx.couple(x, d, out, d)


def _fns(names):
    return tuple(f for mod in (torch, F) for n in names if callable(f := getattr(mod, n, None)))


register("call_function", _fns(_REDUCE), "reduction", lower_reduce)
register("call_method", _REDUCE, "reduction", lower_reduce)
register("call_function", _fns(_MIN_MAX), "min/max", lower_min_max)
register("call_method", _MIN_MAX, "min/max", lower_min_max)
register("call_function", _fns(_MEANS), "mean", lower_reduce, masked_eval=masked_mean)
register("call_method", _MEANS, "mean", lower_reduce, masked_eval=masked_mean)
register("call_function", _fns(_KEEP), "softmax-like", lower_keep)
register("call_method", _KEEP, "softmax-like", lower_keep)
register("call_module", (nn.Softmax, nn.LogSoftmax, nn.Softmin), "softmax-like", lower_keep)
register("call_function", (torch.diff, torch.ops.aten.diff.default), "diff", lower_diff)
register("call_method", ("diff",), "diff", lower_diff)
