"""VerifyPass: the pruned GraphModule against the original run with the removed channels zeroed."""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.errors import InternalError
from fxprune.record import record_of

__all__ = ["VerifyPass"]


class VerifyPass(PassBase):
    """Check what the last :class:`~fxprune.passes.ApplyPass` produced against the graph it was applied to,
    run with the plan's channels zeroed (:func:`fxprune.verify`); raise
    :class:`~fxprune.errors.VerificationError` on a mismatch. The report is kept in ``self.report``.

    Example:
        >>> import torch, fxprune
        >>> from torch.fx.passes.infra.pass_manager import PassManager
        >>> from fxprune.passes import VerifyPass, prune_passes
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> x = torch.randn(1, 3, 8, 8)
        >>> passes = prune_passes({"0.weight:0": [1, 2]}, x, verify=True)
        >>> _ = PassManager(passes)(torch.fx.symbolic_trace(m))
        >>> [p for p in passes if isinstance(p, VerifyPass)][0].report.max_abs_diff < 1e-5
        True
    """

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def __init__(self, example_inputs: Any, atol: float = 1e-4, rtol: float = 1e-4):
        super().__init__()
        from fxprune.frontend import Inputs, normalize_inputs

        self.args = example_inputs if isinstance(example_inputs, Inputs) else normalize_inputs(example_inputs)
        self.atol, self.rtol = atol, rtol
        self.report: Optional[Any] = None

    def call(self, gm: torch.nn.Module) -> PassResult:
        from fxprune.errors import FallbackWarning

        rec = record_of(gm, create=False)
        if rec is None or rec.before is None:
            raise InternalError("VerifyPass needs an ApplyPass with a graph target to run first")
        graph, plan = rec.before
        models = [gm, getattr(graph, "gm", gm)]
        flags = {m: m.training for mod in models for m in mod.modules()}
        try:
            for m in models:
                m.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FallbackWarning)  # the analysis warned already
                self.report = graph.verify(gm, plan, self.args, self.atol, self.rtol)
        finally:
            for m, t in flags.items():
                m.training = t
        return PassResult(gm, False)
