"""Ops that move channels into space or between groups: pixel (un)shuffle, channel shuffle, fold/unfold.

* ``pixel_shuffle(r)``: input channel ``i`` becomes output channel ``i // r²`` (``r²`` input channels per output
  channel, a block map); ``pixel_unshuffle`` is the inverse. Spatial dims stay.
* ``channel_shuffle(g)``: ``C`` is viewed as ``(g, C/g)`` and transposed. Channel ``k`` of every group moves
  together (one class: input ``i·C/g + k`` for all ``i`` and output ``k·g + i``), so what stays is always a
  valid ``(g, C'/g)`` grid and ``groups`` never changes.
* ``unfold``: channel ``c`` owns the ``∏kernel`` rows ``c·K … c·K+K-1`` of the output; ``fold`` is the inverse.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.PixelShuffle(2), torch.nn.Conv2d(2, 2, 1))
    >>> len(fxprune.analyze(m, torch.randn(1, 3, 4, 4)).group_of("0.weight", 0).all_classes)
    2
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import index_map
from ..registry import register
from ._util import arg, couple_others


def _lead(ctx, x, out, n: int) -> None:
    """Identity on the ``n`` leading (batch) dims."""
    for d in range(n):
        if x.shape[d] == out.shape[d]:
            ctx.couple(x, d, out, d)


def _factor(node, ctx, pos: int, name: str, attr: str) -> int | None:
    if node.op == "call_module":
        return getattr(ctx.module(), attr, None)
    v = arg(node, pos, name)
    return v if isinstance(v, int) else None


def lower_pixel_shuffle(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or x.ndim < 3:
        return
    _lead(ctx, x, out, x.ndim - 3)
    big, small = (x, out) if x.shape[-3] >= out.shape[-3] else (out, x)  # shuffle: x has r² x the channels
    rr = big.shape[-3] // max(small.shape[-3], 1)
    ctx.couple(big, -3, small, -3, index_map.block(big.shape[-3], rr))


def _shuffle_pairs(c: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Input ``i·n + k`` with output ``k·g + i'`` for every ``i, i'`` (``n = C/g``): one class per ``k``."""
    n = c // g
    i, k, j = np.meshgrid(np.arange(g), np.arange(n), np.arange(g), indexing="ij")
    return (i * n + k).ravel().astype(np.int64), (k * g + j).ravel().astype(np.int64)


def lower_channel_shuffle(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    g = _factor(node, ctx, 1, "groups", "groups")
    if x is None or out is None or x.ndim < 2 or not isinstance(g, int) or g <= 0 or x.shape[1] % g:
        return
    couple_others(ctx, x, out, 1)
    ctx.couple(x, 1, out, 1, _shuffle_pairs(x.shape[1], g))


def lower_unfold(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or x.ndim not in (3, 4):
        return
    cx, co = x.ndim - 3, out.ndim - 2
    _lead(ctx, x, out, cx)
    ctx.couple(out, co, x, cx, index_map.block(out.shape[co], out.shape[co] // x.shape[cx]))


def lower_fold(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None or x.ndim not in (2, 3):
        return
    cx, co = x.ndim - 2, out.ndim - 3
    _lead(ctx, x, out, cx)
    ctx.couple(x, cx, out, co, index_map.block(x.shape[cx], x.shape[cx] // out.shape[co]))


register("call_module", (nn.PixelShuffle, nn.PixelUnshuffle), "pixel shuffle", lower_pixel_shuffle)
register("call_function", (F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle),
         "pixel shuffle", lower_pixel_shuffle)
register("call_module", (nn.ChannelShuffle,), "channel shuffle", lower_channel_shuffle)
register("call_function", (F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle),
         "channel shuffle", lower_channel_shuffle)
register("call_module", (nn.Unfold,), "unfold", lower_unfold)
register("call_function", (F.unfold,), "unfold", lower_unfold)
register("call_module", (nn.Fold,), "fold", lower_fold)
register("call_function", (F.fold,), "fold", lower_fold)
