"""Frontends: turn a user's model into a GraphModule with shapes in ``node.meta``.

``fx`` is ``symbolic_trace`` (torch-level graph, constants rewritable in place); ``export`` is
``torch.export`` non-strict, raised to torch-level ops (models with Python branches, ``**kwargs``, Hugging
Face). ``auto`` tries them in that order and records which one ran in ``gm.meta["fxprune"].frontend`` (:mod:`fxprune.record`).
``autograd`` records one real forward at the ATen level (:mod:`fxprune.frontend.autograd`), for code
neither tracer takes (a forward branching on tensor values).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import TraceError
from ..record import record_of
from . import fx as _fx
from .export import Inputs, call_graph, call_model, export_trace, graph_args, split_inputs
from .fx import normalize_inputs, propagate_shapes
from .probe import value_dependence

__all__ = ["trace", "propagate_shapes", "normalize_inputs", "Inputs", "graph_args", "call_model", "call_graph",
           "split_inputs", "FRONTENDS"]

log = logging.getLogger(__name__)

FRONTENDS = ("auto", "fx", "export", "parts", "autograd")


def trace(model: torch.nn.Module, example_inputs: Any, frontend: str = "auto") -> torch.fx.GraphModule:
    """Trace ``model`` into a GraphModule with shapes in ``node.meta["val"]``.

    ``frontend``: ``"fx"`` (symbolic_trace), ``"export"`` (torch.export, non-strict), ``"autograd"`` (one
    real forward recorded at the ATen level, :mod:`fxprune.frontend.autograd`) or ``"auto"`` (fx, then export). A GraphModule is used as it is. ``"parts"`` is a mode of :func:`fxprune.analyze` only
    (its result is not one GraphModule).

    Example:
        >>> import torch, torchvision, fxprune
        >>> gm = fxprune.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> gm.graph.find_nodes(op="output")[0].args[0].meta["val"].shape, gm.meta["fxprune"].frontend
        (torch.Size([1, 1000]), 'fx')
    """
    if frontend not in FRONTENDS or frontend == "parts":
        raise TraceError(f"frontend must be one of 'auto', 'fx', 'export', 'autograd' for trace, got {frontend!r}")
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.fx.GraphModule):
        rec = record_of(model)
        if rec.inputs is not None:
            return model  # an exported graph already carries its shapes
        return _fx.trace(model, example_inputs)
    if frontend == "autograd":
        from .autograd import autograd_trace
        return autograd_trace(model, example_inputs)
    _, kwargs = split_inputs(example_inputs)
    if frontend == "fx" or (frontend == "auto" and not kwargs and not _never_symbolic(model)):
        try:
            gm = _fx.trace(model, normalize_inputs(example_inputs) if not isinstance(example_inputs, Inputs)
                           else example_inputs.args)
            record_of(gm).frontend = "fx"
            return gm
        except TraceError as e:
            if frontend == "fx" or e.__cause__ is None:
                raise
            found = value_dependence(model, example_inputs) if frontend == "auto" else None
            if found is not None:  # torch.export would fail too, after tracing the whole model
                raise TraceError(f"{e} torch.export was not tried: the forward calls {found}, which decides "
                                 "on tensor values") from e.__cause__
            log.info("symbolic_trace failed on %s (%s); trying torch.export", type(model).__name__, e)
            try:
                return export_trace(model, example_inputs)
            except TraceError as e2:  # both failed: the fx reason first, it names the Python construct
                raise TraceError(f"{e} torch.export also failed: {e2}") from e.__cause__
    return export_trace(model, example_inputs)


def _never_symbolic(model: torch.nn.Module) -> bool:
    """A transformers model: ``symbolic_trace`` fails on every one (transformers 5 dropped its FX tracer), so
    ``auto`` goes straight to export instead of tracing a 7B model's Python twice."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(model).__mro__)
