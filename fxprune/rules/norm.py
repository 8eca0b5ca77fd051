"""Normalisation layers and PReLU.

BatchNorm/InstanceNorm: per-channel statistics, so removing a channel changes nothing else (exact).
GroupNorm: whole groups go together, so the remaining groups' statistics are unchanged (exact).
LayerNorm/RMSNorm over a pruned dim: statistics change; verify recomputes such nodes over the kept
channels and reports them.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg, set_arg, gather_kept, scatter_kept

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
       nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _channel_dim(m: nn.Module, x) -> int:
    if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
        nsp = int(type(m).__name__[-2])
        return 1 if x.ndim == nsp + 2 else 0
    return 1 if x.ndim >= 2 else 0


def lower_bn_module(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    ctx.couple_all(x, out)
    cd = _channel_dim(ctx.module(), x)
    for p in _BN_PARAMS:
        ref = ctx.param(p)
        if ref is not None and ref.ndim == 1:
            ctx.couple(ref, 0, x, cd)


def rewrite_bn_module(rctx, node) -> None:
    m = rctx.module(node)
    x = rctx.tensor(arg(node, 0, "input"))
    m.num_features = rctx.new_shape(x)[_channel_dim(m, x)]


_BN_FN_ARGS = ("input", "running_mean", "running_var", "weight", "bias")


def _input_stats(node) -> bool:
    """Whether a functional batch/instance norm normalises with statistics of its input."""
    if node.target is F.instance_norm:
        return arg(node, 5, "use_input_stats", True) is not False
    return arg(node, 5, "training", False) is not False


def lower_bn_fn(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    ctx.couple_all(x, out)
    cd = 1 if x.ndim >= 2 else 0
    for pos, name in enumerate(_BN_FN_ARGS[1:], start=1):
        ref = ctx.tensor(arg(node, pos, name))
        if ref is not None:
            ctx.couple(ref, 0, x, cd)
    if _input_stats(node):
        # e.g. weight standardisation (``F.batch_norm(w.reshape(1, O, -1), training=True)``): the
        # statistics run over the fan-in, which input-channel pruning shrinks (verify recomputes them)
        ctx.mark_stat("batch statistics over every dim but the channels")


def masked_bn_fn(vctx, node, args, kwargs) -> torch.Tensor:
    """Batch/instance norm with input statistics over the kept entries only, scattered back."""
    x = args[0]
    kept = [vctx.kept(vctx.tensor(arg(node, 0, "input")), d) for d in range(x.ndim)]
    cd = 1 if x.ndim >= 2 else 0
    args = list(args)
    kwargs = dict(kwargs)
    args[0] = gather_kept(x, kept)
    for pos, name in enumerate(_BN_FN_ARGS[1:], start=1):
        where, key = (args, pos) if pos < len(args) else (kwargs, name)
        t = where[key] if pos < len(args) or name in kwargs else None
        if isinstance(t, torch.Tensor):
            where[key] = gather_kept(t, [kept[cd]]).clone()  # a copy: running stats are updated in place
    return scatter_kept(x.shape, node.target(*args, **kwargs), kept)


def _lower_gn(ctx, x, out, groups: int, w, b, grouped: bool = False) -> None:
    ctx.couple_all(x, out)
    c = x.shape[1]
    k = c // groups
    if groups > 1 or grouped:
        i = np.arange(c, dtype=np.int64)
        ctx.couple(x, 1, x, 1, (i, (i // k) * k))  # whole groups: the other groups' statistics stay exact
    else:
        ctx.mark_stat("GroupNorm with one group normalises over all channels")
    for ref in (w, b):
        if ref is not None:
            ctx.couple(ref, 0, x, 1)


def lower_gn_module(ctx, node) -> None:
    m = ctx.module()
    # a GroupNorm left with one of its groups still goes by whole groups, as the original does: a later
    # step may not prune inside it (the one-shot replay of the cumulative plan could not)
    _lower_gn(ctx, ctx.tensor(arg(node, 0, "input")), ctx.out(), m.num_groups, ctx.param("weight"),
              ctx.param("bias"), grouped=getattr(m, "_fxprune_grouped", False))


def rewrite_gn_module(rctx, node) -> None:
    m = rctx.module(node)
    k = m.num_channels // m.num_groups
    m.num_channels = rctx.new_shape(rctx.tensor(arg(node, 0, "input")))[1]
    if m.num_groups > 1 and m.num_channels == k:
        m._fxprune_grouped = True
    m.num_groups = 1 if m.num_groups == 1 else m.num_channels // k


def lower_gn_fn(ctx, node) -> None:
    groups = arg(node, 1, "num_groups")
    if isinstance(groups, int):
        _lower_gn(ctx, ctx.tensor(arg(node, 0, "input")), ctx.out(), groups,
                  ctx.tensor(arg(node, 2, "weight")), ctx.tensor(arg(node, 3, "bias")))


def rewrite_gn_fn(rctx, node) -> None:
    groups = arg(node, 1, "num_groups")
    x = rctx.tensor(arg(node, 0, "input"))
    k = x.shape[1] // groups
    set_arg(node, 1, "num_groups", 1 if groups == 1 else rctx.new_shape(x)[1] // k)


def _lower_ln(ctx, x, out, k: int, params: List[Any]) -> None:
    ctx.couple_all(x, out)
    for ref in params:
        if ref is not None:
            for j in range(ref.ndim):
                ctx.couple(ref, j, x, x.ndim - ref.ndim + j)
    ctx.mark_stat(f"normalises over the last {k} dim(s)")


def _ln_k(shape: Any) -> int:
    return 1 if isinstance(shape, int) else len(shape)


def lower_ln_module(ctx, node) -> None:
    m = ctx.module()
    shape = m.normalized_shape
    _lower_ln(ctx, ctx.tensor(arg(node, 0, "input")), ctx.out(), _ln_k(shape), [ctx.param("weight"), ctx.param("bias")])


def rewrite_ln_module(rctx, node) -> None:
    m = rctx.module(node)
    k = _ln_k(m.normalized_shape)
    m.normalized_shape = tuple(rctx.new_shape(rctx.tensor(arg(node, 0, "input")))[-k:])


def lower_ln_fn(ctx, node) -> None:
    shape = arg(node, 1, "normalized_shape")
    if isinstance(shape, (int, list, tuple)) and all(isinstance(s, int) for s in np.atleast_1d(shape).tolist()):
        _lower_ln(ctx, ctx.tensor(arg(node, 0, "input")), ctx.out(), _ln_k(shape),
                  [ctx.tensor(arg(node, 2, "weight")), ctx.tensor(arg(node, 3, "bias"))])


def rewrite_ln_fn(rctx, node) -> None:
    k = _ln_k(arg(node, 1, "normalized_shape"))
    new = tuple(rctx.new_shape(rctx.tensor(arg(node, 0, "input")))[-k:])
    set_arg(node, 1, "normalized_shape", list(new) if isinstance(arg(node, 1, "normalized_shape"), list) else new)




def masked_ln(vctx, node, args, kwargs) -> torch.Tensor:
    """LayerNorm/RMSNorm over the kept channels only, scattered back to the full shape."""
    x = args[0]
    ref = vctx.tensor(arg(node, 0, "input"))
    kept = [vctx.kept(ref, d) for d in range(x.ndim)]
    if node.op == "call_module":
        m = vctx.module(node)
        k, w, b, eps = _ln_k(m.normalized_shape), m.weight, getattr(m, "bias", None), m.eps
        rms = isinstance(m, nn.RMSNorm)
    else:
        k = _ln_k(arg(node, 1, "normalized_shape"))
        w, b = arg(node, 2, "weight"), arg(node, 3, "bias")
        w, b = [args[i] if i < len(args) else kwargs.get(n) for i, n in ((2, "weight"), (3, "bias"))]
        eps = arg(node, 4, "eps", 1e-5)
        rms = False
    xk = gather_kept(x, kept)
    pk = kept[x.ndim - k:]
    wk = gather_kept(w, pk) if w is not None else None
    bk = gather_kept(b, pk) if b is not None else None
    shape = tuple(xk.shape[-k:])
    y = F.rms_norm(xk, shape, wk, eps) if rms else F.layer_norm(xk, shape, wk, bk, eps)
    return scatter_kept(x.shape, y, kept)


def masked_gn(vctx, node, args, kwargs) -> torch.Tensor:
    """GroupNorm(1, C) over the kept channels only, scattered back to the full shape."""
    x = args[0]
    kept = [None, vctx.kept(vctx.tensor(arg(node, 0, "input")), 1)] + [None] * (x.ndim - 2)
    if node.op == "call_module":
        m = vctx.module(node)
        w, b, eps = m.weight, m.bias, m.eps
    else:
        w, b = [args[i] if i < len(args) else kwargs.get(n) for i, n in ((2, "weight"), (3, "bias"))]
        eps = arg(node, 4, "eps", 1e-5)
    pk = kept[1:2]
    y = F.group_norm(gather_kept(x, kept), 1, gather_kept(w, pk) if w is not None else None,
                     gather_kept(b, pk) if b is not None else None, eps)
    return scatter_kept(x.shape, y, kept)


def lower_prelu(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    ctx.couple_all(x, out)
    w = ctx.param("weight")
    if w is not None and w.shape[0] > 1:
        ctx.couple(w, 0, x, 1 if x.ndim >= 2 else 0)


def rewrite_prelu(rctx, node) -> None:
    m = rctx.module(node)
    m.num_parameters = m.weight.shape[0]


register("call_module", _BN, "batchnorm", lower_bn_module, rewrite_bn_module)
register("call_function", (F.batch_norm, F.instance_norm), "functional batchnorm", lower_bn_fn,
         masked_eval=masked_bn_fn)
register("call_module", (nn.GroupNorm,), "groupnorm", lower_gn_module, rewrite_gn_module, masked_gn)
register("call_function", (F.group_norm,), "functional groupnorm", lower_gn_fn, rewrite_gn_fn, masked_gn)
register("call_module", (nn.LayerNorm, nn.RMSNorm), "layernorm", lower_ln_module, rewrite_ln_module, masked_ln)
register("call_function", (F.layer_norm,), "functional layernorm", lower_ln_fn, rewrite_ln_fn, masked_ln)
register("call_module", (nn.PReLU,), "prelu", lower_prelu, rewrite_prelu)
