"""Stitching traced parts into one channel IR.

The parts frontend (:mod:`fxprune.frontend.partial`) traces the submodules it can and leaves the Python
around them as it is. A tensor that one part returns and another part takes, with nothing in between but
shape queries (``x.shape``, ``len(x)``, handing it on in a list or dict), is the same channels on both
sides: the two interface dims are coupled with the identity map instead of both being pinned. Anything
else the untraced code does with the tensor's values (``torch.cat``, slicing, arithmetic, returning it from
the model) keeps both ends pinned, because that code cannot be rewritten.

The recorded forward (:func:`fxprune.frontend.recording._record`) gives object identity of every module
call's inputs and outputs, every call of a module (a head shared across feature levels is called once per
level: every call's tensors are stitched to the same traced interface), and the module stack of every
value use.

:func:`combine` lays the parts' IRs side by side (full-model names), drops the interface pins of the
stitched dims, adds the identity couplings and solves once: groups and classes then span parts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ..ir import ChannelIR, DimNode, Solution

__all__ = ["Slot", "Stitching", "stitch", "combine", "BOUNDARY_REASONS"]

IN_REASON = "input of a traced submodule (the code around it is not rewritten)"
OUT_REASON = "output of a traced submodule (the code around it is not rewritten)"
# the pins that exist only because a dim is on a part's interface (lower.py pins graph inputs/outputs)
BOUNDARY_REASONS = frozenset({"model input", "model output", IN_REASON, OUT_REASON})


@dataclass
class Slot:
    """One tensor leaf of a part's interface: its traced value and the tensor it held at every call."""

    part: int
    key: Any  # the traced value key (``("value", node, path)``)
    shape: tuple[int, ...]
    tensors: list[torch.Tensor] = field(repr=False)
    output: bool


@dataclass
class Stitching:
    """Identity couplings between part interfaces: ``pairs`` of ``(part, key, part, key, dims)`` and
    ``free`` (``(part, key, dim)`` whose interface pins are dropped)."""

    pairs: list[tuple[int, Any, int, Any, list[int]]] = field(default_factory=list)
    free: set[tuple[int, Any, int]] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.pairs)


def _input_tensors(part: Any, call: tuple[tuple[Any, ...], dict[str, Any], Any]) -> list[Any] | None:
    """The tensors of one call at the part's placeholder positions (None when the call does not bind)."""
    try:
        bound = inspect.signature(part.module.forward).bind(*call[0], **call[1])
    except TypeError:
        return None
    bound.apply_defaults()
    values = list(bound.arguments.values())
    out = []
    for i, path in part.in_leaves:
        v = values[i] if i < len(values) else None
        try:
            for k in path:
                v = k.get(v)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        out.append(v)
    return out


def _slots(index: int, part: Any, calls: list[tuple[tuple[Any, ...], dict[str, Any], Any]]) -> list[Slot]:
    """Every tensor leaf of the part's inputs and outputs, with what it held at each recorded call."""
    gm, ctx = part.graph.gm, part.graph.ctx
    slots: list[Slot] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    per_call_in = [_input_tensors(part, c) for c in calls]
    if len(placeholders) == len(part.in_leaves) and all(x is not None for x in per_call_in):
        for j, node in enumerate(placeholders):
            ref = ctx.tensor(node)
            held = [x[j] for x in per_call_in]  # type: ignore[index]
            if ref is not None and all(isinstance(t, torch.Tensor) for t in held):
                slots.append(Slot(index, ref.key, tuple(ref.shape), held, False))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = pytree.tree_leaves(out_node.args[0])
    per_call_out = [pytree.tree_leaves(c[2]) for c in calls]
    if all(len(x) == len(leaves) for x in per_call_out):
        for j, node in enumerate(leaves):
            if not isinstance(node, torch.fx.Node) or node.op in ("get_attr", "placeholder"):
                continue
            ref = ctx.tensor(node)
            held = [x[j] for x in per_call_out]
            if ref is not None and ref.key[0] == "value" and all(isinstance(t, torch.Tensor) for t in held):
                slots.append(Slot(index, ref.key, tuple(ref.shape), held, True))
    return slots


def stitch(parts: list[Any], rec: Any) -> Stitching:
    """Which part interfaces carry the same tensor with only shape reads in between (see module doc)."""
    slots: list[Slot] = []
    for i, part in enumerate(parts):
        call = rec.calls.get(id(part.module))
        if call is not None and call.every:
            slots.extend(_slots(i, part, call.every))
    where: dict[int, list[int]] = {}  # tensor id -> slots holding it
    for s, slot in enumerate(slots):
        for t in slot.tensors:
            where.setdefault(id(t), []).append(s)
    clean: dict[int, bool] = {}
    for tid, held in where.items():
        holders = {id(parts[slots[s].part].module) for s in held}
        inputs = [s for s in held if not slots[s].output]
        made = any(slots[s].output and all(id(t) != tid for o in held if not slots[o].output
                                           and slots[o].part == slots[s].part for t in slots[o].tensors)
                   for s in held)
        clean[tid] = (made and bool(inputs) and tid not in rec.model_io
                      and all(holders & set(stack) for stack in rec.uses.get(tid, ())))
    out = Stitching()
    open_dims: dict[int, set[int]] = {}
    for s, slot in enumerate(slots):
        if all(clean[id(t)] for t in slot.tensors):
            open_dims[s] = {d for d in range(len(slot.shape))
                            if all(t.ndim == len(slot.shape) and t.shape[d] == slot.shape[d] for t in slot.tensors)}
    for tid, held in where.items():
        if not clean[tid]:
            continue
        first = held[0]
        for s in dict.fromkeys(held[1:]):
            if s == first:
                continue
            a, b = slots[first], slots[s]
            same = [d for d in range(len(a.shape)) if len(b.shape) == len(a.shape) and a.shape[d] == b.shape[d]]
            out.pairs.append((a.part, a.key, b.part, b.key, same))
            for x in (first, s):  # a dim left uncoupled to a slot it shares a tensor with stays pinned
                if x in open_dims:
                    open_dims[x] &= set(same)
    for s, dims in open_dims.items():
        out.free.update((slots[s].part, slots[s].key, d) for d in dims)
    return out


def _prefixed(part: Any, value: Any) -> Any:
    if value[0] == "param":
        return ("param", part.prefix + value[1])
    return ("value", part.scope + value[1], value[2])


def combine(parts: list[Any], stitching: Stitching, extra_pins: list[list[tuple[int, str]]],
            reasons: list[dict[str, str]] | None = None) -> tuple[ChannelIR, Solution]:
    """One IR over every part (full-model value keys): the parts' couplings and pins, minus the interface
    pins of stitched dims, plus the identity couplings; solved once. ``reasons[i]`` rewords part ``i``'s
    interface pins (a part's "model output" is an output of that submodule)."""
    ir = ChannelIR()
    n_dims = n_idx = 0
    for i, part in enumerate(parts):
        src = part.graph.ir
        part.dim_offset, part.index_offset = n_dims, n_idx
        for d in src.dims:
            value = _prefixed(part, d.value)
            node = DimNode(d.id + n_dims, value, d.dim, d.size, d.base + n_idx)
            ir.dims.append(node)
            ir.index[(value, d.dim)] = node.id
        ir.free.extend(src.free)
        ir._a.extend(None if a is None else a + n_idx for a in src._a)  # None: a flagged identity
        ir._b.extend(None if b is None else b + n_idx for b in src._b)
        ir._pairs.extend((x + n_dims, y + n_dims) for x, y in src._pairs)
        ir._ident.extend(src._ident)  # shifting both ends by one offset keeps an identity one
        ir.grids.extend((pd + n_dims, tuple(f + n_dims for f in fs), where) for pd, fs, where in src.grids)
        free = {src.index[(key, d)] for p, key, d in stitching.free if p == i and (key, d) in src.index}
        for did, idx, reason in list(src.pins) + [(did, None, why) for did, why in extra_pins[i]]:
            if did in free and reason in BOUNDARY_REASONS:
                continue
            ir.pins.append((did + n_dims, idx, reasons[i].get(reason, reason) if reasons else reason))
        n_dims += len(src.dims)
        n_idx += src.total
    ir.total = n_idx
    for pa, ka, pb, kb, dims in stitching.pairs:
        for d in dims:
            ia = ir.index.get((_prefixed(parts[pa], ka), d))
            ib = ir.index.get((_prefixed(parts[pb], kb), d))
            if ia is None or ib is None:
                continue
            a, b = ir.dims[ia], ir.dims[ib]
            ir.couple(a, b, np.arange(a.size), np.arange(b.size))
    return ir, ir.solve()
