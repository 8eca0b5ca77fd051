"""Budget targets: remove ranked classes until a MAC or parameter budget is met.

The search is a bisection over the length of a prefix of the removal order; each probe prunes a copy
and counts it, so the result is exact: removing one class fewer would exceed the budget.

Example:
    >>> resolve_target(0.5, 1000, "macs"), resolve_target(300, 1000, "params")
    (500, 300)
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

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
    entries: Dict[str, List[int]] = {}
    for key, idx in order[:k]:
        entries.setdefault(key, []).extend(idx)
    return PrunePlan(entries)


def measure(model: nn.Module, inputs: Any, what: str) -> int:
    """MACs or parameters of ``model``."""
    from .count import count, count_params

    return count(model, inputs)[0] if what == "macs" else count_params(model)


def fit_budget(graph: Any, model: nn.Module, inputs: Any, order: Sequence[Tuple[str, List[int]]], what: str,
               target: int) -> PrunePlan:
    """The shortest prefix of ``order`` whose removal brings ``what`` (``"macs"``/``"params"``) of
    ``model`` (analysed as ``graph``) to ``target`` or below. Warns and returns the whole order when
    even that misses."""
    from .analyze import ChannelGraph
    from .rewrite import apply_plan, prune

    def pruned(plan: PrunePlan) -> nn.Module:
        if isinstance(graph, ChannelGraph):  # reuse the analysis: no re-trace per probe
            return apply_plan(graph, plan, model)
        return prune(model, plan, inputs)

    cache: Dict[int, int] = {0: measure(model, inputs, what)}

    def value(k: int) -> int:
        if k not in cache:
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
