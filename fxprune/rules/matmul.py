"""Matrix products: ``matmul``/``@``/``bmm``/``mm`` and ``einsum``.

Contracted dims couple (a zero channel contributes nothing to a sum of products), free dims couple with
the output, batch dims couple under broadcasting.
"""
from __future__ import annotations

import operator
from typing import Dict, List, Tuple

import torch

from ..registry import register
from ._util import arg


def _batch(ctx, out, ref, nb_ref: int) -> None:
    off = out.ndim - 2 - nb_ref if out.ndim >= 2 else 0
    for d in range(nb_ref):
        od = d + off
        if 0 <= od < out.ndim and ref.shape[d] == out.shape[od] and ref.shape[d] != 1:
            ctx.couple(ref, d, out, od)


def lower_matmul(ctx, node) -> None:
    a, b = ctx.tensor(arg(node, 0, "input")), ctx.tensor(arg(node, 1, "other"))
    out = ctx.out()
    if a is None or b is None or out is None:
        return
    if a.ndim == 1 and b.ndim == 1:
        ctx.couple(a, 0, b, 0)
    elif a.ndim == 1:
        ctx.couple(a, 0, b, -2)
        ctx.couple(out, -1, b, -1)
        _batch_vec(ctx, out, b, b.ndim - 2, out.ndim - 1)
    elif b.ndim == 1:
        ctx.couple(a, -1, b, 0)
        ctx.couple(out, -1, a, -2)
        _batch_vec(ctx, out, a, a.ndim - 2, out.ndim - 1)
    else:
        ctx.couple(a, -1, b, -2)
        ctx.couple(out, -2, a, -2)
        ctx.couple(out, -1, b, -1)
        _batch(ctx, out, a, a.ndim - 2)
        _batch(ctx, out, b, b.ndim - 2)


def _batch_vec(ctx, out, ref, nb: int, out_nb: int) -> None:
    for d in range(nb):
        od = out_nb - nb + d
        if 0 <= od < out.ndim and ref.shape[d] == out.shape[od] and ref.shape[d] != 1:
            ctx.couple(ref, d, out, od)


def _parse(eq: str, ndims: List[int]) -> Tuple[List[str], str]:
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    ins = lhs.split(",")
    letters = [c for c in lhs if c.isalpha()]
    spare = iter(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in letters)
    ell = ""
    if "..." in eq:
        n_ell = max(nd - len(s.replace("...", "")) for s, nd in zip(ins, ndims) if "..." in s)
        ell = "".join(next(spare) for _ in range(n_ell))
        ins = [s.replace("...", ell[len(ell) - (nd - len(s.replace("...", ""))):]) for s, nd in zip(ins, ndims)]
        rhs = rhs.replace("...", ell)
    if "->" not in eq:
        counts: Dict[str, int] = {}
        for s in ins:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        rhs = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    return ins, rhs


def lower_einsum(ctx, node) -> None:
    eq = node.args[0]
    ops = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
    refs = [ctx.tensor(o) for o in ops]
    out = ctx.out()
    if not isinstance(eq, str) or any(r is None for r in refs) or out is None:
        return
    ins, rhs = _parse(eq, [r.ndim for r in refs])
    where: Dict[str, List[Tuple[object, int]]] = {}
    for r, s in zip(refs, ins):
        for d, c in enumerate(s):
            where.setdefault(c, []).append((r, d))
    for d, c in enumerate(rhs):
        where.setdefault(c, []).append((out, d))
    for c, occ in where.items():
        full = [(r, d) for r, d in occ if r.shape[d] != 1]
        for (r0, d0), (r1, d1) in zip(full, full[1:]):
            if r0.shape[d0] == r1.shape[d1]:
                ctx.couple(r0, d0, r1, d1)


register("call_function", (torch.matmul, operator.matmul, torch.bmm, torch.mm), "matmul", lower_matmul)
register("call_method", ("matmul", "bmm", "mm", "__matmul__"), "matmul", lower_matmul)
register("call_function", (torch.einsum,), "einsum", lower_einsum)
