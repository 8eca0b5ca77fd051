"""Sampling at computed coordinates: ``F.grid_sample`` (and the ``meshgrid`` that builds coordinates).

``grid_sample(x[N, C, *S], grid[N, *S', k])`` reads every channel of ``x`` at the same coordinates, so
channel ``c`` of the output is channel ``c`` of the input and nothing else: the channel dims couple
index-wise, the batch dims of input, grid and output couple, and the spatial dims (and the grid's
coordinate dim) are pinned by default, since removing a row would move every sample.

Example:
    >>> import torch, fxprune
    >>> class Warp(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)
    ...     def forward(self, x, grid):
    ...         return self.b(torch.nn.functional.grid_sample(self.a(x), grid, align_corners=False))
    >>> x, grid = torch.randn(1, 3, 6, 6), torch.rand(1, 5, 5, 2) * 2 - 1
    >>> g = fxprune.analyze(Warp(), (x, grid)).group_of("a.weight", 0)
    >>> g.pinned, len(g.classes), ("b.weight", 1) in g.members
    (None, 8, True)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from ._util import arg


def lower_grid_sample(ctx, node) -> None:
    x, grid, out = ctx.tensor(arg(node, 0, "input")), ctx.tensor(arg(node, 1, "grid")), ctx.out()
    if x is None or out is None:
        return
    ctx.couple(x, 0, out, 0)
    ctx.couple(x, 1, out, 1)  # every channel is sampled at the same places
    if grid is not None:
        ctx.couple(grid, 0, out, 0)


def lower_meshgrid(ctx, node) -> None:
    """Coordinate grids built from 1-D ranges carry no channels: every dim stays pinned, by name."""
    for _, ref in ctx.out_elems():
        for d in range(ref.ndim):
            ctx.pin(ref, d, "a coordinate grid (meshgrid)")


register("call_function", (F.grid_sample,), "grid_sample", lower_grid_sample)
register("call_function", (torch.meshgrid,), "meshgrid", lower_meshgrid)
