"""The rule contract in one place: what an op rule's three functions see, always as ``(ctx, node, ...)``.

A rule (:func:`fxprune.registry.register`) has up to three functions, called in the same argument order:

- ``lower(ctx: LowerContext, node)`` declares couplings and pins (:class:`fxprune.lower.LowerCtx`);
- ``rewrite(ctx: RewriteContext, node)`` updates the node's constants and its pruned module;
- ``masked_eval(ctx: MaskedContext, node, args, kwargs)`` computes the node over the kept channels (verify).

All three contexts answer ``ctx.tensor(arg)`` (a :class:`TRef`), ``ctx.module(node=None)`` and
``ctx.param(attr, node=None)``; ``node`` defaults to the node being processed (``ctx.node``). Rules use only
these public methods and the helpers here, never each other or a context's private attributes.

Example:
    >>> import torch, fxprune
    >>> from fxprune.context import TRef, pseudo
    >>> gm = fxprune.trace(torch.nn.Sequential(torch.nn.GRU(4, 3)), torch.randn(5, 1, 4))
    >>> node = next(n for n in gm.graph.nodes if n.op == "call_module")
    >>> pseudo(node, "hidden", (3,))          # the GRU's hidden units: a value with no tensor
    TRef(key=('value', '_0', ('hidden',)), shape=(3,))
    >>> TRef(("param", "weight"), (3, 4)).ndim
    2
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
import torch.fx

from .ir import ValueKey

if TYPE_CHECKING:  # only for annotations: analyze imports lower, which imports this module
    from .analyze import ChannelGraph, Expansion

__all__ = ["TRef", "pseudo", "RuleContext", "LowerContext", "RewriteContext", "MaskedContext", "RewriteCtx",
           "MaskedCtx", "LowerFn", "RewriteFn", "MaskedFn"]


@dataclass(frozen=True)
class TRef:
    """A tensor value of the graph (or a parameter/buffer) and its shape."""

    key: ValueKey
    shape: Tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def pseudo(node: Any, tag: str, shape: Tuple[int, ...]) -> TRef:
    """A value the op holds inside (hidden units, heads, a conv's groups) with no tensor in the graph;
    ``node`` is the node or its name. Couple it like any tensor: its dims group what it stands for."""
    name = node if isinstance(node, str) else node.name
    return TRef(("value", name, (tag,)), tuple(shape))


class RuleContext(Protocol):
    """What every phase answers."""

    node: Optional[torch.fx.Node]

    def tensor(self, arg: Any) -> Optional[TRef]:
        """The TRef of a tensor-valued argument (None for anything else)."""

    def module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        """The module a ``call_module`` node calls (lower, masked: the original; rewrite: the pruned copy)."""

    def param(self, attr: str, node: Optional[torch.fx.Node] = None) -> Optional[TRef]:
        """Parameter/buffer ``attr`` of that module (None when absent)."""


class LowerContext(RuleContext, Protocol):
    """Lowering (:class:`fxprune.lower.LowerCtx`): declare couplings, pins and grids."""

    def out(self) -> Optional[TRef]: ...
    def elem(self, node: torch.fx.Node, path: Tuple[int, ...]) -> Optional[TRef]: ...
    def out_elems(self) -> List[Tuple[Tuple[int, ...], TRef]]: ...
    def param_ref(self, qualname: str, t: torch.Tensor) -> TRef: ...
    def couple(self, a: TRef, da: int, b: TRef, db: int,
               pairs: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None: ...
    def couple_all(self, a: TRef, b: TRef) -> None: ...
    def broadcast(self, out: TRef, inp: TRef) -> None: ...
    def pin(self, ref: TRef, d: int, reason: str) -> None: ...
    def touch(self, ref: TRef, d: Optional[int] = None) -> None: ...
    def grid(self, product: TRef, pd: int, factors: Sequence[Tuple[TRef, int]]) -> None: ...
    def mark_stat(self, reason: str) -> None: ...


class RewriteContext(RuleContext, Protocol):
    """Rewriting: the removed indices and new shapes, the pruned modules."""

    def removed(self, ref: TRef, d: int) -> np.ndarray: ...
    def new_shape(self, ref: TRef) -> Tuple[int, ...]: ...
    def out_elems(self, node: Optional[torch.fx.Node] = None) -> List[TRef]: ...
    def original(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module: ...
    def module_at(self, name: str) -> Optional[torch.nn.Module]: ...
    def replace_module(self, old: torch.nn.Module, new: torch.nn.Module) -> None: ...


class MaskedContext(RuleContext, Protocol):
    """Masked evaluation (verify): the kept indices, the original module with removed slices zeroed."""

    def kept(self, ref: TRef, d: int) -> Optional[torch.Tensor]: ...
    def masked_module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module: ...


LowerFn = Callable[[LowerContext, torch.fx.Node], None]
RewriteFn = Callable[[RewriteContext, torch.fx.Node], None]
MaskedFn = Callable[[MaskedContext, torch.fx.Node, Tuple[Any, ...], Dict[str, Any]], Any]


class _GraphCtx:
    """Shared by the rewrite and masked contexts: an analysed graph and one expansion of a plan on it."""

    def __init__(self, graph: "ChannelGraph", exp: "Expansion"):
        self.graph, self.exp = graph, exp
        self.node: Optional[torch.fx.Node] = None
        self._lctx = graph.ctx

    def at(self, node: torch.fx.Node) -> "_GraphCtx":
        """This context, now processing ``node`` (``rule.rewrite(ctx.at(node), node)``)."""
        self.node = node
        return self

    def tensor(self, arg: Any) -> Optional[TRef]:
        return self._lctx.tensor(arg)

    def original(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        return self._lctx.modules[(node or self.node).target]

    def _param(self, m: torch.nn.Module, node: torch.fx.Node, attr: str) -> Optional[TRef]:
        t = getattr(m, attr, None)
        if not isinstance(t, torch.Tensor):
            return None
        name = f"{node.target}.{attr}"
        return TRef(("param", self._lctx.canonical.get(name, name)), tuple(t.shape))

    def param(self, attr: str, node: Optional[torch.fx.Node] = None) -> Optional[TRef]:
        node = node or self.node
        return self._param(self.original(node), node, attr)

    def removed(self, ref: TRef, d: int) -> np.ndarray:
        return self.graph.removed(self.exp.mask, ref.key, d % ref.ndim)


class RewriteCtx(_GraphCtx):
    """:class:`RewriteContext` over one analysed graph: original shapes, removed indices, new modules."""

    def __init__(self, graph: "ChannelGraph", exp: "Expansion", new_modules: Dict[str, torch.nn.Module]):
        super().__init__(graph, exp)
        self.new_modules = new_modules

    def out_elems(self, node: Optional[torch.fx.Node] = None) -> List[TRef]:
        node = node or self.node
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            return [TRef(("value", node.name, (i,)), tuple(v.shape)) for i, v in enumerate(val)
                    if isinstance(v, torch.Tensor)]
        ref = self.tensor(node)
        return [ref] if ref is not None else []

    def new_shape(self, ref: TRef) -> Tuple[int, ...]:
        count = getattr(self.graph, "removed_count", None)
        if count is None:  # a graph without per-dim counts
            return tuple(s - len(self.removed(ref, d)) for d, s in enumerate(ref.shape))
        return tuple(s - count(self.exp.mask, ref.key, d) for d, s in enumerate(ref.shape))

    def module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        return self.new_modules[(node or self.node).target]

    def module_at(self, name: str) -> Optional[torch.nn.Module]:
        """The pruned copy of the module at qualified ``name`` (None when the copy has none)."""
        return self.new_modules.get(name)

    def replace_module(self, old: torch.nn.Module, new: torch.nn.Module) -> None:
        """Put ``new`` wherever the pruned tree holds ``old`` (a rule swapping a module's class)."""
        for name, mod in list(self.new_modules.items()):
            if mod is old:
                parent, _, child = name.rpartition(".")
                setattr(self.new_modules[parent], child, new)
                self.new_modules[name] = new


class MaskedCtx(_GraphCtx):
    """:class:`MaskedContext` over one analysed graph and one expansion."""

    def kept(self, ref: TRef, d: int) -> Optional[torch.Tensor]:
        removed = self.graph.removed(self.exp.mask, ref.key, d)
        if not len(removed):
            return None
        keep = torch.ones(ref.shape[d], dtype=torch.bool)
        keep[torch.from_numpy(removed)] = False
        return keep.nonzero().flatten()

    def module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        return self.original(node)

    def masked_module(self, node: Optional[torch.fx.Node] = None) -> torch.nn.Module:
        """A copy of the node's original module with every weight slice the plan removes set to zero."""
        node = node or self.node
        m = copy.deepcopy(self.original(node))
        canon = self._lctx.canonical
        with torch.no_grad():
            for name, p in m.named_parameters():
                q = f"{node.target}.{name}"
                key = ("param", canon.get(q, q))
                for d in range(p.ndim):
                    removed = self.graph.removed(self.exp.mask, key, d)
                    if len(removed):
                        p.index_fill_(d, torch.from_numpy(removed).to(p.device), 0)
        if isinstance(m, torch.nn.RNNBase):
            m._init_flat_weights()  # the copy's flat weight list still names the original tensors
        return m
