"""ExpandPass: close a plan to whole classes and valid sub-grids; ApplyPass: prune by it."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.errors import InternalError, PlanError
from fxprune.plan import PrunePlan
from fxprune.record import record_of

from ._modules import detached

__all__ = ["ExpandPass", "ApplyPass"]

OUTPUTS = ("auto", "graph", "module")


def _analysis(gm: torch.nn.Module, who: str) -> Any:
    rec = record_of(gm)
    graph = rec.analysis(gm) if rec is not None else None
    if graph is None:
        raise InternalError(f"{who} needs SolvePass (or a TracePass that found the analysis) to run first on "
                            "this GraphModule")
    return graph


def _plan(plan: Any) -> PrunePlan:
    return plan if isinstance(plan, PrunePlan) else PrunePlan(plan)


def _applied(rec: Any, plan: PrunePlan) -> bool:
    """Whether the record lists ``plan`` as applied (JSON only when there is something to compare)."""
    return bool(rec.applied) and plan.to_json() in rec.applied


class ExpandPass(PassBase):
    """Expand the plan over the analysis (``record.expansion``); a plan that is not valid raises
    :class:`~fxprune.errors.PlanError` here, before anything changes. Skipped, like :class:`ApplyPass`, when
    the plan was already applied to this GraphModule (unless ``again``). With ``closure``, a plan that had to
    grow is named in a warning (``strict``: a PlanError; :func:`fxprune.rewrite.report_closure`)."""

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def __init__(self, plan: Any, again: bool = False, closure: bool = False, strict: bool = False):
        super().__init__()
        self.plan, self.again, self.closure, self.strict = _plan(plan), again, closure, strict

    def call(self, gm: torch.nn.Module) -> PassResult:
        from fxprune.rewrite import report_closure

        rec = record_of(gm)
        if not self.again and _applied(rec, self.plan):
            return PassResult(gm, False)
        graph = _analysis(gm, "ExpandPass")
        exp = graph.expand(self.plan)
        if self.closure:
            report_closure(graph, self.plan, rec.source(gm), self.strict, exp)
        rec.expansion = (self.plan, exp)
        return PassResult(gm, False)


class ApplyPass(PassBase):
    """Prune the GraphModule it is given by ``plan``: its parameters and buffers are replaced by sliced
    copies, its graph by the rewritten one (module attributes and graph constants updated by the op rules),
    in place. The model it was traced from is left as it is unless ``inplace=True`` (then its modules get
    the pruned tensors and attributes too, once everything succeeded).

    A plan already applied to this GraphModule is not applied again (``PassResult.modified`` is False)
    unless ``again``. ``compensate`` (layer name -> mean input, :func:`fxprune.calibrate`) adds the mean
    contribution of each removed input feature to its layer's bias (:mod:`fxprune.compensate`).
    ``output="module"``, and any output after the export or parts frontends, returns a new
    pruned model instead (:meth:`ChannelGraph.apply <fxprune.analyze.ChannelGraph.apply>`: the user's own
    class, :mod:`fxprune.targets.module`, or an exported graph's new GraphModule).

    Example:
        >>> import torch, fxprune
        >>> from torch.fx.passes.infra.pass_manager import PassManager
        >>> from fxprune.passes import ApplyPass, prune_passes
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> gm = torch.fx.symbolic_trace(m)
        >>> plan = fxprune.PrunePlan({"0.weight:0": [1]})
        >>> out = PassManager(prune_passes(plan, torch.randn(1, 3, 8, 8)))(gm).graph_module
        >>> out is gm, gm.get_submodule("0").out_channels, m[0].out_channels, ApplyPass(plan)(gm).modified
        (True, 7, 8, False)
    """

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def __init__(self, plan: Any, example_inputs: Any = None, output: str = "auto", inplace: bool = False,
                 again: bool = False, compensate: Any = None):
        super().__init__()
        if output not in OUTPUTS:
            raise PlanError(f"output must be 'auto', 'graph' or 'module', got {output!r}")
        self.plan, self.example_inputs, self.output = _plan(plan), example_inputs, output
        self.inplace, self.again, self.compensate = inplace, again, compensate

    def call(self, gm: torch.nn.Module) -> PassResult:
        from fxprune.rewrite import apply_plan

        rec = record_of(gm)
        if not self.again and _applied(rec, self.plan):
            return PassResult(gm, False)
        graph = _analysis(gm, "ApplyPass")
        exp = None
        if rec.expansion is not None and (rec.expansion[0] is self.plan or rec.expansion[0] == self.plan):
            exp = rec.expansion[1]
        root = rec.source(gm)
        comps = None
        if self.compensate is not None:  # read the weights before an inplace prune slices them
            from fxprune.compensate import plan_compensation

            exp = graph.expand(self.plan) if exp is None else exp
            comps = plan_compensation(graph, exp, root, self.compensate)
        if self.output == "module" or getattr(graph, "frontend", "fx") != "fx" or \
                not isinstance(gm, torch.fx.GraphModule):
            small = graph.apply(self.plan, root, self.example_inputs, inplace=self.inplace,
                                output=self.output)
            out_rec = record_of(small, create=False)
            if out_rec is not None:
                out_rec.before = (graph, self.plan)
            self._compensate(root, small, comps)
            return PassResult(small, True)
        if exp is None:
            exp = graph.expand(self.plan)
        if graph.gm is gm:  # the analysis keeps describing the graph it was made from
            graph.gm = graph.ctx.gm = detached(gm, own_graph=True)
        apply_plan(graph, self.plan, root, inplace=self.inplace, exp=exp, into=gm)
        record_of(gm).before = (graph, self.plan)
        self._compensate(root, gm, comps)
        return PassResult(gm, bool(exp.plan))  # a plan that removes nothing leaves the same graph

    @staticmethod
    def _compensate(root: torch.nn.Module, small: torch.nn.Module, comps: Any) -> None:
        if comps:
            from fxprune.compensate import apply_compensation

            apply_compensation(root, small, comps)
