"""LowerPass: one op rule per node builds the channel IR; SolvePass: its groups and classes."""
from __future__ import annotations

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune import cache
from fxprune.errors import InternalError
from fxprune.record import record_of

__all__ = ["LowerPass", "SolvePass"]


class LowerPass(PassBase):
    """Lower every node through its op rule into the channel IR (``record.lowered``, not yet solved).

    Example:
        >>> import torch, fxprune
        >>> from fxprune.passes import LowerPass, TracePass
        >>> gm = TracePass(torch.randn(2, 4))(torch.nn.Sequential(torch.nn.Linear(4, 3))).graph_module
        >>> LowerPass()(gm).modified, len(gm.meta["fxprune"].lowered.ir.dims) > 0
        (False, True)
    """

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        from fxprune.lower import lower_nodes

        rec = record_of(gm)
        if rec.analysis(gm) is None:
            rec.lowered = lower_nodes(gm, strict=self.strict)
        return PassResult(gm, False)


class SolvePass(PassBase):
    """Solve the lowered IR (connected components over dims, then over indices; grids settled) into a
    :class:`~fxprune.analyze.ChannelGraph` (``record.graph``), stored in the analysis cache for the traced
    model; a model with nothing prunable is named in a warning.

    Example:
        >>> import torch, fxprune
        >>> from torch.fx.passes.infra.pass_manager import PassManager
        >>> from fxprune.passes import LowerPass, SolvePass, TracePass
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> gm = PassManager([TracePass(torch.randn(1, 4)), LowerPass(), SolvePass()])(m).graph_module
        >>> gm.meta["fxprune"].graph
        ChannelGraph(3 groups, 1 prunable)
    """

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        from fxprune.analyze import ChannelGraph, warn_if_nothing_prunable

        rec = record_of(gm)
        if rec.analysis(gm) is not None:
            return PassResult(gm, False)
        ctx, rec.lowered = rec.lowered, None
        if ctx is None or ctx.gm is not gm:
            raise InternalError("SolvePass needs LowerPass to run first on the same GraphModule")
        graph = ChannelGraph(gm, ctx, ctx.ir.settle())
        graph.frontend = rec.frontend
        rec.graph, rec.analysed = graph, gm.graph
        model = rec.source()
        if model is not None:
            warn_if_nothing_prunable(graph, model)
            cache.store(model, rec.cache_key, graph)
        return PassResult(gm, False)
