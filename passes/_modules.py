"""GraphModule plumbing the passes share: a detached copy of a GraphModule, and the carrier of an analysis
that is not one GraphModule (the parts frontend)."""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.fx

from fxprune.lower import share_warnings
from fxprune.record import record_of

__all__ = ["detached", "Carrier", "carry"]


def detached(gm: torch.fx.GraphModule, own_graph: bool = False) -> torch.fx.GraphModule:
    """A new GraphModule sharing ``gm``'s graph, submodules and tensors (no copy, no recompile): a pass may
    replace its graph and children without touching ``gm``. ``own_graph``: the copy becomes the graph's
    owner (``gm`` is about to get another graph)."""
    new = torch.fx.GraphModule.__new__(type(gm))  # a class of its own: recompiling one leaves the other
    state = {k: (type(v)(v) if isinstance(v, dict) else v) for k, v in gm.__dict__.items()}
    state["_non_persistent_buffers_set"] = set(gm._non_persistent_buffers_set)
    object.__setattr__(new, "__dict__", state)
    rec = record_of(gm, create=False)
    if rec is not None:
        new.meta["fxprune"] = rec.derived()
    cls, src = type(new), type(gm)
    cls.__name__ = src.__name__
    try:  # the compiled forward is a plain function of ``self``: share it
        from torch.fx.graph_module import _WrappedCall
        cls.forward, cls.__call__ = src.forward, src.__call__
        cls._wrapped_call = _WrappedCall(cls, None)
    except (ImportError, AttributeError):  # a torch without these internals: compile again
        new.recompile()
    if own_graph and new._graph.owning_module is gm:
        new._graph.owning_module = new
    share_warnings(new, gm)
    return new


class Carrier(torch.nn.Module):
    """What a pipeline carries when the analysis is not of one GraphModule (the ``parts`` frontend): the
    model (called as is) and the record ``meta["fxprune"]``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.meta: dict = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


def carry(analysis: Any, model: torch.nn.Module) -> torch.nn.Module:
    """The module the next passes get for a finished ``analysis`` of ``model``: a detached GraphModule
    (a cached analysis stays untouched) or a :class:`Carrier`."""
    gm = getattr(analysis, "gm", None)
    out: torch.nn.Module = detached(gm) if isinstance(gm, torch.fx.GraphModule) else Carrier(model)
    rec = record_of(out)
    rec.graph, rec.analysed = analysis, getattr(out, "graph", out)
    rec.model = weakref.ref(model)
    return out
