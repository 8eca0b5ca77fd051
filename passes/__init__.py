"""fxprune's pipeline as ``torch.fx`` passes that do the work: Trace, Lower, Solve, Expand, Apply, Verify.

:func:`fxprune.analyze` runs :func:`analysis_passes` and :func:`fxprune.prune` runs :func:`prune_passes`,
both under a :class:`PrunePassManager`; the same passes compose with any other FX pass in a stock
``PassManager``. Their state travels in the one record ``gm.meta["fxprune"]``
(:class:`fxprune.record.GraphRecord`): ``model`` (the module traced), ``lowered`` (Lower → Solve),
``graph`` (the analysis, valid while ``analysed`` is the GraphModule's graph), ``expansion``
(Expand → Apply), ``before`` (Apply → Verify). :class:`ApplyPass` mutates the GraphModule it is given, and
applying the same plan again does nothing (``PassResult.modified`` is False).

Example:
    >>> import torch, fxprune
    >>> from torch.fx.passes.infra.pass_manager import PassManager
    >>> from fxprune.passes import prune_passes
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> pm = PassManager(passes=prune_passes(fxprune.PrunePlan({"0.weight:0": [1]}), (x,)))
    >>> pm(torch.fx.symbolic_trace(m)).graph_module.get_submodule("0").out_channels
    7
"""
from __future__ import annotations

from typing import Any, List

from torch.fx.passes.infra.pass_base import PassBase

from fxprune.plan import PrunePlan

from .apply import ApplyPass, ExpandPass
from .cleanup import CleanupPass
from .lower import LowerPass, SolvePass
from .manager import PrunePassManager
from .trace import TracePass
from .verify import VerifyPass

__all__ = ["TracePass", "LowerPass", "SolvePass", "ExpandPass", "ApplyPass", "VerifyPass", "CleanupPass",
           "PrunePassManager", "analysis_passes", "prune_passes"]

def analysis_passes(example_inputs: Any, strict: bool = False, frontend: str = "auto",
                    fresh: bool = False) -> List[PassBase]:
    """Trace, Lower, Solve: the analysis ends in ``gm.meta["fxprune"].graph``."""
    return [TracePass(example_inputs, frontend, strict, fresh), LowerPass(strict), SolvePass()]


def prune_passes(plan: Any, example_inputs: Any, strict: bool = False, frontend: str = "auto",
                 output: str = "auto", inplace: bool = False, verify: bool = False, cleanup: bool = True,
                 again: bool = False, fresh: bool = False, compensate: Any = None,
                 closure: bool = False) -> List[PassBase]:
    """The whole pipeline: Trace, Lower, Solve, Expand, Apply, then Verify (``verify=True``) and Cleanup
    (``cleanup=True``). ``again`` applies a plan even when the record says it was applied already;
    ``fresh`` never mutates a GraphModule given to the pipeline (see :class:`TracePass`); ``closure`` says
    when the plan had to be closed (:class:`ExpandPass`); ``compensate`` folds removed inputs' means into
    biases (:class:`ApplyPass`)."""
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)  # one object: Apply finds Expand's result
    passes: List[PassBase] = analysis_passes(example_inputs, strict, frontend, fresh)
    passes += [ExpandPass(plan, again, closure, strict),
               ApplyPass(plan, example_inputs, output, inplace, again, compensate)]
    if verify:
        passes.append(VerifyPass(example_inputs))
    if cleanup:
        passes.append(CleanupPass())
    return passes
