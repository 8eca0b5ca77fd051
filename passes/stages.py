"""fxprune's stages as PassBase passes; their state travels in the one record ``gm.meta["fxprune"]``
(:class:`fxprune.record.GraphRecord`): ``lowered`` holds the lowered IR between BuildChannelGraphPass and
PropagatePass, ``graph`` the ChannelGraph, ``applied`` the plans already applied (running ApplyPlanPass
again with the same plan does nothing and says so: ``PassResult.modified`` is False).
"""
from __future__ import annotations

from typing import Any, List

import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.analyze import ChannelGraph
from fxprune.errors import InternalError
from fxprune.frontend import normalize_inputs, propagate_shapes
from fxprune.lower import lower_graph
from fxprune.plan import PrunePlan
from fxprune.record import record_of
from fxprune.rewrite import apply_plan

__all__ = ["AnnotateShapesPass", "BuildChannelGraphPass", "PropagatePass", "ApplyPlanPass", "CleanupPass",
           "prune_passes"]


class AnnotateShapesPass(PassBase):
    """Write meta-tensor shapes into ``node.meta["val"]`` (no real forward pass)."""

    def __init__(self, example_inputs: Any):
        super().__init__()
        self.args = normalize_inputs(example_inputs)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        propagate_shapes(gm, self.args)
        return PassResult(gm, False)


class BuildChannelGraphPass(PassBase):
    """Lower every node through its op rule into the channel IR."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        record_of(gm).lowered = lower_graph(gm, strict=self.strict)
        return PassResult(gm, False)


class PropagatePass(PassBase):
    """Turn the solved IR into groups and classes (``gm.meta["fxprune"].graph``)."""

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        rec = record_of(gm)
        lowered, rec.lowered = rec.lowered, None
        if lowered is None:
            raise InternalError("PropagatePass needs BuildChannelGraphPass to run first")
        ctx, sol = lowered
        rec.graph = ChannelGraph(gm, ctx, sol)
        return PassResult(gm, False)


class ApplyPlanPass(PassBase):
    """Prune by a plan; a plan already applied to this GraphModule is not applied again."""

    def __init__(self, plan: Any):
        super().__init__()
        self.plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        rec = record_of(gm)
        if self.plan.to_json() in rec.applied:
            return PassResult(gm, False)
        graph, rec.graph = rec.graph, None
        if not isinstance(graph, ChannelGraph) or graph.gm is not gm:
            raise InternalError("ApplyPlanPass needs PropagatePass to run first on the same GraphModule")
        return PassResult(apply_plan(graph, self.plan, gm), True)


class CleanupPass(PassBase):
    """Drop analysis state, remove dead code, lint and recompile."""

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        rec = record_of(gm)
        rec.graph = rec.lowered = None
        changed = gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return PassResult(gm, changed)


def prune_passes(plan: Any, example_inputs: Any, strict: bool = False) -> List[PassBase]:
    """The whole pipeline as a list of passes: annotate, build, propagate, apply, cleanup."""
    return [AnnotateShapesPass(example_inputs), BuildChannelGraphPass(strict), PropagatePass(),
            ApplyPlanPass(plan), CleanupPass()]


