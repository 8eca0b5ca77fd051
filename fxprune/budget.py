"""Budget targets: remove ranked classes until a MAC or parameter budget is met.

The search is a bisection over the length of a prefix of the removal order. Each probe reads the pruned
size off the analysis (:mod:`fxprune.ircount`, exact for the ops it models) or, when the graph holds an op
it does not model, prunes a copy and counts it; either way the result is exact: removing one class fewer
would exceed the budget.

Example:
    >>> resolve_target(0.5, 1000, "macs"), resolve_target(300, 1000, "params")
    (500, 300)
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch.nn as nn

from .errors import PlanError
from .plan import PrunePlan

__all__ = ["resolve_target", "fit_budget"]

log = logging.getLogger(__name__)


def resolve_target(target: float, baseline: int, what: str) -> int:
    """A fraction (``0 < t <= 1``) of ``baseline``, or an absolute count (``t > 1``)."""
    if target is None or target <= 0:
        raise PlanError(f"target_{what} must be positive, got {target}")
    if target <= 1.0:
        return int(baseline * target)
    if target > baseline:
        raise PlanError(f"target_{what}={target:g} exceeds the model's {baseline:,} {what}")
    return int(target)


def _plan_of(order: Sequence[Tuple[str, List[int]]], k: int) -> PrunePlan:
    return PrunePlan.union(order[:k])


def measure(model: nn.Module, inputs: Any, what: str) -> int:
    """MACs or parameters of ``model``."""
    from .count import count, count_params

    return count(model, inputs)[0] if what == "macs" else count_params(model)


def _estimate(graph: Any, model: nn.Module, plan: PrunePlan, what: str) -> Any:
    from .ircount import macs_after, params_after

    mask = graph.expand(plan).mask
    return macs_after(graph, mask) if what == "macs" else params_after(graph, mask, model)


class _PrefixMasks:
    """Index masks of the prefixes of a removal order of whole classes, without building plans.

    A prefix's plan is a union of classes of the analysis, so expanding it removes exactly those classes:
    the classes of the first ``k`` entries. Their labels are gathered once; each probe marks a prefix of
    them (:meth:`ChannelGraph.checked_mask` still refuses a prefix that empties a dim, as ``expand`` does).
    """

    def __init__(self, graph: Any, order: Sequence[Tuple[str, List[int]]]):
        from .plan import parse_key

        self.graph = graph
        ids, ends = [], np.zeros(len(order) + 1, dtype=np.int64)
        for i, (key, idx) in enumerate(order):
            d = graph._param_dim(*parse_key(key))
            ids.append(np.asarray(idx, dtype=np.int64) + d.base)
            ends[i + 1] = ends[i] + len(idx)
        labels = graph.sol.labels
        self.labels = labels[np.concatenate(ids)] if ids else np.zeros(0, np.int64)
        self.ends = ends

    def mask(self, k: int) -> np.ndarray:
        return self.graph.checked_mask(self.labels[:self.ends[k]])[0]


def fit_budget(graph: Any, model: nn.Module, inputs: Any, order: Sequence[Tuple[str, List[int]]], what: str,
               target: int, baseline: Any = None) -> PrunePlan:
    """The shortest prefix of ``order`` whose removal brings ``what`` (``"macs"``/``"params"``) of
    ``model`` (analysed as ``graph``) to ``target`` or below. Warns and returns the whole order when
    even that misses. ``baseline``: ``what`` of ``model`` when the caller has counted it already."""
    def pruned(plan: PrunePlan) -> nn.Module:  # reuse the analysis: no re-trace per probe
        return graph.apply(plan, model, inputs)

    cache: Dict[int, int] = {0: measure(model, inputs, what) if baseline is None else int(baseline)}
    # Probes read sizes off the analysis (fxprune.ircount) when it models every op of this graph and agrees
    # with the counter on the unpruned model; otherwise each probe builds and counts a pruned copy.
    use_ir = graph.counts_from_ir and _estimate(graph, model, PrunePlan({}), what) == cache[0]

    prefixes = _PrefixMasks(graph, order) if use_ir else None

    def value(k: int) -> int:
        if k not in cache:
            if use_ir:
                from .ircount import macs_after, params_after
                mask = prefixes.mask(k)
                cache[k] = macs_after(graph, mask) if what == "macs" else params_after(graph, mask, model)
            else:
                cache[k] = measure(pruned(_plan_of(order, k)), inputs, what)
            log.info("budget: %d classes removed -> %s %d (target %d)", k, what, cache[k], target)
        return cache[k]

    if value(0) <= target:
        return PrunePlan({})
    lo, hi = 0, len(order)  # value(lo) > target; find the smallest hi with value(hi) <= target
    if value(hi) > target:
        log.warning("budget: removing every removable class leaves %s=%d > target %d", what, value(hi), target)
        return _plan_of(order, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if value(mid) <= target:
            hi = mid
        else:
            lo = mid
    return _plan_of(order, hi)
