"""Lowering: run one op rule per FX node to build the channel IR.

Rules talk to a :class:`LowerCtx`: ``ctx.tensor(arg)`` gives a :class:`TRef` (a value and its shape),
``ctx.couple(a, da, b, db, pairs)`` adds an index map, ``ctx.pin(ref, d, why)`` forbids removal. After a
rule ran, every dim of the node's tensor inputs and outputs that the rule did not mention is pinned: an
op only lets through what its rule proves safe.

Example:
    >>> import torch, fxprune
    >>> from fxprune.lower import lower_graph
    >>> gm = fxprune.trace(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> ctx, sol = lower_graph(gm)
    >>> sorted(d.name for d in ctx.ir.dims if d.is_param)
    ['bias', 'weight', 'weight']
"""
from __future__ import annotations

import logging
import warnings
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx
from torch.fx.node import map_aggregate

from . import index_map
from .context import TRef
from .errors import FxpruneError, InternalError, UnsupportedOpError, user_stacklevel
from .ir import ChannelIR, DimNode, Solution
from .record import record_of
from .registry import lookup

__all__ = ["TRef", "LowerCtx", "lower_nodes", "lower_graph", "node_label", "target_name", "share_warnings"]

log = logging.getLogger(__name__)


def target_name(t: Any) -> str:
    """A readable dotted name for a call target (``torch.nn.functional.relu``, ``aten.add.Tensor``).

    pybind11 functions carry a mangled ``__qualname__`` (``pybind11_detail_function_record_...``) and
    torch's own builtins a class-qualified one (``_VariableFunctionsClass.relu``): their ``__name__`` is
    what the user wrote.

    Example:
        >>> import torch
        >>> F = torch.nn.functional
        >>> target_name(torch.relu), target_name(F.gelu), target_name(torch.ops.aten.add.Tensor)
        ('torch.relu', 'torch._C._nn.gelu', 'aten.add.Tensor')
    """
    if isinstance(t, str):
        return t
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(t)
    name = getattr(t, "__name__", None) or str(t)
    qual = getattr(t, "__qualname__", None) or name
    if "pybind11" in qual or "<" in qual or qual.startswith("_VariableFunctions"):
        qual = name
    module = getattr(t, "__module__", None) or ""
    return f"{module}.{qual}" if module else qual


def node_label(node: torch.fx.Node) -> str:
    """``call_function torch.nn.functional.relu`` style description of an op."""
    t = node.target
    if node.op == "call_module":
        t = type(node.graph.owning_module.get_submodule(node.target)).__qualname__
    elif callable(t):
        t = target_name(t)
    return f"{node.op} {t}"


# A rule-less op is named once per user model, however often that model is analysed again (prune,
# verify, the whole-head re-analysis, every Pruner step and budget probe): graphs traced from a model, and
# models pruned from those, share the model's record.
_ROOT: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_WARNED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def share_warnings(new: torch.nn.Module, old: torch.nn.Module) -> None:
    """``new`` (traced or pruned from ``old``) shares ``old``'s record of ops already warned about."""
    if new is not old:
        _ROOT[new] = _ROOT.get(old, old)


def _warned(gm: torch.nn.Module) -> set:
    return _WARNED.setdefault(_ROOT.get(gm, gm), set())


class LowerCtx:
    """What a rule sees while lowering one node (a :class:`fxprune.context.LowerContext`)."""

    def __init__(self, gm: torch.fx.GraphModule, strict: bool):
        self.gm = gm
        self.ir = ChannelIR()
        self.strict = strict
        self.modules = dict(gm.named_modules(remove_duplicate=False))
        self.canonical: Dict[str, str] = {}
        seen: Dict[int, str] = {}
        rec = record_of(gm, create=False)
        constants = rec.constants if rec is not None else ()
        for name, t in list(gm.named_parameters(remove_duplicate=False)) + list(
                gm.named_buffers(remove_duplicate=False)):
            if name not in constants:  # tensors the tracer stowed away are constants, not the model's state
                self.canonical[name] = seen.setdefault(id(t), name)
        self.param_rank = {name: i for i, name in enumerate(dict.fromkeys(self.canonical.values()))}
        self.first_use: Dict[str, int] = {}
        self.unknown: Dict[str, List[str]] = {}
        self.pinned_by: Dict[int, set] = {}  # dim id -> nodes whose rule pinned that whole dim
        self.stat_nodes: Dict[str, str] = {}
        self.node: Optional[torch.fx.Node] = None
        self.node_index = 0
        self._touched: set = set()

    # -- values ---------------------------------------------------------------------------------
    def tensor(self, arg: Any) -> Optional[TRef]:
        """The TRef of an argument when it is a tensor-valued node, else None."""
        if not isinstance(arg, torch.fx.Node):
            return None
        val = arg.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        if arg.op == "get_attr" and arg.target in self.canonical:
            return self.param_ref(arg.target, val)
        return TRef(("value", arg.name, ()), tuple(val.shape))

    def elem(self, node: torch.fx.Node, path: Tuple[int, ...]) -> Optional[TRef]:
        """The TRef of element ``path`` of a node's tuple/list output."""
        val = node.meta.get("val")
        for i in path:
            if not isinstance(val, (tuple, list)) or i >= len(val):
                return None
            val = val[i]
        if not isinstance(val, torch.Tensor):
            return None
        return TRef(("value", node.name, tuple(path)), tuple(val.shape))

    def out(self) -> Optional[TRef]:
        """The current node's output when it is a tensor."""
        return self.tensor(self.node)

    def out_elems(self) -> List[Tuple[Tuple[int, ...], TRef]]:
        """Every tensor in the current node's output, with its path (``()`` for a plain tensor)."""
        return [(p, r) for p, r in _tensor_paths(self, self.node)]

    def module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        return self.modules[(node or self.node).target]

    def param(self, attr: str, node: Optional[torch.fx.Node] = None) -> Optional[TRef]:
        """Parameter/buffer ``attr`` of a call_module node's module (the current node's by default; None
        when absent)."""
        node = node or self.node
        t = getattr(self.modules[node.target], attr, None)
        if not isinstance(t, torch.Tensor):
            return None
        return self.param_ref(f"{node.target}.{attr}", t)

    def param_ref(self, qualname: str, t: torch.Tensor) -> TRef:
        """The TRef of the parameter/buffer ``t`` at ``qualname`` (a path into a module a rule walks)."""
        name = self.canonical.get(qualname, qualname)
        self.first_use.setdefault(name, self.node_index)
        return TRef(("param", name), tuple(t.shape))

    def dim(self, ref: TRef, d: int) -> DimNode:
        d = d % ref.ndim
        return self.ir.dim(ref.key, d, ref.shape[d])

    # -- couplings ------------------------------------------------------------------------------
    def couple(self, a: TRef, da: int, b: TRef, db: int,
               pairs: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None:
        """Couple dim ``da`` of ``a`` with dim ``db`` of ``b`` (identity map unless ``pairs`` given)."""
        da, db = da % a.ndim, db % b.ndim
        ident = pairs is None
        if ident:
            if a.shape[da] != b.shape[db]:
                raise InternalError(f"identity coupling of sizes {a.shape[da]} and {b.shape[db]}", self.node)
            pairs = _identity(a.shape[da])
        self.ir.couple(self.dim(a, da), self.dim(b, db), pairs[0], pairs[1], identity=ident)
        self._touched.add((a.key, da))
        self._touched.add((b.key, db))

    def couple_all(self, a: TRef, b: TRef) -> None:
        """Identity on every dim of two same-shaped values."""
        for d in range(a.ndim):
            self.couple(a, d, b, d)

    def broadcast(self, out: TRef, inp: TRef) -> None:
        """Couple ``inp`` to ``out`` under broadcasting (right-aligned; size-1 dims stay pinned)."""
        off = out.ndim - inp.ndim
        for d in range(inp.ndim):
            if inp.shape[d] == out.shape[d + off] and inp.shape[d] != 1:
                self.couple(inp, d, out, d + off)

    def pin(self, ref: TRef, d: int, reason: str) -> None:
        d = d % ref.ndim
        dim = self.dim(ref, d)
        self.ir.pin(dim, reason)
        self.pinned_by.setdefault(dim.id, set()).add(self.node.name)
        self._touched.add((ref.key, d))

    def touch(self, ref: TRef, d: Optional[int] = None) -> None:
        """Declare a dim handled without coupling it (e.g. read only through ``x.size()``)."""
        for dd in (range(ref.ndim) if d is None else [d % ref.ndim]):
            self._touched.add((ref.key, dd))

    def grid(self, product: TRef, pd: int, factors: Sequence[Tuple[TRef, int]]) -> None:
        """Dim ``pd`` of ``product`` is the row-major product of the ``(ref, dim)`` factors, outer first
        (see :mod:`fxprune.grid`): it keeps a sub-grid of them, whole heads and head dims alike."""
        dims = [self.dim(r, d) for r, d in factors]
        self.ir.grid(self.dim(product, pd), dims, self.node.name if self.node is not None else "")
        self._touched.add((product.key, pd % product.ndim))
        for r, d in factors:
            self._touched.add((r.key, d % r.ndim))

    def mark_stat(self, reason: str) -> None:
        """This node computes statistics over a prunable dim (verify recomputes it over kept channels)."""
        self.stat_nodes[self.node.name] = reason

    # -- driver ---------------------------------------------------------------------------------
    def lower_node(self, node: torch.fx.Node) -> None:
        self.node = node
        self._touched = set()
        if node.op == "placeholder":
            for _, ref in _tensor_paths(self, node):
                for d in range(ref.ndim):
                    self.pin(ref, d, "model input")
            return
        if node.op == "output":
            for ref in _arg_tensors(self, node):
                for d in range(ref.ndim):
                    self.pin(ref, d, "model output")
            seen: set = set()  # a node returning a tuple (``return self.lstm(x)``) is output whole

            def whole(a: Any) -> Any:
                if isinstance(a, torch.fx.Node) and a.name not in seen and \
                        isinstance(a.meta.get("val"), (tuple, list)):
                    seen.add(a.name)
                    for _, ref in _tensor_paths(self, a):
                        for d in range(ref.ndim):
                            self.pin(ref, d, "model output")
                return a
            map_aggregate(node.args, whole)
            return
        if node.op == "get_attr":
            ref = self.tensor(node)
            if ref is not None and ref.key[0] != "param":
                for d in range(ref.ndim):
                    self.pin(ref, d, f"constant tensor {node.target}")
            return
        target = type(self.modules[node.target]) if node.op == "call_module" else node.target
        rule = lookup(node.op, target)
        if rule is None:
            ins = _arg_tensors(self, node)
            outs = _tensor_paths(self, node)
            if not ins and not outs:
                return  # pure Python on sizes and constants
            label = node_label(node)
            if self.strict:
                raise UnsupportedOpError(f"no fxprune rule for {label}; its dims would be pinned", node)
            self.unknown.setdefault(label, []).append(node.name)
        else:
            try:
                rule.lower(self, node)
            except FxpruneError:
                raise
            except Exception as e:  # a rule that cannot read this call's arguments is our bug, named
                raise InternalError(f"rule {rule.name!r} failed on {node_label(node)}: "
                                    f"{type(e).__name__}: {e}", node) from e
        self._autopin(node, rule.name if rule else None)

    def _autopin(self, node: torch.fx.Node, rule_name: Optional[str]) -> None:
        what = rule_name or node_label(node)
        for ref in _arg_tensors(self, node):
            for d in range(ref.ndim):
                if (ref.key, d) not in self._touched:
                    self.pin(ref, d, f"dim {d} of an input to {what} ({node.name})")
        for _, ref in _tensor_paths(self, node):
            for d in range(ref.ndim):
                if (ref.key, d) not in self._touched:
                    self.pin(ref, d, f"dim {d} produced by {what} ({node.name})")


_IDENTITY: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}


def _identity(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``index_map.identity(n)``, shared and read-only: most couplings are identities of a few sizes."""
    pairs = _IDENTITY.get(n)
    if pairs is None:
        a = index_map.identity(n)[0]
        a.flags.writeable = False
        pairs = _IDENTITY[n] = (a, a)
    return pairs


def _tensor_paths(ctx: LowerCtx, node: torch.fx.Node) -> List[Tuple[Tuple[int, ...], TRef]]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        ref = ctx.tensor(node)
        return [((), ref)] if ref is not None else []
    out: List[Tuple[Tuple[int, ...], TRef]] = []

    def walk(v: Any, path: Tuple[int, ...]) -> None:
        if isinstance(v, torch.Tensor):
            out.append((path, TRef(("value", node.name, path), tuple(v.shape))))
        elif isinstance(v, (tuple, list)):
            for i, x in enumerate(v):
                walk(x, path + (i,))
    if isinstance(val, (tuple, list)):
        walk(val, ())
    return out


def _arg_tensors(ctx: LowerCtx, node: torch.fx.Node) -> List[TRef]:
    refs: List[TRef] = []
    seen = set()

    def visit(a: Any) -> Any:
        r = ctx.tensor(a)
        if r is not None and r.key not in seen:
            seen.add(r.key)
            refs.append(r)
        return a
    map_aggregate(node.args, visit)
    map_aggregate(node.kwargs, visit)
    return refs


def lower_nodes(gm: torch.fx.GraphModule, strict: bool = False) -> LowerCtx:
    """Lower every node of a shape-annotated GraphModule through its op rule (the IR, not yet solved);
    ops without a rule are named in one warning per model."""
    from . import rules  # noqa: F401  (registers every rule family)

    ctx = LowerCtx(gm, strict)
    for i, node in enumerate(gm.graph.nodes):
        ctx.node_index = i
        ctx.lower_node(node)
    warned = _warned(gm)
    new = {k: v for k, v in ctx.unknown.items() if k not in warned}
    if new:
        warned.update(new)
        lines = "; ".join(f"{k} (nodes {', '.join(v[:3])}{'...' if len(v) > 3 else ''})"
                          for k, v in new.items())
        warnings.warn(f"fxprune: no rule for {len(new)} op(s); every dim they touch is pinned: {lines}",
                      stacklevel=user_stacklevel())
    return ctx


def lower_graph(gm: torch.fx.GraphModule, strict: bool = False) -> Tuple[LowerCtx, Solution]:
    """Lower every node of a shape-annotated GraphModule and solve the IR (one pass: a reshape that
    factors a dim is a grid constraint, not a choice of one factor)."""
    ctx = lower_nodes(gm, strict)
    return ctx, ctx.ir.settle()
