"""Linear layers: ``nn.Linear`` and ``F.linear`` (any weight: parameter or computed value)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg


def _lower_linear(ctx, x, w, b, out) -> None:
    for d in range(x.ndim - 1):
        ctx.couple(x, d, out, d)
    if w.ndim == 1:  # F.linear with a vector weight: a dot product over the last dim
        ctx.couple(x, -1, w, 0)
        return
    ctx.couple(x, -1, w, 1)
    ctx.couple(out, -1, w, 0)
    if b is not None:
        ctx.couple(b, 0, out, -1)


def lower_linear_module(ctx, node) -> None:
    _lower_linear(ctx, ctx.tensor(arg(node, 0, "input")), ctx.param("weight"), ctx.param("bias"), ctx.out())


def rewrite_linear_module(rctx, node) -> None:
    m = rctx.module(node)
    m.out_features, m.in_features = rctx.new_shape(rctx.param("weight", node))


def lower_linear_fn(ctx, node) -> None:
    w = ctx.tensor(arg(node, 1, "weight"))
    if w is not None:
        _lower_linear(ctx, ctx.tensor(arg(node, 0, "input")), w, ctx.tensor(arg(node, 2, "bias")), ctx.out())


register("call_module", (nn.Linear,), "linear", lower_linear_module, rewrite_linear_module)
register("call_function", (F.linear,), "functional linear", lower_linear_fn)
