"""Thin PassBase wrappers around fxprune's stages; state travels in ``gm.meta``.

``gm.meta["fxprune_lowered"]`` holds the lowered IR between BuildChannelGraphPass and PropagatePass,
``gm.meta["fxprune_graph"]`` the ChannelGraph, and ``gm.meta["fxprune"]["applied"]`` the plans already
applied (so running ApplyPlanPass again with the same plan does nothing).
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
        gm.meta["fxprune_lowered"] = lower_graph(gm, strict=self.strict)
        return PassResult(gm, False)


class PropagatePass(PassBase):
    """Turn the solved IR into groups and classes (``gm.meta["fxprune_graph"]``)."""

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        lowered = gm.meta.pop("fxprune_lowered", None)
        if lowered is None:
            raise InternalError("PropagatePass needs BuildChannelGraphPass to run first")
        ctx, sol = lowered
        gm.meta["fxprune_graph"] = ChannelGraph(gm, ctx, sol)
        return PassResult(gm, False)


class ApplyPlanPass(PassBase):
    """Prune by a plan; a plan already applied to this GraphModule is not applied again."""

    def __init__(self, plan: Any):
        super().__init__()
        self.plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        applied = gm.meta.get("fxprune", {}).get("applied", [])
        if self.plan.to_json() in applied:
            return PassResult(gm, False)
        graph = gm.meta.pop("fxprune_graph", None)
        if not isinstance(graph, ChannelGraph) or graph.gm is not gm:
            raise InternalError("ApplyPlanPass needs PropagatePass to run first on the same GraphModule")
        return PassResult(apply_plan(graph, self.plan, gm), True)


class CleanupPass(PassBase):
    """Drop analysis state, remove dead code, lint and recompile."""

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        for k in ("fxprune_graph", "fxprune_lowered"):
            gm.meta.pop(k, None)
        changed = gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return PassResult(gm, changed)


def prune_passes(plan: Any, example_inputs: Any, strict: bool = False) -> List[PassBase]:
    """The whole pipeline as a list of passes: annotate, build, propagate, apply, cleanup."""
    return [AnnotateShapesPass(example_inputs), BuildChannelGraphPass(strict), PropagatePass(),
            ApplyPlanPass(plan), CleanupPass()]


