"""Plans that mix whole-head classes with head-dim classes (a head step, then a dim step).

One analysis expresses either "whole head h" or "dim j of every head" as classes, never both; a
cumulative plan that removed heads and then dims in the remaining heads is closed under neither. It is
applied as two plans: the whole-head classes it contains (whole-head analysis), then the rest on the
result (ordinary analysis), with indices moved to the intermediate model's coordinates.

Example:
    >>> import torch, fxprune
    >>> class Attn(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.qkv, self.proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
    ...     def forward(self, x):
    ...         q, k, v = self.qkv(x).reshape(2, 3, 2, 4).permute(1, 2, 0, 3).unbind(0)
    ...         a = (q @ k.transpose(-2, -1)).softmax(-1) @ v
    ...         return self.proj(a.transpose(0, 1).reshape(2, 8))
    >>> m, x = Attn(), torch.randn(2, 8)
    >>> head0 = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]      # q, k, v rows of head 0
    >>> dim0_of_head1 = [4, 12, 20]                             # dim 0 of head 1 in q, k and v
    >>> small = fxprune.prune(m, {"qkv.weight:0": head0 + dim0_of_head1}, x)
    >>> small.qkv.out_features, small.proj.in_features
    (9, 3)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import torch.nn as nn

from .plan import PrunePlan

__all__ = ["split_mixed"]


def split_mixed(model: nn.Module, plan: PrunePlan, inputs: Any,
                strict: bool = False) -> Optional[Tuple[PrunePlan, nn.Module, PrunePlan]]:
    """``(heads_plan, intermediate model, rest_plan)`` when ``plan`` is whole heads plus a remainder,
    else None. ``rest_plan`` is in the intermediate model's coordinates."""
    from .analyze import analyze
    from .errors import PlanError
    from .rewrite import prune

    heads = analyze(model, inputs, strict=strict, prefer_heads=True)
    if not getattr(heads, "ctx", None) or not heads.ctx.ambiguous:
        return None
    want: Dict[str, Set[int]] = {k: set(int(i) for i in v) for k, v in plan.items()}
    first: Dict[str, List[int]] = {}
    for g in heads.groups:
        if g.pinned:
            continue
        for key, idx in g.all_classes:
            if len(idx) > 1 and key in want and want[key].issuperset(idx):
                first.setdefault(key, []).extend(idx)
    if not first:
        return None
    try:
        exp = heads.expand(PrunePlan(first))
        mid = prune(model, PrunePlan(first), inputs, strict=strict)
    except PlanError:
        return None
    rest: Dict[str, List[int]] = {}
    for key, idx in want.items():
        gone = np.asarray(sorted(exp.plan.get(key, [])), dtype=np.int64)
        left = sorted(set(idx) - set(gone.tolist()))
        if left:  # an index's position after the removed ones before it went
            rest[key] = (np.asarray(left) - np.searchsorted(gone, left)).tolist()
    return PrunePlan(first), mid, PrunePlan(rest)
