"""The one record fxprune keeps on a GraphModule: ``gm.meta["fxprune"]`` (a :class:`GraphRecord`).

Like ShapeProp's ``tensor_meta``, one typed record instead of loose keys: the frontend that traced the graph,
the tensors it stowed away as constants, the input spec of an exported graph, and, once pruned, the
expanded plan in the coordinates of the model first traced and every plan applied so far. Passes keep their
working state in it too (``model``, ``lowered``, ``graph``, ``expansion``, ``before``: see
:mod:`fxprune.passes`); a pruned copy never inherits that.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> small = fxprune.prune(m, {"0.weight:0": [0, 1]}, torch.randn(1, 4))
    >>> smaller = fxprune.prune(small, {"0.weight:0": [0]}, torch.randn(1, 4))   # index 2 of the original
    >>> rec = smaller.meta["fxprune"]
    >>> rec.frontend, rec.plan["0.weight:0"], len(rec.applied)
    ('fx', [0, 1, 2], 2)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Set

import numpy as np
import torch

__all__ = ["GraphRecord", "record_of", "compose"]


@dataclass
class GraphRecord:
    """What fxprune knows about one GraphModule (``gm.meta["fxprune"]``). Read like a mapping too
    (``rec["plan"]``)."""

    frontend: str = "fx"
    constants: Set[str] = field(default_factory=set)   # tensors the tracer stowed away: never plan keys
    inputs: Optional[Dict[str, Any]] = None              # an exported graph's input spec
    recorded: Optional[str] = None                       # the module an autograd recording stands for
    plan: Dict[str, List[int]] = field(default_factory=dict)  # removed so far, original coordinates
    applied: List[str] = field(default_factory=list)     # every plan applied (JSON), in order
    last: Dict[str, List[int]] = field(default_factory=dict)  # the last plan, expanded, in the coordinates
    #                                                           of the graph it was applied to
    # pass state (fxprune.passes), dropped by drop_state() and never inherited by a pruned copy:
    model: Any = field(default=None, repr=False)         # weakref to the module traced (the root to copy)
    cache_key: Any = field(default=None, repr=False)     # the analysis cache's key for that module
    lowered: Any = field(default=None, repr=False)       # the LowerCtx, before it is solved
    graph: Any = field(default=None, repr=False)         # the analysis (a ChannelGraph) ...
    analysed: Any = field(default=None, repr=False)      # ... of this fx.Graph (stale once it changes)
    expansion: Any = field(default=None, repr=False)     # (PrunePlan, Expansion) from ExpandPass
    before: Any = field(default=None, repr=False)        # (analysis, Expansion) the last ApplyPass used

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in {f.name for f in fields(self)}

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self else default

    def analysis(self, gm: torch.nn.Module) -> Any:
        """The analysis this record holds for ``gm``'s current graph, or None."""
        return self.graph if self.graph is not None and self.analysed is getattr(gm, "graph", gm) else None

    def source(self, default: Any = None) -> Any:
        """The module that was traced (``model``), or ``default`` when unknown or gone."""
        m = self.model() if self.model is not None else None
        return default if m is None else m

    def drop_state(self) -> None:
        """Forget the pass state."""
        self.model = self.cache_key = self.lowered = self.graph = self.analysed = None
        self.expansion = self.before = None

    def derived(self) -> "GraphRecord":
        """The record a copy pruned from this graph starts from (no pass state)."""
        return GraphRecord(self.frontend, set(self.constants), self.inputs, self.recorded, dict(self.plan),
                           list(self.applied), dict(self.last))


def record_of(gm: torch.nn.Module, create: bool = True) -> Optional[GraphRecord]:
    """``gm.meta["fxprune"]``, created empty when missing (None for a module without ``meta``)."""
    meta = getattr(gm, "meta", None)
    if not isinstance(meta, dict):
        return None
    rec = meta.get("fxprune")
    if not isinstance(rec, GraphRecord):
        if not create:
            return None
        rec = meta["fxprune"] = GraphRecord()
    return rec


def compose(before: Dict[str, List[int]], now: Dict[str, List[int]],
            sizes: Dict[str, int]) -> Dict[str, List[int]]:
    """A plan on an already pruned model (``now``, its coordinates; ``sizes`` its current sizes) added to
    what was removed before (``before``, original coordinates): the total in original coordinates.

    Example:
        >>> compose({"w:0": [0, 1]}, {"w:0": [0]}, {"w:0": 6})
        {'w:0': [0, 1, 2]}
    """
    out = {k: list(v) for k, v in before.items()}
    for key, idx in now.items():
        gone = sorted(out.get(key, []))
        size = sizes.get(key, 0) + len(gone)
        kept = np.setdiff1d(np.arange(size, dtype=np.int64), np.asarray(gone, dtype=np.int64))
        new = kept[np.asarray(idx, dtype=np.int64)] if len(idx) else np.zeros(0, np.int64)
        out[key] = sorted(set(gone) | set(new.tolist()))
    return out
