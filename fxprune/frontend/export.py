"""The ``export`` frontend: ``torch.export`` (non-strict) for models ``symbolic_trace`` cannot take.

``torch.export.export(model, args, kwargs, strict=False)`` runs the model's Python once with fake tensors,
so Python branches on values, ``**kwargs`` forwards, ``ModuleList`` loops and Hugging Face models are
captured as one aten-level graph. The graph is then made to look like the fx frontend's: the exporter's
guard call and metadata asserts are dropped, aten nodes are raised to their torch-level forms
(:mod:`fxprune.frontend.aten`), non-tensor inputs (``use_cache=False``) are specialised to constants, and
shapes come from the exporter's own ``meta["val"]`` (turned into meta tensors; no forward is run).

The GraphModule is called like the model, without the specialised inputs, and returns the model's output
structure; analysis and verification run it on the tensor leaves of ``(args, kwargs)`` (:func:`graph_args`).

Example:
    >>> import torch, fxprune
    >>> class Blocks(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
    ...     def forward(self, x, scale=1.0):
    ...         for layer in self.layers:
    ...             x = layer(x).relu() * scale
    ...         return x
    >>> gm = fxprune.trace(Blocks(), fxprune.Inputs(torch.randn(2, 8), scale=0.5), frontend="export")
    >>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    ['linear', 'relu', 'mul', 'linear', 'relu', 'mul']
"""
from __future__ import annotations

import contextlib
import io
import logging
import operator
from typing import Any, Dict, List, Tuple

import torch
import torch.fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._pytree import tree_flatten, tree_map, tree_structure

from ..errors import TraceError
from ..record import record_of
from .aten import raise_graph
from .repeat import export_repeated

__all__ = ["Inputs", "export_trace", "graph_args", "call_model", "call_graph", "split_inputs"]

log = logging.getLogger(__name__)


class Inputs:
    """Example inputs with keyword arguments: ``Inputs(ids, attention_mask=m, use_cache=False)``.

    A plain tensor or tuple is still accepted everywhere as positional inputs; use ``Inputs`` when the
    model's forward needs keyword arguments (Hugging Face models).

    Example:
        >>> import torch, fxprune
        >>> inp = fxprune.Inputs(torch.zeros(1, 3), use_cache=False)
        >>> inp.args[0].shape, inp.kwargs
        (torch.Size([1, 3]), {'use_cache': False})
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = tuple(args), dict(kwargs)

    def __repr__(self) -> str:
        return f"Inputs({len(self.args)} positional, keywords {sorted(self.kwargs)})"


def split_inputs(example_inputs: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """``(args, kwargs)`` of example inputs given as a tensor, a tuple, or :class:`Inputs`."""
    if isinstance(example_inputs, Inputs):
        return example_inputs.args, example_inputs.kwargs
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    return (example_inputs,), {}


def call_model(model: torch.nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` the way the user's inputs say (positional and keyword arguments)."""
    args, kwargs = split_inputs(example_inputs)
    return model(*args, **kwargs)


def graph_args(gm: torch.fx.GraphModule, example_inputs: Any) -> Tuple[Any, ...]:
    """The positional inputs of a traced graph: for an exported graph, the kept tensor leaves of
    ``(args, kwargs)``; for any other graph, the positional example inputs."""
    rec = record_of(gm, create=False)
    spec = rec.inputs if rec is not None else None
    args, kwargs = split_inputs(example_inputs)
    if spec is None:
        if kwargs:
            raise TraceError("keyword example inputs need a graph from the export frontend "
                             "(fxprune.trace(model, inputs, frontend='export'))")
        return args
    leaves = _flat_inputs(args, kwargs, spec["in_spec"])
    return tuple(leaves[i] for i in spec["kept"])


def _in_kwargs(kwargs: Dict[str, Any], in_spec: Any) -> List[Tuple[str, Any]]:
    """The keyword inputs in the order the exporter flattened them."""
    keys = in_spec.child(1).context if in_spec.num_children == 2 else list(kwargs)
    return [(k, kwargs[k]) for k in keys]


def call_graph(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
    """Call an exported graph (or its graph target) on the user's example inputs."""
    info = record_of(gm).inputs
    if info["flat_call"]:
        return gm(*graph_args(gm, example_inputs))
    args, kwargs = split_inputs(example_inputs)
    return gm(*(a for a in args if isinstance(a, torch.Tensor)),
              **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})


def _flat_inputs(args: Tuple[Any, ...], kwargs: Dict[str, Any], in_spec: Any) -> List[Any]:
    from torch.fx._pytree import tree_flatten_spec
    return list(tree_flatten_spec((args, kwargs), in_spec))


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(tuple(int(s) for s in v.shape), tuple(int(s) for s in v.stride()),
                                   dtype=v.dtype, device="meta")
    return v


def _inline_regions(gm: torch.fx.GraphModule) -> None:
    """Inline the subgraphs ``torch.export`` records for ``with torch.autocast(..., enabled=False)`` (EfficientViT's
    attention) and ``with torch.set_grad_enabled(...)`` / ``no_grad`` regions (``wrap_with_autocast`` /
    ``wrap_with_set_grad_enabled`` calls): neither changes what the forward computes, and inlined, their ops
    get their rules instead of pinning everything they touch. Autocast that is on is left alone."""
    hops = {}
    for name, body_at in (("wrap_with_autocast", 4), ("wrap_with_set_grad_enabled", 1)):
        hop = getattr(torch.ops.higher_order, name, None)
        if hop is not None:
            hops[hop] = body_at
    graph = gm.graph
    for node in list(graph.nodes):
        body_at = hops.get(node.target)
        if body_at is None or len(node.args) <= body_at or (body_at == 4 and node.args[2] is not False):
            continue
        body = node.args[body_at]
        sub = getattr(gm, body.target, None) if isinstance(body, torch.fx.Node) else None
        if not isinstance(sub, torch.fx.GraphModule) or any(n.op == "get_attr" for n in sub.graph.nodes):
            continue
        env: Dict[torch.fx.Node, Any] = dict(zip([n for n in sub.graph.nodes if n.op == "placeholder"],
                                                 node.args[body_at + 1:]))
        outs: Any = ()
        with graph.inserting_before(node):
            for n in sub.graph.nodes:
                if n.op == "output":
                    outs = n.args[0]
                elif n.op != "placeholder":
                    env[n] = graph.node_copy(n, lambda a: env[a])
        for user in list(node.users):
            if user.target is operator.getitem and isinstance(user.args[1], int):
                user.replace_all_uses_with(env.get(outs[user.args[1]], outs[user.args[1]]))
                graph.erase_node(user)
        if not node.users:
            graph.erase_node(node)


def export_trace(model: torch.nn.Module, example_inputs: Any) -> torch.fx.GraphModule:
    """Capture ``model`` with ``torch.export`` (non-strict) and shape it like an fx-frontend graph.

    Raises :class:`~fxprune.errors.TraceError` when the exporter fails (data-dependent control flow
    that it cannot specialise, unsupported Python).
    """
    args, kwargs = split_inputs(example_inputs)

    def export() -> Any:
        # a failing export prints its partial graph to stderr; the TraceError below says what failed
        with contextlib.redirect_stderr(io.StringIO()):
            return torch.export.export(model, args, kwargs, strict=False)

    # many alike layers (a 7B decoder): export three, repeat the last one's graph (fxprune.frontend.repeat)
    done = export_repeated(model, export)
    if done is not None:
        gm, ep = done
    else:
        try:
            ep = export()
        except Exception as e:  # anything the exporter raises: data-dependent branches, unsupported Python
            raise TraceError(f"torch.export.export failed on {type(model).__name__}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
        gm = ep.module()
    in_spec = gm._in_spec
    graph = gm.graph
    for node in list(graph.nodes):  # the exporter's input guard: a call_module that checks inputs
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    leaves = _flat_inputs(args, kwargs, in_spec)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    kept: List[int] = []
    for i, (ph, leaf) in enumerate(zip(placeholders, leaves)):
        if isinstance(leaf, torch.Tensor):
            kept.append(i)
            ph.meta["val"] = leaf
            continue
        ph.replace_all_uses_with(leaf)  # a flag such as use_cache=False: specialised, not an input
        graph.erase_node(ph)
    # The graph target is called like the model, minus the specialised inputs, and returns the model's
    # output structure (a ModelOutput, a list of flows); nested inputs are taken as flat leaves.
    simple = all(not isinstance(a, (list, tuple, dict)) for a in list(args) + list(kwargs.values()))
    if simple:
        spec_in = tree_structure((tuple(a for a in args if isinstance(a, torch.Tensor)),
                                  {k: v for k, v in _in_kwargs(kwargs, in_spec) if isinstance(v, torch.Tensor)}))
    else:
        spec_in = tree_structure((tuple(leaves[i] for i in kept), {}))
    names = [n.name for n in graph.nodes if n.op == "placeholder"]
    graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, spec_in, ep.call_spec.out_spec))
    gm._in_spec = spec_in
    _inline_regions(gm)
    raise_graph(gm)
    for node in graph.nodes:
        if "val" in node.meta:
            try:
                node.meta["val"] = tree_map(_to_meta, node.meta["val"])
            except Exception as e:  # a size only known at run time (u0 = number of positive scores)
                raise TraceError(f"torch.export took {type(model).__name__}, but the shape of {node.name} depends "
                                 f"on tensor values ({type(e).__name__}); fxprune needs static shapes",
                                 node) from e
    out = next(iter(reversed(graph.nodes)))
    out.meta["val"] = tuple(a.meta.get("val") if isinstance(a, torch.fx.Node) else a
                            for a in tree_flatten(out.args[0])[0])
    graph.eliminate_dead_code()
    gm.recompile()
    rec = record_of(gm)
    rec.inputs = {"in_spec": in_spec, "kept": kept, "flat_call": not simple}
    rec.frontend = "export"
    rec.constants = set(ep.constants) - {n for n, _ in model.named_buffers()}
    return gm
