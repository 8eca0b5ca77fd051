"""Embeddings: the embedding dim is prunable; the vocabulary dim stays (ids would need remapping)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg


def _lower(ctx, ids, w, out) -> None:
    for d in range(ids.ndim):
        ctx.couple(ids, d, out, d)
    ctx.couple(out, -1, w, 1)


def lower_embedding_module(ctx, node) -> None:
    _lower(ctx, ctx.tensor(arg(node, 0, "input")), ctx.param("weight"), ctx.out())


def rewrite_embedding_module(rctx, node) -> None:
    m = rctx.module(node)
    m.embedding_dim = m.weight.shape[1]


def lower_embedding_fn(ctx, node) -> None:
    w = ctx.tensor(arg(node, 1, "weight"))
    if w is not None:
        _lower(ctx, ctx.tensor(arg(node, 0, "input")), w, ctx.out())


register("call_module", (nn.Embedding,), "embedding", lower_embedding_module, rewrite_embedding_module)
register("call_function", (F.embedding,), "functional embedding", lower_embedding_fn)
