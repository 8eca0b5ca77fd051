"""Ops that act on spatial dims only: pooling, interpolation, padding, roll, flip.

Batch and channel dims go straight through; the spatial dims they change stay pinned.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg, norm_dims, spatial_rank

_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
_POOL_FNS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d, torch.max_pool2d,
    torch.avg_pool1d, torch.adaptive_avg_pool1d, F.max_pool2d_with_indices,
)


def _lower_spatial(ctx, node, nsp: int) -> None:
    x = ctx.tensor(arg(node, 0, "input"))
    for p, out in ctx.out_elems():
        lead = x.ndim - nsp
        for d in range(lead):
            if x.shape[d] == out.shape[d]:
                ctx.couple(x, d, out, d)


def lower_pool_module(ctx, node) -> None:
    m = ctx.module()
    name = type(m).__name__
    if isinstance(m, (nn.Upsample,)):
        nsp = ctx.tensor(arg(node, 0, "input")).ndim - 2
    else:
        nsp = spatial_rank(name)
    _lower_spatial(ctx, node, nsp)


def lower_pool_fn(ctx, node) -> None:
    name = getattr(node.target, "__name__", "")
    _lower_spatial(ctx, node, spatial_rank(name.replace("_with_indices", "")))


def lower_interpolate(ctx, node) -> None:
    _lower_spatial(ctx, node, ctx.tensor(arg(node, 0, "input")).ndim - 2)


def lower_pad(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    pad = arg(node, 1, "pad")
    if not isinstance(pad, (list, tuple)):
        return
    # an amount computed in the graph (timm's Swin pads H and W up to the window) may be anything but 0
    padded = {x.ndim - 1 - i // 2 for i, p in enumerate(pad) if not (isinstance(p, int) and p == 0)}
    for d in range(x.ndim):
        if d not in padded:
            ctx.couple(x, d, out, d)


def lower_roll(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    name = node.target if isinstance(node.target, str) else node.target.__name__
    dims = arg(node, 2 if name == "roll" else 1, "dims")
    moved = norm_dims(dims, x.ndim)
    if moved is None:
        return  # roll/flip over the flattened tensor: every dim pinned
    for d in range(x.ndim):
        if d not in moved:
            ctx.couple(x, d, out, d)


register("call_module", _POOL_MODULES, "pooling", lower_pool_module)
register("call_function", _POOL_FNS, "pooling", lower_pool_fn)
register("call_function", (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear),
         "interpolate", lower_interpolate)
register("call_function", (F.pad, torch.constant_pad_nd), "pad", lower_pad)
register("call_function", (torch.roll, torch.flip), "roll", lower_roll)
register("call_method", ("roll", "flip"), "roll", lower_roll)
