"""The module target: a copy of the user's own class with parameters sliced and attributes updated.

The graph target returns a GraphModule; for a model captured by ``torch.export`` that graph takes flat
tensor inputs and returns flat outputs, which is not what the user's code calls. The module target keeps
the user's class (its methods, ``generate``, extra attributes such as timm's ``pretrained_cfg``): every
parameter and buffer is sliced by qualified name, and the size attributes of the standard layers are set
from the new shapes (``in_features``, ``out_channels``, ``normalized_shape``, ``num_features``,
``embedding_dim``; ``groups`` of a conv and ``num_groups`` of a GroupNorm from the rewritten graph).

That is the whole model only when every constant the graph target rewrote is one of those attributes. A
constant written in ``forward`` (a ``view(b, n, 4, 16)``, a head count kept in a plain attribute) is not,
so whenever the graph target changed a constant, the module is run once on the example inputs and must
give the graph target's outputs; otherwise :class:`~fxprune.errors.RewriteError` names the constants.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> small = fxprune.prune(m, {"0.weight:0": [1, 2]}, torch.randn(1, 4), output="module")
    >>> type(small).__name__, small[0].out_features, small[2].in_features
    ('Sequential', 6, 6)
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Dict, List, Tuple

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from ..errors import RewriteError, user_stacklevel
from ..record import record_of
from ..hf.config import sync_config

__all__ = ["prune_to_module", "build_module", "sync_attributes", "carry_constants", "changed_constants",
           "apply_recorded"]

log = logging.getLogger(__name__)


def _shape_attrs(m: torch.nn.Module) -> None:
    """Size attributes of a standard layer, read back from its (sliced) parameters."""
    w = getattr(m, "weight", None)
    if isinstance(m, torch.nn.Linear) and isinstance(w, torch.Tensor):
        m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
    elif isinstance(m, torch.nn.modules.conv._ConvNd) and isinstance(w, torch.Tensor):
        if m.transposed:
            m.in_channels, m.out_channels = int(w.shape[0]), int(w.shape[1]) * m.groups
        else:
            m.out_channels, m.in_channels = int(w.shape[0]), int(w.shape[1]) * m.groups
    elif isinstance(m, torch.nn.modules.batchnorm._NormBase):
        ref = w if isinstance(w, torch.Tensor) else getattr(m, "running_mean", None)
        if isinstance(ref, torch.Tensor):
            m.num_features = int(ref.shape[0])
    elif isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) and isinstance(w, torch.Tensor):
        m.normalized_shape = tuple(int(s) for s in w.shape)
    elif isinstance(m, torch.nn.GroupNorm) and isinstance(w, torch.Tensor):
        m.num_channels = int(w.shape[0])
    elif isinstance(m, torch.nn.Embedding) and isinstance(w, torch.Tensor):
        m.num_embeddings, m.embedding_dim = int(w.shape[0]), int(w.shape[1])
    elif type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and hasattr(m, "nf"):
        m.nf = int(w.shape[1])  # Hugging Face GPT-2's transposed linear: forward views to (..., nf)
        if hasattr(m, "nx"):
            m.nx = int(w.shape[0])


# Graph arguments that are module attributes: (function, argument position, module attribute).
_GRAPH_ATTRS = {
    "conv": (6, "groups"),
    "group_norm": (1, "num_groups"),
}


def _owner(node: torch.fx.Node, pos: int) -> str | None:
    """The qualified name of the module whose parameter is argument ``pos`` of ``node``."""
    a = node.args[pos] if len(node.args) > pos else None
    if isinstance(a, torch.fx.Node) and a.op == "get_attr":
        return a.target.rpartition(".")[0]
    return None


def sync_attributes(model: torch.nn.Module, small_gm: torch.fx.GraphModule) -> None:
    """Set the size attributes of ``model``'s layers from their parameters and from ``small_gm``'s
    rewritten ``groups``/``num_groups`` constants."""
    _sync_from_graph(model, small_gm.graph)


def _sync_from_graph(model: torch.nn.Module, graph: torch.fx.Graph) -> None:
    modules = dict(model.named_modules(remove_duplicate=False))
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", "")
        family = "conv" if name.startswith("conv") else name
        if family not in _GRAPH_ATTRS:
            continue
        pos, attr = _GRAPH_ATTRS[family]
        owner = _owner(node, 1 if family == "conv" else 2)
        value = node.args[pos] if len(node.args) > pos else node.kwargs.get(attr)
        if owner in modules and isinstance(value, int) and hasattr(modules[owner], attr):
            setattr(modules[owner], attr, value)
    for m in model.modules():
        _shape_attrs(m)


# int attributes never read from graph constants: layer indices (``layer_idx == 2`` must not look like a
# head count of 2) and the sizes _shape_attrs already read from the sliced parameters (a Conv1D's
# ``x.view(-1, 64)`` literal is its input width, not its ``nf``)
_NOT_SIZES = frozenset({"layer_idx", "layer_id", "block_idx", "idx", "in_features", "out_features", "nf", "nx",
                        "in_channels", "out_channels", "num_features", "num_channels", "num_embeddings",
                        "embedding_dim"})


def _module_path(node: torch.fx.Node) -> str | None:
    """The qualified name of the innermost module whose forward made ``node`` (export records it)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def carry_constants(model: torch.nn.Module, before: torch.fx.Graph, after: torch.fx.Graph) -> Dict[str, int]:
    """Set the plain int attributes that the graph target's rewritten constants came from.

    A size in an exported ``view`` is a literal (``hidden_shape = (*input_shape, -1, self.head_dim)``
    becomes ``[1, 8, -1, 16]``). When such a literal changes (16 -> 12) and the module whose forward wrote it
    has exactly one int attribute equal to the old value (``head_dim``), that attribute takes the new value;
    every change of one attribute must agree. This is a reading by value, so :func:`build_module` checks
    the result against the graph target afterwards. Returns ``{"module.attr": new}``.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    proposals: Dict[Tuple[str, str], set] = {}
    for a, b in zip(before.nodes, after.nodes):
        if a.op not in ("call_function", "call_method"):
            continue
        old, new = _consts(a), _consts(b)
        path = _module_path(a)
        if old == new or len(old) != len(new) or path not in modules:
            continue
        mod = modules[path]
        for o, n in zip(old, new):
            if type(o) is not int or type(n) is not int or o == n or o <= 1:
                continue
            attrs = [k for k, v in vars(mod).items()
                     if type(v) is int and v == o and not k.startswith("_") and k not in _NOT_SIZES]
            if len(attrs) == 1:
                proposals.setdefault((path, attrs[0]), set()).add(n)
    done: Dict[str, int] = {}
    for (path, attr), values in proposals.items():
        if len(values) == 1:  # two different new values for one attribute: it cannot carry both
            value = values.pop()
            setattr(modules[path], attr, value)
            done[f"{path}.{attr}" if path else attr] = value
    if done:
        log.info("module target: attributes set from rewritten graph constants: %s", done)
    return done


def changed_constants(before: torch.fx.Graph, after: torch.fx.Graph) -> List[str]:
    """Nodes whose non-tensor arguments the graph target rewrote, as ``name: old -> new``."""
    out = []
    for a, b in zip(before.nodes, after.nodes):
        if a.op not in ("call_function", "call_method"):
            continue
        if _consts(a) != _consts(b):
            out.append(f"{a.format_node()} -> args {b.args}")
    return out


def _consts(node: torch.fx.Node) -> Tuple[Any, ...]:
    leaves, _ = tree_flatten((node.args, node.kwargs))
    return tuple(x for x in leaves if not isinstance(x, torch.fx.Node))


def build_module(new_root: torch.nn.Module, small_gm: torch.fx.GraphModule, before: torch.fx.Graph,
                 run_module: Any, run_graph: Any) -> torch.nn.Module:
    """Finish the module target ``new_root`` (a sliced copy of the user's model).

    ``run_module()``/``run_graph()`` run the module and the graph target on the example inputs; they are
    called only when the graph target changed a constant, to check the module carries the change.
    """
    sync_attributes(new_root, small_gm)
    changed = changed_constants(before, small_gm.graph)
    if changed:
        carry_constants(new_root, before, small_gm.graph)
    sync_config(new_root)
    if not changed:
        return new_root
    log.info("graph target rewrote %d constant(s); checking the module target carries them", len(changed))
    problem = ""
    flags = {m: m.training for mod in (new_root, small_gm) for m in mod.modules()}
    try:
        new_root.eval()
        small_gm.eval()
        # on the meta device a forward may not read values (transformers' mask code does, unless traced):
        # run both under fake tensors, which keep shapes and let such code take its tracing branch
        from ..scores import has_meta_tensors  # here: scores <-> importance import each other

        on_meta = has_meta_tensors(new_root)
        fake = FakeTensorMode(allow_non_fake_inputs=True) if on_meta else contextlib.nullcontext()
        with torch.no_grad(), fake:
            got, _ = tree_flatten(run_module())
            want, _ = tree_flatten(run_graph())
        got = [t for t in got if isinstance(t, torch.Tensor)]
        want = [t for t in want if isinstance(t, torch.Tensor)]
        if len(got) != len(want):
            problem = f"{len(got)} output tensors instead of {len(want)}"
        else:
            for i, (g, w) in enumerate(zip(got, want)):
                same = g.is_meta or w.is_meta or torch.allclose(  # meta: no values, shapes only
                    g.double(), w.double(), atol=1e-4, rtol=1e-4)
                if g.shape != w.shape or not same:
                    problem = f"output {i} differs from the graph target's"
                    break
    except Exception as e:  # the module's own forward still uses the old sizes
        problem = f"its forward fails: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        for m, t in flags.items():
            m.training = t
    if problem:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise RewriteError(
            f"the pruned {type(new_root).__name__} cannot be returned as its own class ({problem}): the graph "
            f"target rewrote constants that are not attributes fxprune knows: {shown}. Use output='graph' for "
            f"a GraphModule that carries them.")
    return new_root


def _shallow_copy(model: torch.nn.Module, small: torch.fx.GraphModule) -> torch.nn.Module:
    """The user's class around the pruned GraphModule's (already sliced and updated) children."""
    new = object.__new__(type(model))
    new.__dict__ = dict(model.__dict__)
    new._modules = {k: small._modules.get(k, c) for k, c in model._modules.items()}
    new._parameters = {k: small._parameters.get(k, p) for k, p in model._parameters.items()}
    new._buffers = {k: small._buffers.get(k, b) for k, b in model._buffers.items()}
    return new


def prune_to_module(graph: Any, plan: Any, model: torch.nn.Module, example_inputs: Any, output: str,
                    inplace: bool) -> torch.nn.Module:
    """:func:`fxprune.prune` for ``output="module"`` and for graphs from the export frontend."""
    from ..errors import PlanError
    from ..frontend import normalize_inputs
    from ..frontend import call_graph, call_model
    from ..rewrite import _clone_tree, _commit, apply_plan

    exported = getattr(graph, "frontend", "fx") == "export"
    if exported and inplace and output == "graph":
        raise PlanError("inplace=True prunes the user's model, which output='graph' does not return; "
                        "use output='module'")
    small = apply_plan(graph, plan, graph.gm if exported else model, inplace=inplace and not exported)
    if exported:
        rec, src = record_of(small), record_of(graph.gm)
        rec.inputs, rec.frontend = src.inputs, src.frontend
    if output == "graph":
        return small
    pairs = None
    if exported:
        new_root, pairs = _clone_tree(model, graph, graph.expand(plan))
        new_root.training = model.training
    else:
        new_root = model if inplace else _shallow_copy(model, small)
    run_graph = (lambda: call_graph(small, example_inputs)) if exported else (lambda: small(*normalize_inputs(
        example_inputs)))
    try:
        out = build_module(new_root, small, graph.gm.graph, lambda: call_model(new_root, example_inputs),
                           run_graph)
    except RewriteError as e:
        if output != "auto" or inplace:
            raise
        # the graph target is still right and is called like the model: return it, saying why
        warnings.warn(f"fxprune: returning a GraphModule, not {type(model).__name__}: {e}",
                      stacklevel=user_stacklevel())
        return small
    if pairs is not None and inplace:
        _commit(pairs)
        sync_attributes(model, small)
        return model
    return out


def _call_consts(node: torch.fx.Node) -> Tuple[Any, ...]:
    """The non-tensor arguments of ``node`` with keywords in their positional slots (as rewrites see them)."""
    from ..rules._util import call_args

    leaves, _ = tree_flatten(call_args(node) if node.kwargs else (node.args, node.kwargs))
    return tuple(x for x in leaves if not isinstance(x, torch.fx.Node))


def apply_recorded(graph: Any, exp: Any, module: torch.nn.Module) -> None:
    """The module target of a region the autograd frontend recorded (:mod:`fxprune.frontend.autograd`).

    ``module`` (the caller's copy of the user's module) keeps its own forward: its parameters and buffers
    are sliced in place and its layers' size attributes set (``in_features``, ``num_groups``...). ``graph``
    is the region's analysis and ``exp`` the plan expanded over it. Analysis pinned every dim whose pruning
    would change a size literal of the recording, so none may change here; one that does is a
    :class:`~fxprune.errors.RewriteError` naming the node.

    Example:
        >>> import torch, fxprune
        >>> class Gate(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
        ...     def forward(self, x):
        ...         y = self.a(x)
        ...         return self.b(y if y.sum() > 0 else -y)
        >>> small = fxprune.prune(Gate(), {"a.weight:0": [0, 1, 2]}, torch.randn(3, 4), frontend="autograd")
        >>> type(small).__name__, small.a.out_features, small.b.in_features
        ('Gate', 5, 5)
    """
    import copy

    from ..registry import lookup
    from ..rewrite import RewriteCtx, _clone_tree, _commit
    from ..rules._util import call_args

    _, pairs = _clone_tree(module, graph, exp)
    new_graph = copy.deepcopy(graph.gm.graph)
    rctx = RewriteCtx(graph, exp, {})
    for before, node in zip(graph.gm.graph.nodes, new_graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        rule = lookup(node.op, node.target)
        if rule is None or rule.rewrite is None:
            continue
        if node.kwargs:
            node.args, node.kwargs = call_args(node)
        try:
            rule.rewrite(rctx.at(node), node)
        except Exception as e:
            raise RewriteError(f"rewriting {rule.name} of a recorded graph failed: {type(e).__name__}: {e}",
                               before) from e
        if not before.meta.get("fxprune_layer", False) and _call_consts(before) != _call_consts(node):
            raise RewriteError(f"the plan changes a size literal of the recorded graph of "
                               f"{graph.gm.meta.get('fxprune_recorded', type(module).__name__)} "
                               f"({before.format_node()} -> args {node.args}), which its Python forward may "
                               "hold as a literal too; that dim should have been pinned", before)
    _commit(pairs)
    _sync_from_graph(module, new_graph)
