"""Simple plan builders on top of ``analyze``: remove a share of every unpinned group.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = fxprune.plan_by_ratio(fxprune.analyze(m, torch.randn(1, 4)), 0.5)
    >>> len(plan["0.weight:0"])
    4
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch

from .analyze import ChannelGraph, Group
from .gcpause import no_gc
from .plan import PrunePlan

__all__ = ["plan_by_ratio", "class_scores", "class_dim_counts"]


def _tensors(graph: ChannelGraph) -> Dict[str, torch.Tensor]:
    out = dict(graph.gm.named_parameters(remove_duplicate=False))
    out.update(dict(graph.gm.named_buffers(remove_duplicate=False)))
    return out


def class_scores(graph: ChannelGraph, group: Group, params: Dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """L2 norm of every removable class over all parameter slices it covers (one score per class)."""
    params = _tensors(graph) if params is None else params
    sq = np.zeros(len(group.labels), dtype=np.float64)
    pos = np.full(int(graph.sol.labels.max()) + 1, -1, dtype=np.int64)
    pos[group.labels] = np.arange(len(group.labels))
    for d in group.dims:
        if not d.is_param or d.value[1] not in params:
            continue
        t = params[d.value[1]].detach()
        if not t.is_floating_point() or t.ndim == 0:
            continue
        a = t.float().cpu().numpy()  # numpy: small single-threaded reductions, no thread start-up per call
        per = np.square(a).sum(axis=tuple(i for i in range(a.ndim) if i != d.dim), dtype=np.float64)
        where = pos[graph.sol.labels[d.base:d.base + d.size]]
        hit = where >= 0
        np.add.at(sq, where[hit], per[hit])
    return np.sqrt(sq)


def class_dim_counts(group: Group) -> Tuple[List[List[Tuple[int, int]]], Dict[int, int]]:
    """For every removable class of ``group`` (in :attr:`Group.all_classes` order): the dims of the group
    it takes indices from, as ``(dim id, count)``; and every dim's size. A selection that never takes a
    dim's last index keeps every value of the group non-empty: parameters, but also a split part, one
    chunk or one head's slice of an activation.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> g = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
        >>> counts, sizes = class_dim_counts(g)
        >>> len(counts), all(n == 1 for c in counts for _, n in c), set(sizes.values())
        (3, True, {3})
    """
    counts: List[List[Tuple[int, int]]] = [[] for _ in range(len(group.labels))]
    sizes: Dict[int, int] = {}
    if not len(group.labels):
        return counts, sizes
    order = np.argsort(group.labels)
    sorted_labs = group.labels[order]
    for d in group.dims:
        if d.size == 0:
            continue
        sizes[d.id] = d.size
        u, c = np.unique(group.sol_labels[d.base:d.base + d.size], return_counts=True)
        at = np.clip(np.searchsorted(sorted_labs, u), 0, len(sorted_labs) - 1)
        hit = sorted_labs[at] == u
        for i, cnt in zip(order[at[hit]].tolist(), c[hit].tolist()):
            counts[i].append((d.id, cnt))
    return counts, sizes


@no_gc
def plan_by_ratio(graph: ChannelGraph, ratio: float) -> PrunePlan:
    """Remove ``floor(ratio * n)`` of the ``n`` removable classes of every unpinned group.

    Lowest L2 norm first; a class is skipped when taking it would empty some dim of the group.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    entries: Dict[str, List[int]] = {}
    params = _tensors(graph)
    for g in graph.groups:
        if g.pinned or not g.all_classes:
            continue
        n_remove = int(np.floor(ratio * len(g.all_classes)))
        if n_remove == 0:
            continue
        scores = class_scores(graph, g, params)
        counts, remaining = class_dim_counts(g)
        taken = 0
        for i in np.argsort(scores, kind="stable").tolist():
            if taken >= n_remove:
                break
            if any(remaining[k] - v <= 0 for k, v in counts[i]):
                continue
            for k, v in counts[i]:
                remaining[k] -= v
            key, idx = g.all_classes[i]
            entries.setdefault(key, []).extend(idx)
            taken += 1
    return PrunePlan(entries)
