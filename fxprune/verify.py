"""``verify``: the pruned model must compute what the original computes with the pruned channels zeroed.

The original graph runs with every member value of every removed class set to zero right after the node
that produces it; nodes that normalise over a pruned dim (LayerNorm) are recomputed over the kept
channels and listed in the report. The pruned model runs as is. On a mismatch the graphs are compared
node by node and the first node that differs is named.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)).eval()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> plan = fxprune.PrunePlan({"0.weight:0": [0, 3]})
    >>> fxprune.verify(m, fxprune.prune(m, plan, x), plan, x).max_abs_diff < 1e-5
    True
"""
from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx
from torch.utils._pytree import tree_flatten

from .analyze import ChannelGraph, Expansion, analyze
from .errors import FallbackWarning, VerificationError
from .frontend import Inputs, call_graph, call_model, graph_args, normalize_inputs
from .context import MaskedCtx, TRef
from .plan import PrunePlan
from .record import record_of
from .registry import lookup
from .rules._util import arg, normalize_call

__all__ = ["verify", "VerifyReport", "masked_run"]


@dataclass
class VerifyReport:
    """What verify measured: the worst absolute difference over all outputs, and recomputed nodes."""

    max_abs_diff: float
    output_diffs: List[float]
    recomputed: Dict[str, str] = field(default_factory=dict)


class _MaskedInterpreter(torch.fx.Interpreter):
    def __init__(self, graph: ChannelGraph, exp: Expansion, keep_env: bool = False,
                 fills: Optional[Dict[str, Tuple]] = None):
        super().__init__(graph.gm, garbage_collect_values=not keep_env)
        self.vctx = MaskedCtx(graph, exp)
        # node -> (input channels, means, weight): where a compensated layer reads the means
        self.fills = fills or {}
        self.masks: Dict[str, List[Tuple[Tuple[int, ...], int, torch.Tensor]]] = {}
        self.recomputed: Dict[str, str] = {}
        for node in graph.gm.graph.nodes:
            for path, ref in _paths(graph, node):
                for d in range(ref.ndim):
                    removed = graph.removed(exp.mask, ref.key, d)
                    if len(removed):
                        self.masks.setdefault(node.name, []).append((path, d, torch.from_numpy(removed)))
        self.special = {}
        for name, why in graph.ctx.stat_nodes.items():
            node = next(n for n in graph.gm.graph.nodes if n.name == name)
            refs = [graph.ctx.tensor(arg(node, 0, "input"))]
            if node.op == "call_module":  # removed channels inside a module (attention, recurrent units)
                for pname, p in graph.ctx.modules[node.target].named_parameters(prefix=node.target):
                    refs.append(TRef(("param", graph.ctx.canonical.get(pname, pname)), tuple(p.shape)))
            refs = [r for r in refs if r is not None]
            if any(len(graph.removed(exp.mask, r.key, d)) for r in refs for d in range(r.ndim)):
                target = type(graph.ctx.modules[node.target]) if node.op == "call_module" else node.target
                self.special[name] = lookup(node.op, target)
                self.recomputed[name] = why

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        # plain containers: a wrapped helper may mutate a list argument (torchvision's swin3d window size)
        return super().call_function(target, _plain(args), _plain(kwargs))

    def fetch_args_kwargs_from_env(self, n: torch.fx.Node) -> Tuple[Tuple, Dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        fill = self.fills.get(n.name)
        if fill is not None:  # a compensated linear layer: its removed inputs are their means, not zero
            idx, values, weight = fill
            x = args[0].clone()
            x[..., idx.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
            args = (x,) + ((weight,) if weight is not None else tuple(args[1:2])) + tuple(args[2:])
        return args, kwargs

    def run_node(self, n: torch.fx.Node) -> Any:
        rule = self.special.get(n.name)
        if rule is None:
            result = super().run_node(n)
        else:
            with self._set_current_node(n):
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                args, kwargs = normalize_call(n.op, n.target, args, kwargs)  # positional, as rules read them
                result = rule.masked_eval(self.vctx.at(n), n, args, kwargs)
        for path, d, idx in self.masks.get(n.name, ()):
            result = _set_path(result, path, lambda t: t.index_fill(d, idx.to(t.device), 0))
        return result


def _paths(graph: ChannelGraph, node: torch.fx.Node) -> List[Tuple[Tuple[int, ...], TRef]]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        ref = graph.ctx.tensor(node)
        # a parameter read as data (get_attr: swin v2's coordinate table, a cls token) is masked too
        return [((), ref)] if ref is not None and (ref.key[0] == "value" or node.op == "get_attr") else []
    if isinstance(val, (tuple, list)):
        return [((i,), TRef(("value", node.name, (i,)), tuple(v.shape)))
                for i, v in enumerate(val) if isinstance(v, torch.Tensor)]
    return []


def _set_path(value: Any, path: Tuple[int, ...], fn) -> Any:
    if not path:
        return fn(value)
    items = list(value)
    items[path[0]] = _set_path(items[path[0]], path[1:], fn)
    return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)


def _plain(v: Any) -> Any:
    """The Interpreter's immutable containers as the plain ones a GraphModule call returns."""
    if isinstance(v, dict):  # an OrderedDict stays one (segmentation outputs), FX's immutable_dict does not
        items = {k: _plain(x) for k, x in v.items()}
        return collections.OrderedDict(items) if isinstance(v, collections.OrderedDict) else items
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(_plain(x) for x in v)
    return v


def masked_run(graph: ChannelGraph, exp: Expansion, args: Tuple[Any, ...],
               fills: Optional[Dict[str, Tuple]] = None) -> Any:
    """Run the analysed graph with the removed channels zeroed (and, at the nodes in ``fills``, the removed
    input channels of a compensated layer set to their means)."""
    return _MaskedInterpreter(graph, exp, fills=fills).run(*args)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _ok(diff: float, ref: torch.Tensor, atol: float, rtol: float) -> bool:
    scale = float(ref.double().abs().max()) if ref.numel() and ref.is_floating_point() else 0.0
    return diff <= atol + rtol * scale


def verify(original: torch.nn.Module, small: torch.nn.Module, plan: Any, example_inputs: Any,
           atol: float = 1e-4, rtol: float = 1e-4,
           compensate: Optional[Dict[str, torch.Tensor]] = None) -> VerifyReport:
    """Check ``small`` against ``original`` with the plan's channels zeroed; raise VerificationError.

    Both models run in eval mode under ``no_grad`` (their training flags are restored). The tolerance
    is ``atol + rtol * max|reference|`` per output tensor. With ``compensate`` (the means given to
    ``fxprune.prune``), every compensated linear layer reads its removed input channels as their means instead
    of zero in the reference (other members of the removed classes are zeroed as usual).
    """
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)
    return _verify(original, small, plan, example_inputs, atol, rtol, compensate)


def _verify(original: torch.nn.Module, small: torch.nn.Module, plan: PrunePlan, example_inputs: Any,
            atol: float, rtol: float, compensate: Optional[Dict[str, torch.Tensor]] = None) -> VerifyReport:
    args = example_inputs if isinstance(example_inputs, Inputs) else normalize_inputs(example_inputs)
    flags = {m: m.training for mod in (original, small) for m in mod.modules()}
    try:
        original.eval()
        small.eval()
        with torch.no_grad():
            with warnings.catch_warnings():  # prune already warned about a tracing fallback
                warnings.simplefilter("ignore", FallbackWarning)
                graph = analyze(original, args)
            comps = None
            if compensate is not None:
                from .compensate import plan_compensation

                comps = plan_compensation(graph, graph.expand(plan), original, compensate)
            return graph.verify(small, plan, args, atol, rtol, comps)
    finally:
        for m, t in flags.items():
            m.training = t


def verify_graph(graph: ChannelGraph, small: torch.nn.Module, plan: PrunePlan, args: Any,
                 atol: float, rtol: float,
                 fills: Optional[Dict[str, Tuple]] = None) -> VerifyReport:
    """``small`` against the masked run of one analysed graph (:meth:`ChannelGraph.verify`); the models
    are in eval mode under ``no_grad`` already. ``fills``: see :func:`masked_run`."""
    exp = graph.expand(plan)
    interp = _MaskedInterpreter(graph, exp, fills=fills)
    gargs = graph_args(graph.gm, args)
    ref = _plain(interp.run(*gargs))
    # an exported graph (and its graph target) takes and returns flat leaves; the user's class does not
    exported = record_of(graph.gm).inputs is not None
    graph_target = isinstance(small, torch.fx.GraphModule) and record_of(small).inputs is not None
    out = call_graph(small, args) if graph_target else call_model(small, args)
    ref_leaves, ref_spec = tree_flatten(ref)
    out_leaves, out_spec = tree_flatten(out)
    if exported:
        ref_leaves = [t for t in ref_leaves if isinstance(t, torch.Tensor)]
        out_leaves = [t for t in out_leaves if isinstance(t, torch.Tensor)]
        if len(ref_leaves) != len(out_leaves):
            raise VerificationError(f"the pruned model returns {len(out_leaves)} tensors, "
                                    f"the original {len(ref_leaves)}")
    elif ref_spec != out_spec:
        raise VerificationError(f"output structure differs: {ref_spec} vs {out_spec}")
    diffs, bad = [], []
    for i, (r, o) in enumerate(zip(ref_leaves, out_leaves)):
        if isinstance(r, torch.Tensor):
            d = _diff(o, r)
            diffs.append(d)
            if not _ok(d, r, atol, rtol):
                bad.append((i, d))
    if bad:
        node, nd = _first_bad_node(graph, exp, small, gargs, atol, rtol, fills)
        raise VerificationError(
            f"pruned model differs from the masked original: output {bad[0][0]} max |Δ| = {bad[0][1]:.3g}"
            + (f"; first differing node {node.name} (max |Δ| = {nd:.3g})" if node is not None else ""),
            node)
    return VerifyReport(max(diffs, default=0.0), diffs, dict(interp.recomputed))


def _first_bad_node(graph: ChannelGraph, exp: Expansion, small: torch.nn.Module, args: Tuple[Any, ...],
                    atol: float, rtol: float, fills: Optional[Dict] = None):
    if not isinstance(small, torch.fx.GraphModule):
        return None, 0.0
    ref_i = _MaskedInterpreter(graph, exp, keep_env=True, fills=fills)
    ref_i.run(*args)
    small_i = torch.fx.Interpreter(small, garbage_collect_values=False)
    small_i.run(*args)
    small_env = {n.name: v for n, v in small_i.env.items()}
    vctx = MaskedCtx(graph, exp)
    for n, v in ref_i.env.items():
        o = small_env.get(n.name)
        if not isinstance(v, torch.Tensor) or not isinstance(o, torch.Tensor):
            continue
        ref = graph.ctx.tensor(n)
        r = v
        if ref is not None:
            for d in range(r.ndim):
                k = vctx.kept(ref, d)
                if k is not None:
                    r = r.index_select(d, k)
        d = _diff(o, r)
        if not _ok(d, r, atol, rtol):
            return n, d
    return None, 0.0
