"""TracePass: capture the model as a GraphModule with shapes in ``node.meta["val"]``."""
from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune import cache
from fxprune.errors import TraceError
from fxprune.frontend import FRONTENDS, trace
from fxprune.record import record_of

from ._modules import carry, detached

__all__ = ["TracePass", "cache_keys"]


def cache_keys(model: torch.nn.Module, example_inputs: Any, strict: bool, frontend: str):
    """The analysis cache's keys for ``model``: a traced graph's, and the parts frontend's (which records
    one real forward, whose branches may read the input values: reused only for the same input tensors)."""
    from torch.utils._pytree import tree_leaves

    key = cache.fingerprint(model, example_inputs, strict, frontend)
    return key, None if key is None else (key, tuple(id(t) for t in tree_leaves(example_inputs)))


class TracePass(PassBase):
    """The model as a shape-annotated GraphModule (:func:`fxprune.trace`); ``frontend`` as there.

    A model analysed before with the same inputs (:mod:`fxprune.cache`) comes back as a detached copy of
    its analysed GraphModule, with the analysis in its record: the next passes have nothing to do. A model
    that neither tracer takes (``frontend="auto"``), or ``frontend="parts"``/``"autograd"``, is analysed
    here by the parts frontend (:mod:`fxprune.frontend.partial`), which lowers and solves its parts itself.
    A GraphModule is annotated in place, or, with ``fresh=True``, in a detached copy that later passes may
    change without touching it (what :func:`fxprune.prune` asks for).

    Example:
        >>> import torch, fxprune
        >>> from fxprune.passes import TracePass
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> res = TracePass(torch.randn(2, 4))(m)
        >>> type(res.graph_module).__name__, res.graph_module.meta["fxprune"].frontend, res.modified
        ('Sequential', 'fx', True)
    """

    compiles = True  # leaves its module compiled: PrunePassManager need not recompile

    def __init__(self, example_inputs: Any, frontend: str = "auto", strict: bool = False,
                 fresh: bool = False):
        super().__init__()
        if frontend not in FRONTENDS:
            raise TraceError(f"frontend must be one of {', '.join(map(repr, FRONTENDS))}, got {frontend!r}")
        self.example_inputs, self.frontend, self.strict, self.fresh = example_inputs, frontend, strict, fresh

    def call(self, module: torch.nn.Module) -> PassResult:
        rec = record_of(module, create=False)
        if rec is not None and rec.analysis(module) is not None:  # analysed earlier in this pipeline
            return PassResult(module, False)
        key, parts_key = cache_keys(module, self.example_inputs, self.strict, self.frontend)
        hit = cache.lookup(module, key) or cache.lookup(module, parts_key)
        if hit is not None:
            return PassResult(carry(hit, module), True)
        cause: Optional[TraceError] = None
        if self.frontend not in ("parts", "autograd"):
            try:
                gm = trace(module, self.example_inputs, frontend=self.frontend)
            except TraceError as e:
                # neither tracer took the whole model: analyse its traceable submodules instead
                if self.frontend != "auto" or e.__cause__ is None or isinstance(module, torch.fx.GraphModule):
                    raise
                cause = e
            else:
                if gm is module and self.fresh:
                    gm = detached(module)
                rec = record_of(gm)
                rec.model, rec.cache_key = weakref.ref(module), key
                return PassResult(gm, gm is not module)
        return PassResult(self._parts(module, cause, parts_key), True)

    def _parts(self, module: torch.nn.Module, cause: Optional[TraceError], key: Any) -> torch.nn.Module:
        from fxprune.analyze import warn_if_nothing_prunable
        from fxprune.frontend.partial import analyze_partial

        part = analyze_partial(module, self.example_inputs, strict=self.strict,
                               cause=cause or TraceError("frontend='parts' was asked for"),
                               frontend=self.frontend)
        warn_if_nothing_prunable(part, module)
        cache.store(module, key, part)
        return carry(part, module)
