"""Attention: ``F.scaled_dot_product_attention`` (torch- and aten-level).

SDPA, ``q [..., Hq, L, E]``, ``k [..., H, S, E]``, ``v [..., H, S, Ev]`` -> ``out [..., Hq, L, Ev]``:
``q[-1] ~ k[-1]`` (a zero head-dim channel adds nothing to ``q·k``), ``v[-1] ~ out[-1]``, ``q[-2] ~ out[-2]``
(query rows are independent; pinned under ``is_causal``, whose mask aligns rows with key positions),
batch/head dims index-wise (GQA: query head ``i`` goes with kv head ``i // (Hq/H)``). Key positions are
pinned: a zeroed key still takes softmax weight, so zeroing one is not removing it. When the head dim
shrinks and ``scale`` is None, the rewrite passes the original ``1/sqrt(E)``.

"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import index_map
from ..registry import register
from ._util import arg, set_arg

__all__: list = []

# ----------------------------------------------------------------------------------------------- SDPA

_SDPA = (F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default)


def lower_sdpa(ctx, node) -> None:
    q, k, v = (ctx.tensor(arg(node, i, n)) for i, n in enumerate(("query", "key", "value")))
    out = ctx.out()
    if q is None or k is None or v is None or out is None or min(q.ndim, k.ndim, v.ndim) < 2:
        return
    causal = arg(node, 5, "is_causal", False)
    ctx.couple(q, -1, k, -1)
    ctx.couple(v, -1, out, -1)
    if causal is False:
        ctx.couple(q, -2, out, -2)
    else:
        ctx.pin(q, -2, "is_causal aligns query rows with key positions")
    why = "a zeroed key position still takes softmax weight (it is not removed by zeroing)"
    ctx.pin(k, -2, why)
    ctx.couple(k, -2, v, -2)
    for ref in (q, k, v):  # batch and head dims, right-aligned with the output's
        for d in range(ref.ndim - 2):
            od = out.ndim - ref.ndim + d
            if od < 0 or ref.shape[d] == 1:
                continue
            if ref.shape[d] == out.shape[od]:
                ctx.couple(ref, d, out, od)
            elif ref is not q and od == out.ndim - 3 and out.shape[od] % ref.shape[d] == 0:
                g = out.shape[od] // ref.shape[d]  # GQA: query head i reads kv head i // g
                ctx.couple(out, od, ref, d, index_map.factor(out.shape[od], g, ref.shape[d]))
    mask = ctx.tensor(arg(node, 3, "attn_mask"))
    if mask is not None:
        for d in range(mask.ndim):
            od = out.ndim - mask.ndim + d
            if mask.shape[d] == 1 or od < 0:
                continue
            if d == mask.ndim - 1:
                if mask.shape[d] == k.shape[-2]:
                    ctx.couple(mask, d, k, -2)
            elif mask.shape[d] == out.shape[od]:
                ctx.couple(mask, d, out, od)


def rewrite_sdpa(node, rctx) -> None:
    q = rctx.tensor(arg(node, 0, "query"))
    if arg(node, 6, "scale") is None and q is not None and len(rctx.removed(q, -1)):
        set_arg(node, 6, "scale", 1.0 / math.sqrt(q.shape[-1]))


register("call_function", _SDPA, "scaled_dot_product_attention", lower_sdpa, rewrite_sdpa)
