"""Attention: ``F.scaled_dot_product_attention`` (torch- and aten-level) and ``nn.MultiheadAttention``.

SDPA, ``q [..., Hq, L, E]``, ``k [..., H, S, E]``, ``v [..., H, S, Ev]`` -> ``out [..., Hq, L, Ev]``:
``q[-1] ~ k[-1]`` (a zero head-dim channel adds nothing to ``q·k``), ``v[-1] ~ out[-1]``, ``q[-2] ~ out[-2]``
(query rows are independent; pinned under ``is_causal``, whose mask aligns rows with key positions),
batch/head dims index-wise (GQA: query heads are the grid of kv heads and the group, see
:mod:`fxprune.grid`: whole kv groups and the same query heads in every group can go). Key positions are
pinned: a zeroed key still takes softmax weight, so zeroing one is not removing it. When the head dim
shrinks and ``scale`` is None, the rewrite passes the original ``1/sqrt(E)``.

``nn.MultiheadAttention`` (a leaf module): the embed dims of query/key/value couple with the in-projection
columns, the output with ``out_proj`` rows. Its internal dims live in two pseudo values of the node:
``[qk]`` ``(H, dq)`` and ``[v]`` ``(H, dv)``; the q, k and v rows are grids of them (:mod:`fxprune.grid`):
head dim ``j`` of q and k in every head is one class, head dim ``j`` of v in every head with the matching
``out_proj`` columns another (``group.all_classes``), and a whole head (q, k, v rows and ``out_proj``
columns) is a head class (``group.head_classes``); one plan may remove both.
Sequence positions are pinned; batch dims couple index-wise. The rewrite replaces the module by
:class:`fxprune.modules.PrunedMultiheadAttention` under the same name (``nn.MultiheadAttention`` forces
its internal width to equal ``embed_dim``), keeping the original softmax scale. For ``verify`` the
original runs with its removed projection slices zeroed (averaged attention weights: over kept heads).

Example:
    >>> import torch, fxprune
    >>> class Block(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    ...     def forward(self, x):
    ...         return self.attn(x, x, x)[0]
    >>> g = fxprune.analyze(Block(), torch.randn(1, 5, 8)).group_of("attn.in_proj_weight", 0)
    >>> len(g.all_classes), len(g.head_classes)  # 4 q/k head dims + 4 v head dims; 2 heads
    (8, 2)
"""
from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..context import TRef
from ..modules import PrunedMultiheadAttention
from ..registry import register
from ._util import arg, set_arg

__all__: List[str] = []

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
            elif ref is v and od == out.ndim - 3 and out.shape[od] % ref.shape[d] == 0 \
                    and k.shape[d] == ref.shape[d]:
                # GQA: query head (i, j) reads kv head i; kv groups and the j-th head of every group go
                ctx.couple(k, d, v, d)
                group = TRef(("value", node.name, ("gqa",)), (out.shape[od] // ref.shape[d],))
                ctx.grid(out, od, [(k, d), (group, 0)])
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


def rewrite_sdpa(rctx, node) -> None:
    q = rctx.tensor(arg(node, 0, "query"))
    if arg(node, 6, "scale") is None and q is not None and len(rctx.removed(q, -1)):
        set_arg(node, 6, "scale", 1.0 / math.sqrt(q.shape[-1]))


register("call_function", _SDPA, "scaled_dot_product_attention", lower_sdpa, rewrite_sdpa)


# ------------------------------------------------------------------------------------ MultiheadAttention

def _sizes(m: nn.Module):
    """``(num_heads, q/k head dim, v head dim, scale)`` of an nn.MultiheadAttention or its pruned form."""
    if isinstance(m, PrunedMultiheadAttention):
        return m.num_heads, m.qk_head_dim, m.v_head_dim, m.scale
    return m.num_heads, m.head_dim, m.head_dim, 1.0 / math.sqrt(m.head_dim)


def _units(node, m: nn.Module) -> List[TRef]:
    """Pseudo values ``[qk]`` ``(H, dq)`` and ``[v]`` ``(H, dv)``: the node's internal q/k and v channels."""
    h, dq, dv, _ = _sizes(m)
    return [TRef(("value", node.name, ("qk",)), (h, dq)), TRef(("value", node.name, ("v",)), (h, dv))]


def _mparam(ctx, m: nn.Module, path: str) -> Optional[TRef]:
    try:
        t = m.get_parameter(path)
    except AttributeError:
        t = getattr(m, path, None)
    if not isinstance(t, torch.Tensor):
        return None
    return ctx.param_ref(f"{ctx.node.target}.{path}", t)


def lower_mha(ctx, node) -> None:
    m = ctx.module()
    ins = [ctx.tensor(arg(node, i, n)) for i, n in enumerate(("query", "key", "value"))]
    out = ctx.elem(node, (0,))
    if any(r is None for r in ins) or out is None:
        return
    qi, ki, vi = ins
    h, dq, dv, _ = _sizes(m)
    nq, nv = h * dq, h * dv
    qk, vu = _units(node, m)
    ctx.couple(qk, 0, vu, 0)  # q, k and v share their heads
    grids = {}
    for kind, unit, n in (("q", qk, nq), ("k", qk, nq), ("v", vu, nv)):
        grids[kind] = TRef(("value", node.name, (f"{kind}rows",)), (n,))
        ctx.grid(grids[kind], 0, [(unit, 0), (unit, 1)])

    def rows(ref, d: int, parts) -> None:
        """Couple dim ``d`` of ``ref``; ``parts`` = [(offset, n, "q"|"k"|"v")] along that dim."""
        for off, n, kind in parts:
            r = np.arange(n, dtype=np.int64)
            ctx.couple(ref, d, grids[kind], 0, (r + off, r))

    packed = [(0, nq, "q"), (nq, nq, "k"), (2 * nq, nv, "v")]
    w = _mparam(ctx, m, "in_proj_weight")
    if w is not None:
        for r in ins:
            ctx.couple(r, -1, w, 1)
        rows(w, 0, packed)
    else:
        sep = (("q_proj_weight", (0, nq, "q")), ("k_proj_weight", (0, nq, "k")),
               ("v_proj_weight", (0, nv, "v")))
        for r, (name, part) in zip(ins, sep, strict=True):
            wp = _mparam(ctx, m, name)
            ctx.couple(r, -1, wp, 1)
            rows(wp, 0, [part])
    b = _mparam(ctx, m, "in_proj_bias")
    if b is not None:
        rows(b, 0, packed)
    for name, part in (("bias_k", (0, nq, "k")), ("bias_v", (0, nv, "v"))):
        ref = _mparam(ctx, m, name)
        if ref is not None:
            rows(ref, 2, [part])
    ow, ob = _mparam(ctx, m, "out_proj.weight"), _mparam(ctx, m, "out_proj.bias")
    rows(ow, 1, [(0, nv, "v")])
    ctx.couple(ow, 0, out, -1)
    if ob is not None:
        ctx.couple(ob, 0, out, -1)
    # batch dims index-wise; sequence positions stay (a zeroed key still takes softmax weight)
    weights = ctx.elem(node, (1,))
    batched = qi.ndim == 3
    if batched:
        bd = 0 if m.batch_first else 1
        for r in (ki, vi, out):
            ctx.couple(qi, bd, r, bd)
        if weights is not None:
            ctx.couple(weights, 0, qi, bd)
    if weights is not None and weights.ndim == (4 if batched else 3):
        ctx.couple(weights, -3, qk, 0)
    mask = ctx.tensor(arg(node, 5, "attn_mask"))
    if mask is not None and mask.ndim == 3:
        ctx.pin(qk, 0, "a 3-D attn_mask interleaves batch and heads")
    ctx.mark_stat("attention evaluated with its removed projection rows zeroed")


def masked_mha(vctx, node, args, kwargs) -> Any:
    """The original module with removed q/k/v/out_proj slices zeroed; averaged attention weights are
    averaged over the kept heads only (a head with zero q and k would still add uniform weights)."""
    m = vctx.masked_module(node)
    qk = _units(node, vctx.module(node))[0]
    kept = vctx.kept(qk, 0)
    args, kwargs = list(args), dict(kwargs)
    need = args[4] if len(args) > 4 else kwargs.get("need_weights", True)
    avg = args[6] if len(args) > 6 else kwargs.get("average_attn_weights", True)
    if kept is None or not need or not avg:
        return m(*args, **kwargs)
    if len(args) > 6:
        args[6] = False
    else:
        kwargs["average_attn_weights"] = False
    out, w = m(*args, **kwargs)
    return out, w.index_select(-3, kept.to(w.device)).mean(dim=-3)


def rewrite_mha(rctx, node) -> None:
    orig = rctx.original(node)
    m = rctx.module(node)
    h, dq, dv, scale = _sizes(orig)
    qk, v = _units(node, orig)
    h, dq, dv = h - len(rctx.removed(qk, 0)), dq - len(rctx.removed(qk, 1)), dv - len(rctx.removed(v, 1))
    same = [tuple(p.shape) for p in m.parameters()] == [tuple(p.shape) for p in orig.parameters()]
    if same and isinstance(m, type(orig)):
        return
    rctx.replace_module(m, PrunedMultiheadAttention.from_module(m, h, dq, dv, scale))


_MHA = (nn.MultiheadAttention, PrunedMultiheadAttention)
register("call_module", _MHA, "multihead attention", lower_mha, rewrite_mha, masked_mha)
