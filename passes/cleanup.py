"""CleanupPass: drop the pass state, remove dead code, lint and recompile."""
from __future__ import annotations

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.record import record_of

__all__ = ["CleanupPass"]


class CleanupPass(PassBase):
    """Drop the pass state from the record; on a GraphModule, remove dead code, lint and recompile.

    Example:
        >>> import torch, fxprune
        >>> from fxprune.passes import CleanupPass, TracePass
        >>> gm = TracePass(torch.randn(1, 4))(torch.nn.Sequential(torch.nn.Linear(4, 2))).graph_module
        >>> CleanupPass()(gm).modified, gm.meta["fxprune"].model
        (False, None)
    """

    compiles = True

    def call(self, gm: torch.nn.Module) -> PassResult:
        rec = record_of(gm, create=False)
        if rec is not None:
            rec.drop_state()
        if not isinstance(gm, torch.fx.GraphModule):
            return PassResult(gm, False)
        changed = gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return PassResult(gm, changed)
