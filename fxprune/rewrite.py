"""Rewrite: apply an expanded plan to a copy of the model and its graph.

Parameters and buffers are sliced with ``index_select`` (their ``.grad`` too), module attributes are
updated by each op rule's ``rewrite``, and constants in the graph (view sizes, split sizes, slice bounds,
``groups``) are rewritten, so the returned GraphModule runs, trains and exports with no hand edits.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> small = fxprune.prune(m, fxprune.PrunePlan({"0.weight:0": [1, 5]}), torch.randn(1, 3, 8, 8))
    >>> small.get_submodule("0").out_channels, small.get_submodule("2").in_channels
    (6, 6)
"""
from __future__ import annotations

import copy
import logging
import operator
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.fx
from torch.fx.graph_module import _copy_attr
from torch.fx.node import map_arg

from .analyze import ChannelGraph, Expansion
from .context import RewriteCtx
from .errors import FxpruneError, PlanError, RewriteError, user_stacklevel
from .gcpause import no_gc
from .plan import PrunePlan, parse_key
from .record import compose, record_of
from .registry import lookup
from .rules._util import call_args

__all__ = ["prune", "apply_plan", "RewriteCtx"]

log = logging.getLogger(__name__)


def _kept(n: int, removed: np.ndarray) -> np.ndarray:
    keep = np.ones(n, bool)
    keep[removed] = False
    return np.nonzero(keep)[0]


# dtypes numpy holds as they are: their dim-0 slices are taken there (np.take copies whole rows faster than
# index_select; index_select beats np.take on a later dim: resnet50's kept slices 9.0 vs 14.5 ms)
_NUMPY_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16,
                           torch.int8, torch.uint8, torch.bool})


def _slice(t: torch.Tensor, graph: ChannelGraph, exp: Expansion, canon: str) -> torch.Tensor:
    keep = {}
    for d in range(t.ndim):
        removed = graph.removed(exp.mask, ("param", canon), d)
        if len(removed):
            keep[d] = _kept(t.shape[d], removed)
    data = t.detach()
    if keep and type(data) is torch.Tensor and data.device.type == "cpu" and data.dtype in _NUMPY_DTYPES \
            and data.layout == torch.strided and not data.is_conj() and not data.is_neg():
        for d, k in keep.items():
            if d == 0:  # straight from the source: no copy of the whole tensor first
                data = torch.from_numpy(np.take(data.numpy(), k, axis=0))
            else:
                data = data.index_select(d, torch.from_numpy(k))
    else:
        for d, k in keep.items():
            data = data.index_select(d, torch.from_numpy(k).to(data.device))
        if not keep:
            data = data.clone()
    if isinstance(t, torch.nn.Parameter):
        new = torch.nn.Parameter(data, requires_grad=t.requires_grad)
        if t.grad is not None:
            g = t.grad.detach()
            for d, k in keep.items():
                g = g.index_select(d, torch.from_numpy(k).to(g.device))
            new.grad = g.clone() if g is t.grad else g
        return new
    return data


def _clone_tree(root: torch.nn.Module, graph: ChannelGraph, exp: Expansion) -> Tuple[torch.nn.Module, Dict]:
    """Shallow copies of every module, with new (sliced or cloned) parameters and buffers."""
    canonical = graph.ctx.canonical
    memo: Dict[int, torch.nn.Module] = {}
    tensors: Dict[int, torch.Tensor] = {}
    pairs: Dict[str, Tuple[torch.nn.Module, torch.nn.Module]] = {}

    def new_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
        if id(t) not in tensors:  # tied tensors stay tied
            tensors[id(t)] = _slice(t, graph, exp, canonical.get(name, name))
        return tensors[id(t)]

    def visit(m: torch.nn.Module, prefix: str) -> torch.nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = object.__new__(type(m))
        state = dict(m.__dict__)
        memo[id(m)] = new
        pairs[prefix] = (m, new)
        state["_parameters"] = {k: None if p is None else new_tensor(p, prefix + k)
                                for k, p in m._parameters.items()}
        state["_buffers"] = {k: None if b is None else new_tensor(b, prefix + k)
                             for k, b in m._buffers.items()}
        state["_modules"] = {k: None if c is None else visit(c, f"{prefix}{k}.")
                             for k, c in m._modules.items()}
        object.__setattr__(new, "__dict__", state)  # not Module.__setattr__: its checks cost more than a copy
        return new

    return visit(root, ""), pairs


def _size_read(node: torch.fx.Node) -> Optional[Tuple[torch.fx.Node, Optional[List[int]]]]:
    """``(x, dims)`` when ``node`` reads sizes of tensor ``x``: ``x.size(d)``, ``x.size()``, ``x.shape``,
    ``x.shape[i]``, ``x.shape[a:b]``, ``x.numel()``; ``dims`` None means every dim."""
    if node.op == "call_method" and node.target in ("size", "numel") and node.args:
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return node.args[0], [d] if isinstance(d, int) else None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0], None
    if node.op == "call_function" and node.target is operator.getitem:
        src, i = node.args
        whole = _size_read(src) if isinstance(src, torch.fx.Node) else None
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if whole is not None and whole[1] is None and isinstance(val, (tuple, list)):
            if isinstance(i, int):
                return whole[0], [i]
            bounds = (i.start, i.stop, i.step) if isinstance(i, slice) else (0.5,)
            if all(v is None or isinstance(v, int) for v in bounds):
                return whole[0], list(range(len(val)))[i]
    return None


def _freeze_size_reads(graph: torch.fx.Graph, rctx: RewriteCtx) -> None:
    """A size read of a dim that lost channels keeps its original value where it is used as a number.

    The pruned model must compute what the original computes with the channels zeroed, so
    ``scores * q.size(-1) ** -0.5`` keeps the original scale. The rules have already replaced such reads
    where they size a tensor (``view``/``reshape``/``expand``/``split`` sizes, creation ops); any use left
    is arithmetic on the value.
    """
    for node in list(graph.nodes):
        read = _size_read(node)
        if read is None or not node.users:
            continue
        x, dims = read
        ref = rctx.tensor(x)
        if ref is None:
            continue
        dims = range(ref.ndim) if dims is None else [d % ref.ndim for d in dims]
        if not any(len(rctx.removed(ref, d)) for d in dims):
            continue
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)) and all(isinstance(v, int) for v in val):  # torch.Size
            const: Any = tuple(int(v) for v in val)
        elif isinstance(val, int) and not isinstance(val, bool):
            const = int(val)
        else:
            continue
        for user in list(node.users):
            if _size_read(user) is not None and user.target is operator.getitem:
                continue  # ``x.shape[i]`` is a read of its own
            user.args = map_arg(user.args, lambda a: const if a is node else a)
            user.kwargs = map_arg(user.kwargs, lambda a: const if a is node else a)
            log.debug("size read %s used by %s frozen to its original value %s", node.name, user.name, const)


def apply_plan(graph: ChannelGraph, plan: PrunePlan, root: torch.nn.Module, inplace: bool = False,
               exp: Optional[Expansion] = None, into: Optional[torch.fx.GraphModule] = None
               ) -> torch.fx.GraphModule:
    """Prune ``root`` (the module ``graph`` was traced from) by ``plan``; see :func:`prune`. ``exp`` is the
    plan already expanded (a part of a larger IR: the parts frontend expands over all parts at once).
    ``into``: this GraphModule receives the pruned graph, submodules and tensors (it is mutated and
    returned; :class:`fxprune.passes.ApplyPass`) instead of a new GraphModule being built."""
    if exp is None:
        exp = graph.expand(plan)
    new_root, pairs = _clone_tree(root, graph, exp)
    new_modules = {p.rstrip("."): new for p, (_, new) in pairs.items()}
    for name in graph.ctx.modules:  # shared modules are reachable under several names
        if name not in new_modules:
            try:
                new_modules[name] = new_root.get_submodule(name)
            except AttributeError:
                pass
    new_graph = copy.deepcopy(graph.gm.graph)
    before = [(n, n.op, n.target, n.name, n.args, n.kwargs) for n in new_graph.nodes]
    rctx = RewriteCtx(graph, exp, new_modules)
    for node in new_graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        target = type(graph.ctx.modules[node.target]) if node.op == "call_module" else node.target
        rule = lookup(node.op, target)
        if rule is not None and rule.rewrite is not None:
            if node.kwargs:  # rewrites read arguments by position: move keywords to their slots (a copy)
                node.args, node.kwargs = call_args(node)
            try:
                rule.rewrite(rctx.at(node), node)
            except FxpruneError:
                raise
            except Exception as e:
                raise RewriteError(f"rewriting {rule.name} failed: {type(e).__name__}: {e}", node) from e
    _freeze_size_reads(new_graph, rctx)
    for node in new_graph.nodes:  # shapes in meta follow the pruned sizes
        ref = rctx.tensor(node)
        if ref is not None:  # values, and parameters read by get_attr (a re-analysis reads these shapes)
            old, shape = node.meta["val"], tuple(rctx.new_shape(ref))
            if not _is_fresh_meta(old, shape):  # else: what torch.empty would give, already there
                node.meta["val"] = torch.empty(shape, dtype=old.dtype, device="meta")
        elif isinstance(node.meta.get("val"), (tuple, list)):
            elems = {r.key[2][0]: r for r in rctx.out_elems(node)}
            node.meta["val"] = type(node.meta["val"])(
                torch.empty(rctx.new_shape(elems[i]), dtype=v.dtype, device="meta") if i in elems else v
                for i, v in enumerate(node.meta["val"]))
        node.meta.pop("tensor_meta", None)
    try:
        small = torch.fx.GraphModule(new_root, new_graph, type(root).__name__) if into is None else \
            _install(into, new_root, new_graph,
                     same_code=into.graph is graph.gm.graph and _unchanged(before, new_graph))
    except Exception as e:
        raise RewriteError(f"building the pruned GraphModule failed: {e}") from e
    # Keep every original qualified name, also of modules the graph does not use.
    small._modules.update(new_root._modules)
    small._parameters.update(new_root._parameters)
    small._buffers.update(new_root._buffers)
    small.training = root.training
    # one record: the traced graph's (frontend, constants, input spec) with this plan added to those before,
    # in the coordinates of the model first traced
    prev = record_of(root, create=False) if isinstance(root, torch.fx.GraphModule) else None
    rec = small.meta["fxprune"] = (record_of(graph.gm) if prev is None else prev).derived()
    if prev is None or not prev.applied:
        rec.plan = {k: list(v) for k, v in exp.plan.items()}
    else:
        rec.plan = compose(prev.plan, exp.plan, {k: graph._param_dim(*parse_key(k)).size for k in exp.plan})
    rec.applied.append(plan.to_json())
    rec.last = exp.plan
    from .lower import share_warnings
    share_warnings(small, graph.gm)
    if inplace:
        _commit(pairs)
        small._modules.update(root._modules)
        small._parameters.update(root._parameters)
        small._buffers.update(root._buffers)
    return small


def _is_fresh_meta(t: Any, shape: Tuple[int, ...]) -> bool:
    """``t`` is a plain meta tensor of ``shape`` with the strides ``torch.empty(shape)`` gives."""
    if type(t) is not torch.Tensor or not t.is_meta or tuple(t.shape) != shape or t.requires_grad:
        return False
    expect = 1
    for size, stride in zip(reversed(shape), reversed(t.stride())):
        if stride != expect:
            return False
        expect *= max(size, 1)
    return True


def _same_arg(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or isinstance(a, (torch.Tensor, torch.fx.Node)):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_arg(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_arg(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # a constant whose == is not a bool
        return False


def _unchanged(before: List[Tuple[Any, ...]], graph: torch.fx.Graph) -> bool:
    """Whether no rewrite changed ``graph`` (the nodes, their names, targets and arguments of ``before``)."""
    if len(graph.nodes) != len(before):
        return False
    return all(n is b[0] and n.op == b[1] and n.target is b[2] and n.name == b[3] and _same_arg(n.args, b[4])
               and _same_arg(n.kwargs, b[5]) for n, b in zip(graph.nodes, before))


def _install(gm: torch.fx.GraphModule, root: torch.nn.Module, graph: torch.fx.Graph,
             same_code: bool = False) -> torch.fx.GraphModule:
    """``gm`` made what ``GraphModule(root, graph)`` builds: the attributes the graph reads, from ``root``.
    ``same_code``: ``graph`` generates the code ``gm`` runs already (no rule changed a node): it is not
    generated and compiled again. A target under a child module of ``root`` only reserves that child's
    place: :func:`apply_plan` installs ``root``'s children whole right after (building the stand-in
    parents ``_copy_attr`` would make for them is wasted)."""
    gm._modules, gm._parameters, gm._buffers = {}, {}, {}
    gm._non_persistent_buffers_set = set()
    children = root._modules
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            first = node.target.partition(".")[0]
            if first in children:
                gm._modules.setdefault(first, None)  # same order as _copy_attr would add them
            else:
                _copy_attr(root, gm, node.target)
    if same_code:
        gm._graph = graph  # what the ``graph`` setter does, less its recompile
        graph.owning_module = gm
    else:
        gm.graph = graph
    return gm


def _commit(pairs: Dict[str, Tuple[torch.nn.Module, torch.nn.Module]]) -> None:
    """Move the new tensors and attributes into the user's modules (only after everything succeeded)."""
    copies = {id(new) for _, new in pairs.values()}
    for _, (old, new) in pairs.items():
        children = old._modules
        old.__dict__.update({k: v for k, v in new.__dict__.items() if k != "_modules"})
        for k, c in new._modules.items():  # a child a rule replaced (PrunedMultiheadAttention) goes in as is
            if c is not None and id(c) not in copies:
                children[k] = c
        old._modules = children


@no_gc
def prune(model: torch.nn.Module, plan: Any, example_inputs: Any, inplace: bool = False,
          strict: bool = False, output: str = "auto", frontend: str = "auto",
          compensate: Optional[Dict[str, torch.Tensor]] = None) -> torch.nn.Module:
    """Remove the channels of ``plan`` and return a smaller GraphModule.

    ``model`` may be an ``nn.Module`` (traced here) or a GraphModule. The model is not modified unless
    ``inplace=True``; then its modules receive the pruned tensors and attributes, but only after every
    step succeeded (a failing plan leaves it untouched). Applying a plan to a GraphModule that this
    plan already produced returns it unchanged.

    A model that ``symbolic_trace`` cannot trace is pruned through its traceable submodules (see
    :mod:`fxprune.frontend.partial`): the result is then a pruned deep copy of the model's own class
    (an ``nn.Module``, not a GraphModule) whose traced submodules were edited in place, or replaced by
    their pruned GraphModule where graph constants had to change.

    ``output``: ``"graph"`` returns the pruned GraphModule; ``"module"`` returns a copy of the user's own
    class with parameters sliced and layer attributes updated (see :mod:`fxprune.targets.module`; a
    :class:`~fxprune.errors.RewriteError` names any graph constant only a GraphModule can carry);
    ``"auto"`` gives the module when the model was captured by ``torch.export`` (``frontend``, see
    :func:`fxprune.analyze`) and the GraphModule otherwise.

    ``compensate``: ``{linear layer name: mean input vector}`` in ``model``'s coordinates (from
    ``importance.input_means()``): every such layer whose inputs the plan removes gets ``W[:, removed] @
    mean[removed]`` added to its bias, a bias created where it had none (:mod:`fxprune.compensate`); check it
    with ``fxprune.verify(..., compensate=means)``.

    Example:
        >>> import torch, torchvision, fxprune
        >>> m = torchvision.models.resnet18()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> small = fxprune.prune(m, {"layer1.0.conv1.weight:0": [2, 6, 9]}, x)
        >>> small.layer1[0].conv1.out_channels, small(x).shape
        (61, torch.Size([1, 1000]))
    """
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)
    if isinstance(model, torch.fx.GraphModule):
        applied = getattr(model, "meta", {}).get("fxprune", {}).get("applied", [])
        if applied and applied[-1] == plan.to_json():
            warnings.warn("fxprune: this plan was already applied to this GraphModule; not pruning twice",
                          stacklevel=user_stacklevel())
            return model
    return _prune(model, plan, example_inputs, inplace, strict, output, frontend, compensate, closure=True)


def _prune(model: torch.nn.Module, plan: PrunePlan, example_inputs: Any, inplace: bool = False,
           strict: bool = False, output: str = "auto", frontend: str = "auto",
           compensate: Optional[Dict[str, torch.Tensor]] = None, closure: bool = False) -> torch.nn.Module:
    """:func:`prune` without its "already applied" check: the Pruner's next step may read like the last
    one (the same indices, now in the pruned model's coordinates) and must still be applied. ``closure``
    reports a hand-written plan that a valid one must extend (:func:`report_closure`)."""
    from .passes import prune_passes
    from .passes.manager import run

    if output not in ("auto", "graph", "module"):
        raise PlanError(f"output must be 'auto', 'graph' or 'module', got {output!r}")
    small = run(prune_passes(plan, example_inputs, strict=strict, frontend=frontend, output=output,
                             inplace=inplace, cleanup=False, again=True, fresh=True, compensate=compensate,
                             closure=closure), model)
    rec = record_of(small, create=False)
    if rec is not None:
        rec.drop_state()
    return small


def _spans(idx: List[int]) -> str:
    """``[0, 1, 2, 7]`` -> ``"0..2, 7"``."""
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v > start else str(v))
            start = None
    return ", ".join(out[:8]) + (", ..." if len(out) > 8 else "")


def _heads_of(model: torch.nn.Module, key: str, idx: List[int]) -> str:
    """`` (heads 0, 2)`` when ``key`` is a head-major dim of an attention module's projection."""
    from .hf.attention import attention_widths

    name, dim = parse_key(key)
    path = name.rpartition(".")[0]
    parent = path.rpartition(".")[0]
    try:
        mod = model.get_submodule(parent) if parent else model
    except AttributeError:
        return ""
    w = attention_widths(mod) if isinstance(mod, torch.nn.Module) else None
    if w is None:
        return ""
    hd = w.head_dim
    heads = sorted({i // hd for i in idx})
    if len(idx) == len(heads) * hd:  # whole heads only
        return f" (heads {_spans(heads)} of {path})"
    return f" (head dims {_spans(sorted({i % hd for i in idx}))} of heads {_spans(heads)} of {path})"


def report_closure(graph: Any, plan: PrunePlan, model: torch.nn.Module, strict: bool,
                   exp: Any = None) -> None:
    """Say when a valid plan removes more of an entry's own dim than the entry lists: whole heads, the same
    query head in every GQA kv group, both halves of a RoPE pair, the columns a grouped conv shares go
    together. ``strict=True`` raises :class:`~fxprune.errors.PlanError` instead of pruning more than asked.

    Example:
        >>> import torch, fxprune, warnings
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, groups=2), torch.nn.Conv2d(8, 2, 1))
        >>> fxprune.prune(m, {"0.weight:0": [0]}, torch.randn(1, 4, 3, 3), strict=True)
        Traceback (most recent call last):
        ...
        fxprune.errors.PlanError: plan entry '0.weight:0' lists 0 but a valid plan also removes 4 from it: ...
    """
    exp = graph.expand(plan) if exp is None else exp
    grown = []
    for key, idx in plan.items():
        extra = sorted(set(exp.plan.get(key, [])) - set(idx))
        if extra:
            grown.append(f"plan entry {key!r} lists {_spans(list(idx))}{_heads_of(model, key, list(idx))} but a valid "
                         f"plan also removes {_spans(extra)}{_heads_of(model, key, extra)} from it")
    if not grown:
        return
    why = ("; ".join(grown[:3]) + (f"; and {len(grown) - 3} more entries" if len(grown) > 3 else "")
           + ": channels of one class go together (whole heads, the same query head in every kv group, both "
           "halves of a RoPE pair, the inputs a grouped conv shares)")
    if strict:
        raise PlanError(why + ". Remove those too, or prune with strict=False to have the plan closed.")
    warnings.warn("fxprune: " + why + "; pruning the closed plan (strict=True raises instead)",
                  stacklevel=user_stacklevel())
