"""Convolutions: Conv1d/2d/3d, ConvTranspose1d/2d/3d and their functional forms.

``groups = g`` splits input channels into ``g`` blocks of ``Ki`` and outputs into ``g`` blocks of ``Ko``.
* ``g == 1``: input channels go with weight columns, outputs with weight rows and bias.
* ``Ki == 1`` or ``Ko == 1`` (depthwise, with or without a channel multiplier): a whole block is the unit:
  input channel block t goes with its output block; removing it decrements ``groups``.
* otherwise: input and output channels are grids (:mod:`fxprune.grid`) of the groups and the position
  in a block: the same position in every block goes (``groups`` kept), or whole groups go (``groups``
  decremented; ``group.head_classes``), or both.

Spatial dims are pinned (a kernel mixes neighbouring positions), except in a *pointwise* convolution (every
kernel size 1, stride 1, padding 0, output padding 0): output position ``j`` reads only input position ``j``,
so each spatial dim goes straight through, index for index. CoaT's head aggregates three class tokens with a
``Conv1d(3, 1, 1)`` over ``[B, 3, C]``: the model's channels are that conv's spatial dim.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Tuple

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from ..context import TRef
from ..registry import register
from ._util import arg, set_arg

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FCONV = (F.conv1d, F.conv2d, F.conv3d)
_FCONVT = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


def _self_blocks(n: int, k: int):
    """Index i goes with the first index of its block of ``k`` (unions each block)."""
    i = np.arange(n, dtype=np.int64)
    return i, (i // k) * k


def _ints(v: Any, n: int) -> Optional[Tuple[int, ...]]:
    """A conv hyper-parameter (int, sequence or string) as ``n`` ints; None when not known ints."""
    if isinstance(v, int):
        return (v,) * n
    if isinstance(v, (tuple, list)) and all(isinstance(i, int) for i in v):
        return tuple(v) * n if len(v) == 1 else tuple(v)
    return None


def pointwise(kernel: Sequence[int], stride: Any, padding: Any, output_padding: Any = 0) -> bool:
    """True when a convolution maps each spatial position to the same position only (kernel 1, stride 1,
    no padding): its spatial dims then pass through like a batch dim.

    Example:
        >>> pointwise((1, 1), 1, 0), pointwise((1,), (1,), "valid")
        (True, True)
        >>> pointwise((1,), 2, 0), pointwise((3,), 1, 0), pointwise((1,), 1, 1)
        (False, False, False)
    """
    n = len(kernel)
    pad = (0,) * n if padding in ("valid", "same") else _ints(padding, n)  # k=1: "same" pads nothing
    return (all(k == 1 for k in kernel) and _ints(stride, n) == (1,) * n and pad == (0,) * n
            and _ints(output_padding, n) == (0,) * n)


def _lower_conv(ctx, x, w, b, out, groups: int, transposed: bool, grouped: bool = False,
                point: bool = False) -> None:
    cd = x.ndim - (w.ndim - 2) - 1  # channel dim: 1 when batched, 0 when not
    if cd == 1:
        ctx.couple(x, 0, out, 0)
    if point:  # kernel 1, stride 1, no padding: position j of the output reads position j of the input
        for d in range(cd + 1, x.ndim):
            if x.shape[d] == out.shape[d]:
                ctx.couple(x, d, out, d)
    cin, cout, g = x.shape[cd], out.shape[cd], groups
    ki, ko = cin // g, cout // g
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if b is not None:
        ctx.couple(b, 0, out, cd)
    if g == 1 and not grouped:
        ctx.couple(x, cd, w, w_in)
        ctx.couple(out, cd, w, w_out)
    elif ki == 1 or ko == 1:
        blocks = (np.arange(cin, dtype=np.int64), (np.arange(cin, dtype=np.int64) // ki) * ko)
        ctx.couple(x, cd, out, cd, blocks)
        ctx.couple(x, cd, x, cd, _self_blocks(cin, ki))
        ctx.couple(out, cd, out, cd, _self_blocks(cout, ko))
        full = (x, cd, w, 0) if transposed else (out, cd, w, 0)
        ctx.couple(*full)
    else:  # channels are grids: (group, position in block) on both sides, the group shared
        node = ctx.node.name
        grp = TRef(("value", node, ("groups",)), (g,))
        if transposed:  # weight (cin, ko, ...)
            ctx.couple(x, cd, w, 0)
            ctx.grid(x, cd, [(grp, 0), (TRef(("value", node, ("ki",)), (ki,)), 0)])
            ctx.grid(out, cd, [(grp, 0), (w, 1)])
        else:  # weight (cout, ki, ...)
            ctx.couple(out, cd, w, 0)
            ctx.grid(out, cd, [(grp, 0), (TRef(("value", node, ("ko",)), (ko,)), 0)])
            ctx.grid(x, cd, [(grp, 0), (w, 1)])


def _new_groups(rctx, node, x, w, transposed: bool, old_groups: int) -> int:
    cd = x.ndim - (w.ndim - 2) - 1
    new_w = rctx.new_shape(w)
    if transposed:
        cout_new = rctx.new_shape(rctx.tensor(node))[cd]
        return max(cout_new // new_w[1], 1) if old_groups > 1 else 1
    return max(rctx.new_shape(x)[cd] // new_w[1], 1) if old_groups > 1 else 1


def lower_conv_module(ctx, node) -> None:
    m = ctx.module()
    # a grouped conv pruned down to one group keeps its block structure (a depthwise conv's outputs go
    # with their input), as in the original: a later step may not prune inside it (replay could not)
    _lower_conv(ctx, ctx.tensor(arg(node, 0, "input")), ctx.param("weight"), ctx.param("bias"), ctx.out(),
                m.groups, isinstance(m, _CONVT), getattr(m, "_fxprune_grouped", False),
                pointwise(m.kernel_size, m.stride, m.padding, getattr(m, "output_padding", 0)))


def rewrite_conv_module(rctx, node) -> None:
    m = rctx.module(node)
    x, w = rctx.tensor(arg(node, 0, "input")), rctx.param("weight", node)
    transposed = isinstance(m, _CONVT)
    groups = _new_groups(rctx, node, x, w, transposed, m.groups)
    if m.groups > 1 and groups == 1:
        m._fxprune_grouped = True
    m.groups = groups
    cd = x.ndim - (w.ndim - 2) - 1
    m.in_channels = rctx.new_shape(x)[cd]
    m.out_channels = rctx.new_shape(rctx.tensor(node))[cd]


def lower_conv_fn(ctx, node) -> None:
    transposed = node.target in _FCONVT
    x, w = ctx.tensor(arg(node, 0, "input")), ctx.tensor(arg(node, 1, "weight"))
    b = ctx.tensor(arg(node, 2, "bias"))
    groups = arg(node, 6, "groups", 1)
    if not isinstance(groups, int) or w is None:
        return  # dynamic groups or weight: leave every dim pinned
    point = pointwise(w.shape[2:], arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                      arg(node, 5, "output_padding", 0) if transposed else 0)
    _lower_conv(ctx, x, w, b, ctx.out(), groups, transposed, point=point)
    for d in range(2, w.ndim):  # the weight is a graph value here (a module's kernel dims are never lowered)
        ctx.pin(w, d, "kernel positions of a convolution weight")


def rewrite_conv_fn(rctx, node) -> None:
    groups = arg(node, 6, "groups", 1)
    if isinstance(groups, int) and groups > 1:
        x, w = rctx.tensor(arg(node, 0, "input")), rctx.tensor(arg(node, 1, "weight"))
        set_arg(node, 6, "groups", _new_groups(rctx, node, x, w, node.target in _FCONVT, groups))


register("call_module", _CONV + _CONVT, "conv", lower_conv_module, rewrite_conv_module)
register("call_function", _FCONV + _FCONVT, "functional conv", lower_conv_fn, rewrite_conv_fn)
