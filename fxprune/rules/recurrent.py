"""Recurrent layers: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells.

Hidden unit ``j`` lives in a pseudo value ``[hidden]`` of the node (size H): the rows ``j, H+j, 2H+j, ...``
of every gate block of ``weight_ih``/``weight_hh``/biases, column ``j`` of ``weight_hh``, column ``j``
(and ``H+j`` when bidirectional) of the next layer's ``weight_ih``, feature ``j`` (and ``H+j``) of the
output, and the last dim of ``h_0``/``c_0``/``h_n``/``c_n``. The module has one ``hidden_size`` for every
layer and direction, so unit ``j`` of all of them is one class. Input features couple with the columns of
``weight_ih_l0``; batch dims couple index-wise; time steps and the layer/direction dim of the states are
pinned (a removed step would change the recurrence). ``proj_size > 0`` pins the hidden units.

The masked original for ``verify`` runs the module with its removed weight slices zeroed: a unit whose
gate rows are all zero stays exactly zero (LSTM: ``c' = c/2``, ``h' = 0``; GRU: ``h' = h/2``) and feeds no
other unit, which is what the pruned module computes without it.

Example:
    >>> import torch, fxprune
    >>> class Tagger(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.rnn, self.fc = torch.nn.GRU(4, 6), torch.nn.Linear(6, 2)
    ...     def forward(self, x):
    ...         return self.fc(self.rnn(x)[0])  # the hidden units feed a layer, not the model output
    >>> g = fxprune.analyze(Tagger(), torch.randn(3, 2, 4)).group_of("rnn.weight_hh_l0", 1)
    >>> g.all_classes[0]                          # unit 0: rows of the 3 gates
    ('rnn.weight_ih_l0:0', [0, 6, 12])
"""
from __future__ import annotations

from typing import Any, List

import torch.nn as nn

from .. import index_map
from ..context import TRef, pseudo
from ..registry import register
from ._util import arg

__all__ = ["masked_call"]

def _hidden(node, m: nn.Module) -> TRef:
    """The pseudo value holding the node's hidden units (one dim of size ``hidden_size``)."""
    return pseudo(node, "hidden", (m.hidden_size,))


def _states(ctx, node, pos: int, name: str) -> List[TRef]:
    hx = arg(node, pos, name)
    items = hx if isinstance(hx, (tuple, list)) else [hx]
    return [r for r in (ctx.tensor(h) for h in items) if r is not None]


def _couple_rows(ctx, hid: TRef, ref) -> None:
    """Row ``j`` of every gate block (``j, H+j, 2H+j, ...``) goes with unit ``j``."""
    if ref is not None:
        ctx.couple(ref, 0, hid, 0, index_map.stride(ref.shape[0], hid.shape[0]))


def lower_rnn(ctx, node) -> None:
    m = ctx.module()
    x = ctx.tensor(arg(node, 0, "input"))
    if x is None:  # PackedSequence: every dim it touches stays pinned
        return
    hid = _hidden(node, m)
    dirs = ["", "_reverse"] if m.bidirectional else [""]
    for sfx in dirs:
        ctx.couple(x, -1, ctx.param(f"weight_ih_l0{sfx}"), 1)
    if getattr(m, "proj_size", 0) > 0:
        why = f"{type(m).__name__} with proj_size > 0: hidden units are not pruned"
        for name, _ in m.named_parameters():
            ref = ctx.param(name)
            for d in range(ref.ndim):
                if not (name.startswith("weight_ih_l0") and d == 1):
                    ctx.pin(ref, d, why)
        return
    for k in range(m.num_layers):
        for sfx in dirs:
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                _couple_rows(ctx, hid, ctx.param(f"{p}_l{k}{sfx}"))
            ctx.couple(ctx.param(f"weight_hh_l{k}{sfx}"), 1, hid, 0)
            if k > 0:
                w = ctx.param(f"weight_ih_l{k}{sfx}")
                ctx.couple(w, 1, hid, 0, index_map.stride(w.shape[1], hid.shape[0]))
    batched = x.ndim == 3
    bdim = (0 if m.batch_first else 1) if batched else None
    out = ctx.elem(node, (0,))
    ctx.couple(out, -1, hid, 0, index_map.stride(out.shape[-1], hid.shape[0]))
    states = [ctx.elem(node, (1, i)) for i in range(2)] if isinstance(m, nn.LSTM) else [ctx.elem(node, (1,))]
    states += _states(ctx, node, 1, "hx")
    if batched:
        ctx.couple(x, bdim, out, bdim)
    for s in states:
        ctx.couple(s, -1, hid, 0)
        if batched:
            ctx.couple(s, 1, x, bdim)
    ctx.mark_stat("recurrent module evaluated with its removed weight slices zeroed")


def rewrite_rnn(rctx, node) -> None:
    m = rctx.module(node)
    if getattr(m, "proj_size", 0) > 0:
        m.input_size = m.weight_ih_l0.shape[1]
        return
    m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
    m._init_flat_weights()  # the shallow copy still listed the original tensors


def lower_cell(ctx, node) -> None:
    m = ctx.module()
    x = ctx.tensor(arg(node, 0, "input"))
    if x is None:
        return
    hid = _hidden(node, m)
    w_ih, w_hh = ctx.param("weight_ih"), ctx.param("weight_hh")
    ctx.couple(x, -1, w_ih, 1)
    for ref in (w_ih, w_hh, ctx.param("bias_ih"), ctx.param("bias_hh")):
        _couple_rows(ctx, hid, ref)
    ctx.couple(w_hh, 1, hid, 0)
    states = [r for _, r in ctx.out_elems()] + _states(ctx, node, 1, "hx")
    for s in states:
        ctx.couple(s, -1, hid, 0)
        if x.ndim == 2:
            ctx.couple(s, 0, x, 0)
    ctx.mark_stat("recurrent cell evaluated with its removed weight slices zeroed")


def rewrite_cell(rctx, node) -> None:
    m = rctx.module(node)
    m.input_size, m.hidden_size = m.weight_ih.shape[1], m.weight_hh.shape[1]


def masked_call(vctx, node, args, kwargs) -> Any:
    """``masked_eval`` for modules whose removed channels are internal: run the zeroed copy."""
    return vctx.masked_module(node)(*args, **kwargs)


register("call_module", (nn.LSTM, nn.GRU, nn.RNN), "recurrent", lower_rnn, rewrite_rnn, masked_call)
register("call_module", (nn.LSTMCell, nn.GRUCell, nn.RNNCell), "recurrent cell", lower_cell, rewrite_cell,
         masked_call)
