"""PrunePassManager: a PassManager for fxprune's passes (and any others) that keeps errors as they are."""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.passes.infra.pass_manager import PassManager

__all__ = ["PrunePassManager"]

log = logging.getLogger(__name__)


class PrunePassManager(PassManager):
    """``PassManager`` with two differences that :func:`fxprune.prune` and :func:`fxprune.analyze` rely on:
    an exception a pass raises propagates as it is (the stock manager wraps it in a bare ``Exception``), so
    the caller sees the same typed :class:`~fxprune.errors.FxpruneError`; and a GraphModule is recompiled
    only after a pass that reports a change and does not say it leaves the module compiled (fxprune's
    passes do: an attribute ``compiles = True``), not after every pass.

    Example:
        >>> import torch, fxprune
        >>> from fxprune.passes import PrunePassManager, prune_passes
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> try:
        ...     PrunePassManager(prune_passes({"0.weight:0": [9]}, torch.randn(1, 4)))(m)
        ... except fxprune.PlanError as e:
        ...     print(type(e).__name__)
        PlanError
    """

    def __call__(self, module: torch.nn.Module) -> PassResult:
        if not self._validated:
            self.solve_constraints()
        self.check(module)
        overall = False
        for _ in range(self.steps):
            modified = False
            for fn in self.passes:
                name = fn.__name__ if inspect.isfunction(fn) else type(fn).__name__
                log.debug("running pass %s", name)
                res = fn(module)
                if not isinstance(res, PassResult) and not hasattr(res, "graph_module"):
                    raise TypeError(f"the result of the pass {name} should be a PassResult")
                module = res.graph_module
                modified = modified or res.modified
                if res.modified and isinstance(module, torch.fx.GraphModule) and \
                        not getattr(fn, "compiles", False):
                    module.recompile()
                if self.run_checks_after_each_pass:
                    self.check(module)
            overall = overall or modified
            if not modified:
                break
        return PassResult(module, overall)


def run(passes: Any, module: torch.nn.Module) -> torch.nn.Module:
    """The module after ``passes`` (a list) under a :class:`PrunePassManager`."""
    return PrunePassManager(passes)(module).graph_module
