"""Simple plan builders on top of ``analyze``: remove a share of every unpinned group.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = fxprune.plan_by_ratio(fxprune.analyze(m, torch.randn(1, 4)), 0.5)
    >>> len(plan["0.weight:0"])
    4
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .analyze import ChannelGraph, Group
from .gcpause import no_gc
from .errors import MetaTensorError, PlanError, user_stacklevel
from .plan import PrunePlan

__all__ = ["plan_by_ratio", "class_scores", "class_dim_counts", "valid_prefix"]


def _tensors(graph: ChannelGraph) -> Dict[str, torch.Tensor]:
    out = dict(graph.gm.named_parameters(remove_duplicate=False))
    out.update(dict(graph.gm.named_buffers(remove_duplicate=False)))
    return out


class _GroupIndex:
    """Every index of every non-empty dim of a group paired with the position (in
    :attr:`Group.all_classes`) of each removable class that removes it (``rows``/``pos``; an index of a
    grid product has one pair per head and head dim). One vectorised pass serves scores and dim counts."""

    def __init__(self, group: Group):
        self.dims = [d for d in group.dims if d.size]
        sizes = np.array([d.size for d in self.dims], dtype=np.int64)
        self.sizes = sizes
        self.offsets = np.concatenate(([0], np.cumsum(sizes)))
        n = int(self.offsets[-1])
        bases = np.array([d.base for d in self.dims], dtype=np.int64)
        which = np.repeat(np.arange(len(self.dims), dtype=np.int64), sizes)
        ids = np.arange(n, dtype=np.int64) + np.repeat(bases - self.offsets[:-1], sizes)
        # (index, class) pairs: an index of a grid product is removed by a head and by a head dim
        rows, self.pos = group.positions(ids)
        self.rows = rows
        self.which = which[rows]

    def triples(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(class position, dim position, count)``: how many indices of each dim every class takes,
        sorted by class then dim (group order)."""
        nd = max(len(self.dims), 1)
        u, c = np.unique(self.pos * nd + self.which, return_counts=True)
        return u // nd, u % nd, c


_CHUNK = 1 << 17  # floats squared at a time (512 KiB): in cache, so the weights are read from memory once


def _sq_sums(t: torch.Tensor, dims: Iterable[int], scratch: List[np.ndarray]) -> Dict[int, np.ndarray]:
    """Per-index sums of squares of ``t`` along each of ``dims`` (float32 sums, returned as float64).

    Dims 0 and 1 (nearly every weight) are summed in blocks of whole rows of the ``(d0, rest)`` view:
    each block's squares stay in cache for both sums, so the weights are read from memory once (squaring
    a whole tensor first and reducing it twice took 40 % more time on regnet_y_128gf). Other dims run
    over contiguous memory too (``(outer, d * inner)`` summed over outer rows first, then ``(d, inner)``
    over inner): summing a small inner axis directly is one slow reduction per output. The sums stay in
    float32 (numpy's pairwise summation along rows): a float64 accumulation casts every square and took
    40 % more time, for ranks that differ only between channels whose norms agree to about five digits
    (4e-5 relative at most against float64 sums in the tests).
    ``scratch`` holds one reused buffer for the squares (fresh pages for every tensor cost more than the
    arithmetic).
    """
    a = t.detach()
    if a.dtype != torch.float32 or a.device.type != "cpu":
        a = a.float().cpu()
    a = a.numpy()  # numpy: single-threaded reductions, no thread start-up per call
    if a.ndim == 1:  # one sum per index: the square itself (what the general path gives, exactly)
        return {0: np.square(a).astype(np.float64)} if 0 in dims else {}
    a = np.ascontiguousarray(a)
    want = sorted(set(dims))
    n_rows, width = a.shape[0], math.prod(a.shape[1:])
    rows_cols = a.reshape(n_rows, width)
    if set(want) <= {0, 1} and 0 < width <= _CHUNK:
        if scratch[0].size < _CHUNK:
            scratch[0] = np.empty(_CHUNK, dtype=np.float32)
        step = _CHUNK // width
        per_row = np.empty(n_rows, np.float32) if 0 in want else None
        per_col = np.zeros(width, np.float64) if 1 in want else None  # float64 across blocks: cheap
        for lo in range(0, n_rows, step):
            hi = min(n_rows, lo + step)
            sq = np.square(rows_cols[lo:hi], out=scratch[0][:(hi - lo) * width].reshape(hi - lo, width))
            if per_row is not None:
                sq.sum(axis=1, out=per_row[lo:hi])
            if per_col is not None:
                per_col += sq.sum(axis=0)
        out = {}
        if per_row is not None:
            out[0] = per_row.astype(np.float64)
        if per_col is not None:
            out[1] = per_col.reshape(a.shape[1], width // a.shape[1]).sum(axis=1)
        return out
    if scratch[0].size < a.size:
        scratch[0] = np.empty(a.size, dtype=np.float32)
    sq = np.square(a, out=scratch[0][:a.size].reshape(a.shape))
    out = {}
    for d in want:
        outer, size, inner = math.prod(a.shape[:d]), a.shape[d], math.prod(a.shape[d + 1:])
        if outer == 1:
            out[d] = sq.reshape(size, inner).sum(axis=1).astype(np.float64)
        else:
            out[d] = sq.reshape(outer, size * inner).sum(axis=0).reshape(size, inner).sum(axis=1).astype(
                np.float64)
    return out


def _scorable(t: Optional[torch.Tensor]) -> bool:
    return t is not None and t.is_floating_point() and t.ndim > 0


def _scores(group: Group, gi: _GroupIndex, sums: Dict[Tuple[str, int], np.ndarray]) -> np.ndarray:
    """Sums of squares per class, accumulated dim by dim in group order (as ``np.add.at`` would)."""
    vals, where = [], []
    bounds = np.searchsorted(gi.rows, gi.offsets).tolist()
    offsets = gi.offsets.tolist()
    for k, d in enumerate(gi.dims):
        per = sums.get((d.value[1], d.dim)) if d.is_param else None
        if per is None:
            continue
        lo, hi = bounds[k], bounds[k + 1]
        vals.append(per[gi.rows[lo:hi] - offsets[k]])
        where.append(gi.pos[lo:hi])
    n = len(group.labels)
    if not vals:
        return np.zeros(n, dtype=np.float64)
    return np.bincount(np.concatenate(where), weights=np.concatenate(vals), minlength=n)


def _needed_sums(graph: ChannelGraph, groups: List[Group], params: Dict[str, torch.Tensor]
                 ) -> Dict[Tuple[str, int], np.ndarray]:
    need: Dict[str, set] = {}
    for g in groups:
        for d in g.dims:
            if d.is_param and d.size and _scorable(params.get(d.value[1])):
                need.setdefault(d.value[1], set()).add(d.dim)
    out: Dict[Tuple[str, int], np.ndarray] = {}
    scratch = [np.empty(0, dtype=np.float32)]
    for name, dims in need.items():
        for d, per in _sq_sums(params[name], dims, scratch).items():
            out[(name, d)] = per
    return out


def class_scores(graph: ChannelGraph, group: Group, params: Dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """L2 norm of every removable class over all parameter slices it covers (one score per class).

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.tensor([[3., 4.], [0., 0.]])); _ = m[0].bias.zero_()
        ...     _ = m[2].weight.copy_(torch.tensor([[0., 1.]]))
        >>> graph = fxprune.analyze(m, torch.randn(1, 2))
        >>> class_scores(graph, graph.group_of("0.weight", 0)).tolist()
        [5.0, 1.0]
    """
    params = _tensors(graph) if params is None else params
    return np.sqrt(_scores(group, _GroupIndex(group), _needed_sums(graph, [group], params)))


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
    hit = group.__dict__.get("_dim_counts")  # a group does not change once built; callers may edit sizes
    if hit is not None:
        return hit[0], dict(hit[1])
    counts: List[List[Tuple[int, int]]] = [[] for _ in range(len(group.labels))]
    if not len(group.labels):
        return counts, {}
    gi = _GroupIndex(group)
    sizes = {d.id: d.size for d in gi.dims}
    ids = [d.id for d in gi.dims]
    for c, k, n in zip(*(a.tolist() for a in gi.triples())):
        counts[c].append((ids[k], n))
    group.__dict__["_dim_counts"] = (counts, sizes)
    return counts, dict(sizes)


def _greedy(scores: np.ndarray, n_remove: int, gi: _GroupIndex) -> List[int]:
    """Classes in ascending score order, skipping one that would empty a dim, until ``n_remove`` are taken.

    Vectorised up to the first class that would empty a dim (usually none before ``n_remove``); from there
    on class by class, exactly as the plain loop.
    """
    order = np.argsort(scores, kind="stable")
    nd = max(len(gi.dims), 1)
    if len(gi.pos) and n_remove < gi.sizes.min() and \
            np.bincount(gi.pos * nd + gi.which).max() <= 1:
        return order[:n_remove].tolist()  # a class takes at most one index of a dim: none can empty
    cls, dim, cnt = gi.triples()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    r = rank[cls]
    by = np.lexsort((r, dim))  # per dim, in the order classes are tried
    dim_s, cum = dim[by], np.cumsum(cnt[by])
    first = np.searchsorted(dim_s, np.arange(len(gi.dims)), "left")
    before = np.concatenate(([0], cum))[first][dim_s]  # cumulative count of earlier dims
    full = (cum - before) >= gi.sizes[dim_s]  # taking this class (and all before it) empties the dim
    stop = int(r[by][full].min()) if full.any() else len(order)
    if stop >= n_remove:
        return order[:n_remove].tolist()
    taken = order[:stop].tolist()
    remaining = gi.sizes.copy()
    take = np.isin(cls, order[:stop])
    np.subtract.at(remaining, dim[take], cnt[take])
    starts = np.searchsorted(cls, np.arange(len(order) + 1), "left").tolist()
    rem, dims, cnts = remaining.tolist(), dim.tolist(), cnt.tolist()  # plain lists: one class at a time
    for i in order[stop:].tolist():
        if len(taken) >= n_remove:
            break
        span = range(starts[i], starts[i + 1])  # each dim once per class (triples are unique)
        if any(rem[dims[j]] - cnts[j] <= 0 for j in span):
            continue
        for j in span:
            rem[dims[j]] -= cnts[j]
        taken.append(i)
    return taken


@no_gc
def plan_by_ratio(graph: ChannelGraph, ratio: float, heads: bool = False,
                  importance: Any = "auto") -> PrunePlan:
    """Remove ``floor(ratio * n)`` of the ``n`` removable classes of every unpinned group.

    Lowest L2 norm first; a class is skipped when taking it would empty some dim of the group. With
    ``heads``, a group that holds attention heads loses whole heads (:meth:`Group.heads`) instead of
    head dims; the other groups lose channels as without it.

    ``importance`` ranks the classes: ``"l2"`` (the L2 norm above), ``"structure"`` (every group keeps its
    first classes and loses its last ones; :class:`~fxprune.scores.StructureImportance`, needs no values),
    scores computed elsewhere (``{"<param>:<dim>": 1-D tensor}`` or a scores file, see
    :mod:`fxprune.scores`; a group without scores is left as it is, with a warning) or ``"auto"``: L2,
    or structure with one warning when the weights are on the ``meta`` device. ``"l2"`` on meta weights
    raises :class:`~fxprune.errors.MetaTensorError` naming the parameter.

    Example:
        >>> import torch, fxprune
        >>> with torch.device("meta"):
        ...     m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = fxprune.analyze(m, torch.randn(1, 4, device="meta"))
        >>> plan_by_ratio(graph, 0.25, importance="structure")["0.weight:0"]   # the last two of eight
        [6, 7]
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    groups = [g.heads() if heads and g.head_classes else g for g in graph.groups]
    todo = [(g, int(np.floor(ratio * len(g.all_classes)))) for g in groups if not g.pinned and g.all_classes]
    todo = [(g, n) for g, n in todo if n > 0]
    score = _ranker(graph, [g for g, _ in todo], importance)
    picked: List[Tuple[str, List[int]]] = []
    gridded: List[Tuple[Group, List[Tuple[str, List[int]]]]] = []  # picks that valid_prefix must check
    for g, n_remove in todo:
        gi = _GroupIndex(g)
        scores = score(g, gi)
        if scores is None:
            continue
        chosen = [g.all_classes[i] for i in _greedy(scores, n_remove, gi)]
        if g.ancestors is None:
            picked.extend(chosen)
        else:
            gridded.append((g, chosen))
    if gridded:
        # a closure only grows with the plan: when all picks together expand, each group's alone does, and
        # one expansion replaces one per group (regnet_x_400mf: 16 expansions, 68 of 230 ms)
        everything = PrunePlan.union(picked + [c for _, chosen in gridded for c in chosen])
        if _expands(graph, everything):
            return everything
        for g, chosen in gridded:
            picked.extend(valid_prefix(graph, chosen, g.key, g))
    return PrunePlan.union(picked)


def _expands(graph: ChannelGraph, plan: PrunePlan) -> bool:
    try:
        graph.expand(plan)
        return True
    except PlanError:
        return False


def _ranker(graph: ChannelGraph, groups: List[Group], importance: Any
            ) -> Callable[[Group, _GroupIndex], Optional[np.ndarray]]:
    """``(group, its index) -> one score per class`` (None: leave the group alone) for
    :func:`plan_by_ratio`."""
    from .scores import ScoreImportance, StructureImportance, _warn_unscored

    params = _tensors(graph)
    if isinstance(importance, str) and importance in ("auto", "l2"):
        meta = [d.value[1] for g in groups for d in g.dims if d.is_param and d.size
                and _scorable(params.get(d.value[1])) and params[d.value[1]].is_meta]
        if meta and importance == "l2":
            raise MetaTensorError(f"plan_by_ratio: importance='l2' needs the values of {meta[0]!r}, which "
                                  "lives on the meta device; use importance='structure' or scores computed "
                                  "elsewhere")
        if meta:
            warnings.warn("fxprune: plan_by_ratio: the weights are on the meta device; every group keeps its "
                          "first classes and loses its last ones (importance='structure'); pass scores "
                          "computed elsewhere to rank by them", stacklevel=user_stacklevel())
            importance = "structure"
        else:
            sums = _needed_sums(graph, groups, params)
            return lambda g, gi: np.sqrt(_scores(g, gi, sums))
    if isinstance(importance, str) and importance == "structure":
        imp: Any = StructureImportance()
    elif callable(importance):  # an Importance, or any ``(group, model) -> one score per class or None``
        imp = importance
    elif isinstance(importance, (Mapping, str, os.PathLike)):
        imp = ScoreImportance(importance)
        from .scores import check_scores
        _warn_unscored(check_scores(graph, imp) if groups else [], " (plan_by_ratio)")
    else:
        raise PlanError(f"plan_by_ratio: importance must be 'auto', 'l2', 'structure', a scores dict, a "
                        f"scores file or a criterion, got {type(importance).__name__}")

    def score(g: Group, gi: _GroupIndex) -> Optional[np.ndarray]:
        s = imp(g, graph.gm)
        return None if s is None else torch.as_tensor(s).to(torch.float64).numpy()
    return score


def valid_prefix(graph: ChannelGraph, picks: List[Tuple[str, List[int]]], where: str = "",
                 group: Optional[Group] = None) -> List[Tuple[str, List[int]]]:
    """The longest prefix of one group's picks (best first) that a plan may remove. Counting each class's
    indices cannot see everything: grids chained through reshapes and grouped convolutions may close a set
    of classes to more than their union (EfficientViT's multi-scale attention), so the set is expanded
    once and, when it would empty a dim, cut back by bisection; a cut is warned about, naming ``where``.
    Given the ``group`` the picks come from, a group without grids is returned as it is (nothing to close).

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> graph = fxprune.analyze(m, torch.randn(1, 4))
        >>> len(valid_prefix(graph, graph.group_of("0.weight", 0).all_classes))   # all 3 would empty it
        2
    """
    if group is not None and group.ancestors is None:
        return picks  # no grid: classes are exact closures, and the caller counted every dim

    def ok(k: int) -> bool:
        return _expands(graph, PrunePlan.union(picks[:k]))

    if not picks or ok(len(picks)):
        return picks
    lo, hi = 0, len(picks)  # ok(lo) holds, ok(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    warnings.warn(f"fxprune: {where or 'a group'} loses {lo} of the {len(picks)} classes chosen: more would "
                  "expand, through its grids, to a plan that empties a dim", stacklevel=user_stacklevel())
    return picks[:lo]
