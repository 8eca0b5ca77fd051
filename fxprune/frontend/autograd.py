"""The ``autograd`` frontend: one real forward recorded below Python, for code no tracer takes.

``symbolic_trace`` and ``torch.export`` both fail on a forward that branches on tensor values
(``if x.sum() > 0``) or runs Python on a Proxy (torchvision's ``FastRCNNPredictor`` asserts
``list(x.shape[2:]) == [1, 1]``). Here the module runs once, for real, on the inputs the recorded forward gave
it, under a ``TorchDispatchMode``: every ATen op it executes (after autograd's decompositions: ``linear`` is
``t`` + ``addmm``) becomes one node of an fx graph, with the real tensors' shapes in ``meta["val"]``. The
branch the values took is the one recorded. Parameters and buffers are ``get_attr`` nodes under their
qualified names (``cls_score.weight``), so plans, criteria and rewrites address them as usual; any other
tensor the forward reads is a constant. The graph is then raised to torch-level ops
(:mod:`fxprune.frontend.aten`) and lowered into the same IR as every other frontend.

What cannot be rewritten: the recorded graph holds sizes as literals (``view(x, [5, 1024])``), and the
user's Python forward, which is what runs after pruning, may hold them as literals too. So every dim whose
pruning would change such a literal is pinned, with the reason "size N is a literal in the recorded aten graph
of <module>" (:func:`literal_pins` finds them by running the rules' own rewrites on a copy, one group at a
time). Ops run inside a standard ``torch.nn`` layer are exempt: the layer computes them from its input's
shape and its attributes, which the module target updates (``in_features``, ``normalized_shape``...).

The module target applies: the user's module keeps its own forward; its parameters are sliced and its layers'
size attributes set (:func:`fxprune.targets.module.apply_recorded`).

Example:
    >>> import torch, fxprune
    >>> class Gate(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         return self.b(y if y.sum() > 0 else -y)
    >>> gm = fxprune.trace(Gate(), torch.randn(3, 4), frontend="autograd")
    >>> [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    ['a.weight', 'a.bias', 'b.weight', 'b.bias']
    >>> fxprune.analyze(Gate(), torch.randn(3, 4), frontend="autograd").group_of("a.weight", 0).pinned is None
    True
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Dict, List, Tuple

import torch
import torch.fx
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import PlanError, ShapeInfoError, TraceError
from ..record import record_of
from .aten import raise_graph
from .fx import normalize_inputs

__all__ = ["record", "autograd_trace", "literal_pins", "LITERAL_REASON"]

LITERAL_REASON = "size {size} is a literal in the recorded aten graph of {where}"

nn = torch.nn
# Layers whose forward takes every size from its input's shape or from attributes the module target updates:
# the literals their ops leave in the recording are not the user's.
_SIZED_BY_ATTRS: Tuple[type, ...] = tuple(c for c in (
    nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
    getattr(nn, "RMSNorm", None), nn.Embedding, nn.Flatten, nn.Identity, nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.Softmax, nn.LogSoftmax, nn.Mish, nn.Hardtanh)
    if c is not None)
_SKIP = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
# ``x.new_zeros(size)``: ``x`` gives only dtype and device, so the result is a constant like ``torch.zeros``
_VALUE_FREE = frozenset(getattr(torch.ops.aten, n) for n in ("new_zeros", "new_ones", "new_empty", "new_full",
                                                            "new_empty_strided"))


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(tuple(v.shape), tuple(v.stride()), dtype=v.dtype, device="meta")
    return v


class _Builder:
    """The graph being recorded: real tensor (by identity) -> the node that made it."""

    def __init__(self, module: torch.nn.Module, where: str):
        self.graph = torch.fx.Graph()
        self.where = where
        self.env: Dict[int, torch.fx.Node] = {}
        self.alive: List[torch.Tensor] = []  # every tensor seen stays alive, so ids stay unique
        self.named: Dict[int, str] = {}
        for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
                module.named_buffers(remove_duplicate=False)):
            self.named.setdefault(id(t), name)
        self.consts: Dict[str, torch.Tensor] = {}
        self.const_ids: set = set()  # tensors bound to a constant's get_attr
        self.stack: List[Tuple[str, torch.nn.Module]] = []  # modules running, innermost last

    def bind(self, t: torch.Tensor, node: torch.fx.Node) -> None:
        self.env[id(t)] = node
        self.alive.append(t)
        self.const_ids.discard(id(t))

    def node_of(self, t: torch.Tensor) -> torch.fx.Node:
        node = self.env.get(id(t))
        if node is not None:
            return node
        name = self.named.get(id(t))
        if name is None:  # not the module's inputs or state: a constant, with the value it has now
            name = f"_fxprune_const_{len(self.consts)}"
            self.consts[name] = t.detach().clone()
        node = self.graph.get_attr(name)
        node.meta["val"] = _to_meta(t)
        self.bind(t, node)
        if name in self.consts:
            self.const_ids.add(id(t))
        return node

    def arg(self, a: Any) -> Any:
        return pytree.tree_map(lambda v: self.node_of(v) if isinstance(v, torch.Tensor) else v, a)

    def _dynamic(self, t: torch.Tensor) -> bool:
        """Whether ``t`` comes from the module's inputs or state (else its value is a constant)."""
        return (id(t) in self.env and id(t) not in self.const_ids) or id(t) in self.named

    def emit(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        if func in _SKIP:  # a value read into Python (a branch, .item()): the recording already took it
            return
        schema = getattr(func, "_schema", None)
        written = [a for a, spec in zip(args, schema.arguments) if isinstance(a, torch.Tensor)
                   and spec.alias_info is not None and spec.alias_info.is_write] \
            if schema is not None and schema.is_mutable else []
        if getattr(func, "overloadpacket", None) in _VALUE_FREE or not any(
                self._dynamic(t) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
            # computed from constants only (Swin's attention mask, filled slice by slice): it becomes one
            # constant when a recorded op reads it; a write makes an earlier capture stale
            for a in written:
                for t in (a, a._base if a._is_view() else None):
                    if t is not None:
                        self.env.pop(id(t), None)
            return
        if not any(isinstance(t, torch.Tensor) for t in pytree.tree_leaves(out)):
            return
        for a in written:
            if a._is_view():
                raise TraceError(f"{self.where}: {func} writes into a view of another tensor, which a "
                                 "recorded graph cannot follow")
        node = self.graph.call_function(func, self.arg(tuple(args)), self.arg(dict(kwargs)))
        node.meta["val"] = pytree.tree_map(_to_meta, out)
        if self.stack:
            path, mod = self.stack[-1]
            node.meta["fxprune_module"] = path
            node.meta["fxprune_layer"] = isinstance(mod, _SIZED_BY_ATTRS)
        if isinstance(out, torch.Tensor):
            self.bind(out, node)
        elif isinstance(out, (tuple, list)):
            for i, t in enumerate(out):
                if isinstance(t, torch.Tensor):
                    item = self.graph.call_function(operator.getitem, (node, i))
                    item.meta.update(node.meta)
                    item.meta["val"] = _to_meta(t)
                    self.bind(t, item)


class _Recorder(TorchDispatchMode):
    def __init__(self, builder: _Builder):
        super().__init__()
        self.builder = builder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.builder.emit(func, args, kwargs, out)
        return out


def _ident(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s if s and not s[0].isdigit() else f"x_{s}"


def record(module: torch.nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any] | None = None,
           where: str = "") -> torch.fx.GraphModule:
    """One forward of ``module(*args, **kwargs)`` (eval mode, ``no_grad``; training flags are restored)
    recorded as a raised aten-level GraphModule.

    The GraphModule is called exactly like ``module.forward`` (its parameters' names and defaults; tensor
    leaves of the arguments are its placeholders) and returns the forward's output structure. Its ``meta``
    holds ``fxprune_frontend = "autograd"`` and ``fxprune_constants`` (tensors read from elsewhere).
    ``where`` names the module in errors and pin reasons. Raises :class:`~fxprune.errors.TraceError` when
    the forward cannot be recorded, :class:`~fxprune.errors.ShapeInfoError` when it fails on these inputs.
    """
    from .partial import _CallCodeGen, _bind
    from .recording import _Call

    kwargs = dict(kwargs or {})
    where = where or f"the root {type(module).__name__}"
    if isinstance(module, torch.jit.ScriptModule):
        raise TraceError(f"{where} is a ScriptModule: its forward does not run through the dispatcher in "
                         "Python")
    values, params = _bind(module, _Call(tuple(args), kwargs, None, []))
    b = _Builder(module, where)
    flat, _ = pytree.tree_flatten_with_path(tuple(values))
    leaves: List[Tuple[int, Any]] = []
    used = set()
    for path, leaf in flat:
        if not isinstance(leaf, torch.Tensor):
            continue
        i, rest = path[0].idx, tuple(path[1:])
        label = "_".join(str(getattr(k, "idx", getattr(k, "key", getattr(k, "name", "")))) for k in rest)
        name = base = _ident(params[i][0] + (f"_{label}" if label else ""))
        k = 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        ph = b.graph.placeholder(name)
        ph.meta["val"] = _to_meta(leaf)
        b.bind(leaf, ph)
        leaves.append((i, rest))
    handles = []

    def pre(path):
        def hook(m, a):
            b.stack.append((path, m))
        return hook

    def post(m, a, o):
        if b.stack and b.stack[-1][1] is m:
            b.stack.pop()
    flags = {m: m.training for m in module.modules()}
    try:
        for path, m in module.named_modules():
            handles.append(m.register_forward_pre_hook(pre(path)))
            handles.append(m.register_forward_hook(post, always_call=True))
        module.eval()
        with torch.no_grad(), _Recorder(b):
            out = module(*args, **kwargs)
    except TraceError:
        raise
    except Exception as e:
        raise ShapeInfoError(f"recording the forward of {where} failed: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        for m, t in flags.items():
            m.training = t
    try:
        result = b.arg(out)
    except Exception as e:  # noqa: BLE001 - an output container fx cannot hold
        raise TraceError(f"{where} returns a {type(out).__name__} that a graph cannot return: {e}") from e
    node = b.graph.output(result)
    node.meta["val"] = pytree.tree_map(_to_meta, out)
    b.graph.eliminate_dead_code()
    root: Dict[str, Any] = {n.target: _attr(module, n.target, b.consts) for n in b.graph.nodes
                            if n.op == "get_attr"}
    call_out_spec = pytree.tree_flatten(out)[1]
    b.graph.set_codegen(_CallCodeGen(params, leaves, call_out_spec))
    gm = torch.fx.GraphModule(root, b.graph, type(module).__name__)
    rec = record_of(gm)
    rec.frontend, rec.constants, rec.recorded = "autograd", set(b.consts), where
    raise_graph(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _attr(module: torch.nn.Module, target: str, consts: Dict[str, torch.Tensor]) -> Any:
    if target in consts:
        return consts[target]
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def autograd_trace(model: torch.nn.Module, example_inputs: Any) -> torch.fx.GraphModule:
    """:func:`fxprune.trace` with ``frontend="autograd"``: :func:`record` of the whole model."""
    from .export import Inputs, split_inputs

    if isinstance(example_inputs, Inputs):
        args, kwargs = split_inputs(example_inputs)
    else:
        args, kwargs = normalize_inputs(example_inputs), {}
    return record(model, args, kwargs)


def literal_pins(gm: torch.fx.GraphModule, ctx: Any,
                 boundary: frozenset = frozenset()) -> List[Tuple[int, str]]:
    """``(dim id, reason)`` for every dim of ``ctx.ir`` whose pruning would change a literal of ``gm``.

    Each group free of every pin but ``boundary`` ones (a part's interface may be stitched later) is tried on
    its own: one of its classes is removed and every rule's ``rewrite`` runs on the graph; a node whose
    constants change (outside a standard layer, see the module docstring) pins the dims of its inputs and
    outputs that lost channels. The graph is restored after each try.
    """
    from ..analyze import ChannelGraph
    from ..plan import PrunePlan
    from ..registry import lookup
    from ..rewrite import RewriteCtx
    from ..rules._util import call_args
    from ..targets.module import _consts

    where = record_of(gm).recorded or type(gm).__name__
    ir = copy.copy(ctx.ir)
    ir.pins = [p for p in ctx.ir.pins if p[2] not in boundary]
    free_ctx = copy.copy(ctx)
    free_ctx.ir = ir
    cg = ChannelGraph(gm, free_ctx, ir.solve())
    nodes = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")
             and not n.meta.get("fxprune_layer", False)]
    rules = {n: lookup(n.op, n.target) for n in nodes}
    nodes = [n for n in nodes if rules[n] is not None and rules[n].rewrite is not None]
    saved = {n: (n.args, n.kwargs) for n in nodes}
    pins: Dict[int, str] = {}
    for g in cg.groups:
        if g.pinned is not None or not g.all_classes:
            continue
        key, idx = g.all_classes[0]
        try:
            exp = cg._expand(PrunePlan({key: idx}))
        except PlanError:  # not removable alone; a plan that reaches it is checked when it is applied
            continue
        rctx = RewriteCtx(cg, exp, {})
        try:
            for n in nodes:
                if n.kwargs:  # rewrites read arguments by position (as in apply_plan)
                    n.args, n.kwargs = call_args(n)
                before = _consts(n)
                try:
                    rules[n].rewrite(rctx.at(n), n)  # type: ignore[union-attr]
                    after = _consts(n)
                except Exception:  # noqa: BLE001 - a rewrite that cannot follow this plan: the literal stays
                    after = None
                if after == before:
                    continue
                old = next((a for a, c in zip(before, after or ()) if a != c), before[0] if before else "?")
                why = LITERAL_REASON.format(size=old, where=where)
                refs = [ctx.tensor(a) for a in pytree.tree_leaves((n.args, n.kwargs))] + rctx.out_elems(n)
                for ref in refs:
                    if ref is None:
                        continue
                    for d in range(ref.ndim):
                        i = ctx.ir.index.get((ref.key, d))
                        if i is not None and len(rctx.removed(ref, d)):
                            pins.setdefault(i, why)
        finally:
            for n, (a, k) in saved.items():
                n.args, n.kwargs = a, k
    return list(pins.items())

