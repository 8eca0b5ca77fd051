"""``analyze``: the public view of the channel IR — groups, classes, and plan expansion.

Example:
    >>> import torch, torchvision, fxprune
    >>> graph = fxprune.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    >>> g = graph.group_of("layer1.0.conv1.weight", 0)
    >>> g.key, g.size, g.pinned
    ('layer1.0.conv1.weight:0', 64, None)
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.fx

from .errors import PlanError, user_stacklevel
from .gcpause import no_gc, paused_gc
from .grid import csr_rows, with_derived
from .ir import DimNode, Solution
from .lower import LowerCtx, _warned
from .plan import PrunePlan, make_key, parse_key
from .record import record_of

__all__ = ["analyze", "ChannelGraph", "Group", "Expansion"]


_NONE = np.zeros(0, np.int64)
_NONE.flags.writeable = False


@dataclass
class Group:
    """Coupled dims that can only lose channels together.

    ``classes`` lists the removable classes that touch the key member, in the key's coordinates;
    ``all_classes`` lists every removable class as ``(member key, indices)``.
    """

    key: str
    size: int
    pinned: Optional[str]
    members: List[Tuple[str, int]]
    classes: List[List[int]]
    all_classes: List[Tuple[str, List[int]]]
    dims: List[DimNode] = field(repr=False, default_factory=list)
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    sol_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    #: whole heads (and whole GQA kv groups, and the same query head of every group), removable with or
    #: instead of ``all_classes``; see :meth:`heads`
    head_classes: List[Tuple[str, List[int]]] = field(repr=False, default_factory=list)
    head_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    ancestors: Any = field(repr=False, default=None)  # the grids' label -> factor label map, if any
    head_dims: Optional[List[DimNode]] = field(repr=False, default=None)  # every group a head touches
    head_members: Optional[List[Tuple[str, int]]] = field(repr=False, default=None)
    head_span: List[Tuple[int, ...]] = field(repr=False, default_factory=list)  # groups each head spans

    def heads(self) -> "Group":
        """This group with its head classes as ``all_classes`` (what a whole-head criterion scores), over
        every group the heads remove indices from (q/k rows, v rows, ``out_proj`` columns).

        Example:
            >>> import torch, fxprune
            >>> mha = torch.nn.MultiheadAttention(8, 2)
            >>> class M(torch.nn.Module):
            ...     def __init__(self):
            ...         super().__init__(); self.attn = mha
            ...     def forward(self, x):
            ...         return self.attn(x, x, x)[0]
            >>> g = fxprune.analyze(M(), torch.randn(5, 1, 8)).group_of("attn.in_proj_weight", 0)
            >>> [len(i) for _, i in g.heads().all_classes]   # q, k and v rows of each head
            [12, 12]
            >>> [len(p.all_classes) for p in g.head_parts()]  # one attention: one part
            [2]
        """
        return dataclasses.replace(self, all_classes=list(self.head_classes), labels=self.head_labels,
                                   classes=[], head_classes=[], head_labels=np.zeros(0, np.int64),
                                   dims=self.head_dims or self.dims,
                                   members=self.head_members or self.members)

    def head_parts(self) -> List["Group"]:
        """:meth:`heads`, one view per attention: head classes that remove indices from the same groups
        (one layer's v/o group) together. Several layers share one q/k group when their RoPE tables are
        one buffer; their heads are still counted per layer (example: :meth:`heads`).
        """
        if not self.head_classes:
            return []
        whole = self.heads()
        spans = self.head_span or [()] * len(self.head_classes)
        parts: Dict[Tuple[int, ...], List[int]] = {}
        for i, span in enumerate(spans):
            parts.setdefault(span, []).append(i)
        if len(parts) == 1:
            return [whole]
        return [dataclasses.replace(whole, all_classes=[self.head_classes[i] for i in idx],
                                    labels=self.head_labels[idx]) for idx in parts.values()]

    def positions(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(row, pos)`` pairs: global index ``ids[row]`` is removed by class ``all_classes[pos]``. An
        index of a grid product (a row of ``q_proj``) is removed by a head and by a head dim: it appears
        once per class that removes it; an index nothing removes does not appear."""
        if not len(self.labels) or not len(ids):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.argsort(self.labels)
        sorted_labs = self.labels[order]
        labs = self.sol_labels[ids]
        if self.ancestors is None:
            rows = np.arange(len(ids), dtype=np.int64)
        else:
            rows, labs = csr_rows(self.ancestors, labs)
        at = np.clip(np.searchsorted(sorted_labs, labs), 0, len(sorted_labs) - 1)
        hit = sorted_labs[at] == labs
        return rows[hit], order[at[hit]]

    def index_classes(self) -> List[Tuple[str, int, np.ndarray]]:
        """For every parameter/buffer dim of the group: ``(name, dim, pos)`` where ``pos[i]`` is the
        position in :attr:`all_classes` of the class holding index ``i`` of that dim, or -1 when index
        ``i`` cannot be removed. Importance criteria score classes through this map. A dim whose indices
        several classes remove (grid products: a head and a head dim) is listed once per such class.

        Example:
            >>> import torch, fxprune
            >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
            >>> g = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
            >>> [(n, d, p.tolist()) for n, d, p in g.index_classes()]
            [('0.weight', 0, [0, 1, 2]), ('0.bias', 0, [0, 1, 2]), ('2.weight', 1, [0, 1, 2])]
        """
        if not len(self.labels):
            return []
        out = []
        for d in self.dims:
            if not d.is_param or d.size == 0:
                continue
            rows, pos = self.positions(np.arange(d.base, d.base + d.size, dtype=np.int64))
            if not len(rows):
                out.append((d.value[1], d.dim, np.full(d.size, -1, np.int64)))
                continue
            order = np.lexsort((pos, rows))
            rows, pos = rows[order], pos[order]
            first = np.searchsorted(rows, rows, "left")
            layer = np.arange(len(rows)) - first  # the k-th class removing the same index
            for k in range(int(layer.max()) + 1):
                arr = np.full(d.size, -1, np.int64)
                arr[rows[layer == k]] = pos[layer == k]
                out.append((d.value[1], d.dim, arr))
        return out

    def __repr__(self) -> str:
        state = f"pinned: {self.pinned}" if self.pinned else f"{len(self.all_classes)} removable classes"
        return f"Group({self.key!r}, size={self.size}, {len(self.members)} members, {state})"


@dataclass
class Expansion:
    """A plan expanded to whole classes: removed global ids and the per-parameter plan."""

    removed_labels: np.ndarray
    mask: np.ndarray
    plan: Dict[str, List[int]]


class ChannelGraph:
    """The result of :func:`analyze` for every frontend: ``groups``, ``group_of``, and plan expansion.

    ``source`` (set by the frontend, :mod:`fxprune.frontend.source`) says how the IR maps onto the model:
    one traced graph, or the parts of a model that only traces in parts (:mod:`fxprune.frontend.partial`:
    then ``gm`` is the model itself, and ``parts``, ``untraced``, ``recorded`` and ``stitched`` say what was
    traced, what stays Python, what was recorded below Python and how many part interfaces were coupled).
    Plan keys, :meth:`apply` and :meth:`verify` go through it.
    """

    frontend = "fx"  # the frontend that traced ``gm`` (set by :func:`analyze`)

    def __init__(self, gm: torch.nn.Module, ctx: LowerCtx, sol: Solution, source: Any = None):
        from .frontend.source import GraphSource

        self.gm, self.ctx, self.sol = gm, ctx, sol
        self.source = GraphSource() if source is None else source
        self.ir = ctx.ir
        self._pinned_labels = np.fromiter(sol.pinned_reason.keys(), dtype=np.int64)
        self._groups: Optional[List[Group]] = None
        self._dims: Optional[Tuple[np.ndarray, ...]] = None  # see _dim_arrays
        self._last: Tuple[Any, Any] = (None, None)  # the last expansion's mask and removed count per dim

    @property
    def groups(self) -> List[Group]:
        """Every group holding at least one parameter dim of size > 1, in key order (built on first use)."""
        if self._groups is None:
            with paused_gc():  # tens of thousands of small lists (see fxprune.gcpause)
                self._groups = self._build_groups()
            self._by_dim = {d.id: g for g in self._groups for d in g.dims}
        return self._groups

    @property
    def _group_by_dim(self) -> Dict[int, Group]:
        self.groups
        return self._by_dim

    # -- groups ---------------------------------------------------------------------------------
    def _param_order(self, d: DimNode) -> Tuple[int, int, int]:
        name = d.value[1]
        return (self.ctx.first_use.get(name, 1 << 30), self.ctx.param_rank.get(name, 1 << 30), d.dim)

    def _build_groups(self) -> List[Group]:
        """Vectorised over all indices: classes, emptying/pinned classes, and one member per class."""
        sol, dims = self.sol, self.ir.dims
        labels = sol.labels
        n_lab = int(labels.max()) + 1 if len(labels) else 0
        pinned = np.zeros(n_lab, bool)
        pinned[self._pinned_labels] = True
        starts = np.array([d.base for d in dims if d.size], dtype=np.int64)
        empt = np.zeros(n_lab, bool)
        if len(starts):
            lo, hi = np.minimum.reduceat(labels, starts), np.maximum.reduceat(labels, starts)
            empt[lo[lo == hi]] = True  # a class covering a whole dim would empty it
        removable = ~pinned & ~empt
        grids = sol.grids
        if grids is not None:
            removable &= ~grids.derived  # a grid product loses an index only through its factors
            removable &= ~grids.empties(sol)
        by_group: Dict[int, List[DimNode]] = {}
        for d in dims:
            by_group.setdefault(int(sol.dim_group[d.id]), []).append(d)
        params = sorted((d for d in dims if d.is_param and d.size > 1), key=self._param_order)
        rank = {d.id: i for i, d in enumerate(params)}
        # The first member (in key order) holding each removable class names it in the plan: directly,
        # or through a grid (a head or a head dim names the projection rows it removes).
        owned = np.zeros(n_lab, bool)
        owner = np.full(n_lab, -1, dtype=np.int64)  # the parameter dim naming each owned class
        per_dim: Dict[int, Dict[int, List[int]]] = {}
        anc = grids.ancestors() if grids is not None else None
        for d in params:
            labs = labels[d.base:d.base + d.size]
            if anc is not None and grids.derived[labs].any():
                rows, labs_of = csr_rows(anc, labs)
            else:
                rows, labs_of = np.arange(d.size, dtype=np.int64), labs
            hit = removable[labs_of] & ~owned[labs_of]
            if not hit.any():
                continue
            rows, labs_of = rows[hit], labs_of[hit]
            order = np.lexsort((rows, labs_of))  # each class's indices come out ascending
            rows, labs_of = rows[order], labs_of[order]
            new, first = np.unique(labs_of, return_index=True)
            owned[new] = True
            owner[new] = d.id
            cls = per_dim.setdefault(d.id, {})
            rl, starts = rows.tolist(), first.tolist()
            cls.update(zip(new.tolist(), [rl[a:b] for a, b in zip(starts, starts[1:] + [len(rl)])]))
        coarse = np.zeros(n_lab, bool)
        if grids is not None:
            coarse[grids.coarse(sol)] = True
        groups = []
        for gdims in by_group.values():
            gparams = sorted((d for d in gdims if d.id in rank), key=lambda d: rank[d.id])
            if not gparams:
                continue
            ordered = gparams + [d for d in gdims if d.id not in rank]
            keys: List[Optional[str]] = []
            idxs: List[List[int]] = []
            labs: List[int] = []
            for d in gparams:
                dim_classes = per_dim.get(d.id)
                if dim_classes:
                    key = make_key(d.value[1], d.dim)  # once per dim: it validates
                    keys.extend([key] * len(dim_classes))
                    idxs.extend(dim_classes.values())
                    labs.extend(dim_classes.keys())
            is_head = coarse[np.array(labs, dtype=np.int64)] if labs else np.zeros(0, bool)
            key_dim = gparams[0]
            if is_head.any() and not is_head.all():  # heads beside finer classes: the fine ones are classes
                fine = np.nonzero(~is_head)[0].tolist()
                heads = [(keys[i], idxs[i]) for i in np.nonzero(is_head)[0].tolist()]
                all_classes = [(keys[i], idxs[i]) for i in fine]
                glabels = [labs[i] for i in fine]
                fine_labels = set(glabels)
                classes = [idx for lab, idx in per_dim.get(key_dim.id, {}).items() if lab in fine_labels]
            else:  # no heads, or only heads: they are the classes
                heads = []
                all_classes = list(zip(keys, idxs))
                glabels = labs
                classes = list(per_dim.get(key_dim.id, {}).values())
            pinned_why = None
            if not all_classes:
                key_labels = np.unique(labels[key_dim.base:key_dim.base + key_dim.size]).tolist()
                reasons = [sol.pinned_reason[lab] for lab in key_labels if lab in sol.pinned_reason]
                named = owner[key_labels][owner[key_labels] >= 0]
                if reasons:
                    pinned_why = reasons[0]
                elif len(named):  # e.g. a per-head scale: its indices are heads another group names
                    od = dims[int(named[0])]
                    pinned_why = (f"its indices go only with whole heads (grid slices) named in "
                                  f"{make_key(od.value[1], od.dim)}")
                else:
                    pinned_why = "every class would remove a whole dimension"
            members = [(d.value[1], d.dim) if d.is_param else (d.name, d.dim) for d in ordered]
            grp = Group(make_key(key_dim.value[1], key_dim.dim), key_dim.size, pinned_why, members,
                        classes, all_classes, ordered, np.array(glabels, dtype=np.int64), labels)
            grp.head_classes = heads
            grp.head_labels = np.array([labs[i] for i in np.nonzero(is_head)[0].tolist()] if heads else [],
                                       dtype=np.int64)
            if grids is not None and any(grids.derived[labels[d.base:d.base + d.size]].any() for d in gdims
                                         if d.size):
                grp.ancestors = grids.ancestors()
            groups.append(grp)
        groups.sort(key=lambda g: rank[g.dims[0].id])
        if grids is not None:
            self._span_heads(groups)
        return groups

    def _span_heads(self, groups: List[Group]) -> None:
        """A head spans groups (its q/k rows, its v rows and ``o`` columns): :meth:`Group.heads` of the
        group naming it sees the dims and members of every group it removes indices from."""
        labels, grids = self.sol.labels, self.sol.grids
        heads = {int(lab) for g in groups for lab in g.head_labels}
        if not heads:
            return
        touch: Dict[int, set] = {}
        owner = [(i, d) for i, g in enumerate(groups) for d in g.dims]
        picked = with_derived(grids.derived, labels, [d for _, d in owner])
        segs = [(owner[k][0], labels[owner[k][1].base:owner[k][1].base + owner[k][1].size]) for k in picked]
        if segs:  # the heads each group's dims reach: one csr_rows over every dim holding a derived label
            labs = np.concatenate([s for _, s in segs])
            sizes = np.array([len(s) for _, s in segs], dtype=np.int64)
            row, col = csr_rows(grids.ancestors(), labs)
            which = np.repeat(np.array([i for i, _ in segs], dtype=np.int64), sizes)[row]
            hit = np.isin(col, np.array(sorted(heads), dtype=np.int64))
            pairs = np.unique(col[hit] * len(groups) + which[hit])
            for c, i in zip((pairs // len(groups)).tolist(), (pairs % len(groups)).tolist()):
                touch.setdefault(c, set()).add(i)
        for i, g in enumerate(groups):
            g.head_span = [tuple(sorted(touch.get(int(lab), set()))) for lab in g.head_labels]
            span = sorted(set().union(*(touch.get(int(lab), set()) for lab in g.head_labels)) - {i})
            if span:
                g.head_dims = g.dims + [d for j in span for d in groups[j].dims]
                g.head_members = g.members + [m for j in span for m in groups[j].members]

    def group_of(self, name: str, dim: int) -> Group:
        """The group holding parameter/buffer ``name`` along ``dim``."""
        d = self._param_dim(name, dim)
        g = self._group_by_dim.get(d.id)
        if g is None:
            raise PlanError(f"{make_key(name, dim)} belongs to no group")
        return g

    def _param_dim(self, name: str, dim: int) -> DimNode:
        name = self.source.resolve(name, dim)  # e.g. a full model name to the part holding it
        canon = self.ctx.canonical.get(name)
        key = make_key(name, dim)
        if canon is None:
            close = difflib.get_close_matches(name, list(self.ctx.canonical), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PlanError(f"unknown key {key!r}: the model has no parameter or buffer {name!r}{hint}")
        i = self.ir.index.get((("param", canon), dim))
        if i is None:
            shape = tuple(self.gm.get_parameter(name).shape) if name in dict(self.gm.named_parameters()) \
                else None
            if shape is not None and not 0 <= dim < len(shape):
                raise PlanError(f"key {key!r}: dim {dim} out of range for a parameter of shape {shape}")
            raise PlanError(f"key {key!r}: {name} is not used by the traced graph, so it cannot be pruned")
        return self.ir.dims[i]

    # -- plans ----------------------------------------------------------------------------------
    def expand(self, plan: PrunePlan) -> Expansion:
        """Expand a plan to the smallest valid removal set containing it; raise PlanError if invalid.

        A plan entry on a grid product (rows of a projection split into heads) is closed to whole heads
        and head dims (:mod:`fxprune.grid`), so a plan may remove both at once; expanding an expanded plan
        gives it back unchanged.
        """
        if not isinstance(plan, PrunePlan):
            plan = PrunePlan(plan)
        return self._expand(plan)

    def _dim_arrays(self) -> Tuple[np.ndarray, ...]:
        """Ids, starts and sizes of the non-empty dims, which are parameters, and a pinned-label table."""
        if self._dims is None:
            dims = [d for d in self.ir.dims if d.size]
            labels = self.sol.labels
            pinned = np.zeros(int(labels.max()) + 1 if len(labels) else 0, bool)
            pinned[self._pinned_labels] = True
            self._dims = (np.array([d.id for d in dims], dtype=np.int64),
                          np.array([d.base for d in dims], dtype=np.int64),
                          np.array([d.size for d in dims], dtype=np.int64),
                          np.array([d.is_param for d in dims], dtype=bool), pinned)
        return self._dims

    def _expand(self, plan: PrunePlan) -> Expansion:
        labels = self.sol.labels
        ids, starts, sizes, is_param, pinned_lut = self._dim_arrays()
        chosen: List[np.ndarray] = []
        for key in plan:
            name, dim = parse_key(key)
            d = self._param_dim(name, dim)
            idx = np.asarray(plan[key], dtype=np.int64)
            bad = idx[idx >= d.size]
            if len(bad):
                raise PlanError(f"plan entry {key!r}: indices {bad[:5].tolist()} out of range for size {d.size}")
            labs = np.unique(labels[d.base + idx])
            pinned = labs[pinned_lut[labs]]
            if len(pinned):
                g = self._group_by_dim.get(d.id)
                where = np.nonzero(np.isin(labels[d.base:d.base + d.size], pinned))[0][:5].tolist()
                raise PlanError(f"plan entry {key!r}: channels {where} of group "
                                f"{g.key if g else key!r} are pinned: {self.sol.pinned_reason[int(pinned[0])]}")
            chosen.append(labs)
        removed = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        removed = self._close(removed)
        mask, counts = self.checked_mask(removed)
        out: Dict[str, List[int]] = {}
        for k in np.nonzero((counts > 0) & is_param)[0].tolist():
            d = self.ir.dims[int(ids[k])]
            out[make_key(d.value[1], d.dim)] = np.nonzero(mask[d.base:d.base + d.size])[0].tolist()
        return Expansion(removed, mask, out)

    def _close(self, labels: np.ndarray) -> np.ndarray:
        """Labels of grid products replaced by the factor classes that remove them (sub-grids)."""
        grids = self.sol.grids
        if grids is None or not len(labels) or not grids.derived[labels].any():
            return labels
        pinned = self._dim_arrays()[4]
        return grids.close(labels, pinned, lambda did: self.ir.dims[did].name)

    def checked_mask(self, removed_labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The index mask of removing ``removed_labels`` (classes, repeats allowed) and the removed count
        of every non-empty dim; PlanError when a dim would lose every index. Later :meth:`removed` /
        :meth:`removed_count` calls with this mask read the counts instead of scanning it."""
        removed_labels = self._close(np.asarray(removed_labels, dtype=np.int64))
        ids, starts, sizes, _, _ = self._dim_arrays()
        mask = self.sol.removed_mask(removed_labels)
        counts = np.add.reduceat(mask, starts, dtype=np.int64) if len(starts) else np.zeros(0, np.int64)
        full = np.nonzero(counts == sizes)[0]
        if len(full):
            d = self.ir.dims[int(ids[full[0]])]
            raise PlanError(f"plan removes all {d.size} channels of {d.name} dim {d.dim}; "
                            f"keep at least one (group {self._group_key(d)})")
        per_dim = np.zeros(len(self.ir.dims), dtype=np.int64)
        per_dim[ids] = counts
        self._last = (mask, per_dim)
        return mask, counts

    def _group_key(self, d: DimNode) -> str:
        g = self._group_by_dim.get(d.id)
        return g.key if g else "?"

    def removed(self, mask: np.ndarray, value: Any, dim: int) -> np.ndarray:
        """Local indices of ``value`` (a value key) along ``dim`` that ``mask`` removes."""
        i = self.ir.index.get((value, dim))
        if i is None:
            return _NONE
        last_mask, counts = self._last
        if mask is last_mask and not counts[i]:  # most dims lose nothing: no slice to scan
            return _NONE
        d = self.ir.dims[i]
        return np.nonzero(mask[d.base:d.base + d.size])[0]

    def removed_count(self, mask: np.ndarray, value: Any, dim: int) -> int:
        """How many indices of ``value`` along ``dim`` ``mask`` removes (``len(self.removed(...))``)."""
        i = self.ir.index.get((value, dim))
        if i is None:
            return 0
        last_mask, counts = self._last
        if mask is last_mask:
            return int(counts[i])
        d = self.ir.dims[i]
        return int(np.count_nonzero(mask[d.base:d.base + d.size]))

    # -- what the frontend captured, and the model it maps to (``source``) ------------------------
    @property
    def parts(self) -> List[Any]:
        """The traced submodules (:class:`~fxprune.frontend.partial.Part`) of a model captured in parts;
        ``[]`` when one graph holds the whole model."""
        return self.source.parts

    @property
    def untraced(self) -> List[Tuple[str, str]]:
        """``(module path, reason)`` of every module whose Python forward is left as it is."""
        return self.source.untraced

    @property
    def recorded(self) -> List[str]:
        """Module paths recorded below Python from one forward (:mod:`fxprune.frontend.autograd`)."""
        return self.source.recorded

    @property
    def stitched(self) -> int:
        """How many part interfaces were coupled across the Python between them."""
        return self.source.stitched

    @property
    def stitched_paths(self) -> set:
        """Paths of the parts with a stitched interface."""
        return self.source.stitched_paths

    @property
    def counts_from_ir(self) -> bool:
        """Whether a budget search may read MACs and parameters of a plan off this analysis
        (:mod:`fxprune.ircount`); not for parts, whose IR does not count the Python between them."""
        return self.source.counts_from_ir

    def apply(self, plan: Any, model: torch.nn.Module, example_inputs: Any = None, inplace: bool = False,
              output: str = "auto") -> torch.nn.Module:
        """The pruned model: a GraphModule (``output="graph"``, or ``"auto"`` after fx), or the user's own
        class with its tensors sliced (``"module"``, or ``"auto"`` after export, parts and autograd); see
        :func:`fxprune.prune`."""
        return self.source.apply(self, plan, model, example_inputs, inplace, output)

    def verify(self, small: torch.nn.Module, plan: Any, args: Any, atol: float, rtol: float,
               comps: Any = None) -> Any:
        """``small`` against the original run with the plan's slices zeroed (:func:`fxprune.verify`);
        ``comps`` (:func:`fxprune.compensate.plan_compensation`): those layers read their removed inputs as
        the means instead."""
        return self.source.verify(self, small, plan, args, atol, rtol, comps)

    def to_networkx(self, group: Optional[Any] = None):
        """The coupling graph over dim nodes (``networkx.MultiGraph``), whole or for one group (a
        :class:`Group` or its key): nodes are dims (``name``, ``dim``, ``size``, ``param``; ``pinned`` holds
        the reason when the group is pinned), edges carry the index maps (``src``/``dst`` local indices).

        Example:
            >>> import torch, fxprune
            >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
            >>> graph = fxprune.analyze(m, torch.randn(1, 3, 8, 8))
            >>> g = graph.to_networkx("0.weight:0")
            >>> sorted(d["name"] for _, d in g.nodes(data=True) if d["param"])
            ['0.bias', '0.weight', '1.bias', '1.running_mean', '1.running_var', '1.weight', '2.weight']
        """
        if isinstance(group, str):
            group = next((g for g in self.groups if g.key == group), None) or self.group_of(*parse_key(group))
        dims = None if group is None else [d.id for d in group.dims]
        g = self.ir.to_networkx(dims)
        pinned = {d.id: grp.pinned for grp in self.groups for d in grp.dims if grp.pinned}
        for n in g.nodes:
            g.nodes[n]["pinned"] = pinned.get(n)
        return g

    def __repr__(self) -> str:
        free = sum(1 for g in self.groups if g.pinned is None)
        return f"ChannelGraph({len(self.groups)} groups, {free} prunable{self.source.describe()})"


def warn_if_nothing_prunable(graph: ChannelGraph, model: torch.nn.Module) -> None:
    """One warning when no group can lose a channel: which frontend ran and what pins the most weights."""
    groups = graph.groups
    if not groups or any(g.pinned is None for g in groups):
        return
    warned = _warned(model)  # once per model (and the copies traced or pruned from it)
    if "nothing prunable" in warned:
        return
    warned.add("nothing prunable")
    params = dict(graph.gm.named_parameters(remove_duplicate=False))
    weight: Dict[str, int] = {}
    for g in groups:
        n = sum(params[name].numel() for name, _ in g.members if name in params)
        weight[g.pinned] = weight.get(g.pinned, 0) + n
    total = sum(weight.values()) or 1
    top = sorted(weight.items(), key=lambda kv: -kv[1])[:3]
    pins = "; ".join(f"{why} ({100 * n / total:.0f} % of the grouped weights)" for why, n in top)
    warnings.warn(f"fxprune: nothing in {type(model).__name__} can be pruned (frontend {graph.frontend!r}, "
                  f"{len(groups)} groups, all pinned). Largest pins: {pins}", stacklevel=user_stacklevel())


@no_gc
def analyze(model: torch.nn.Module, example_inputs: Any, strict: bool = False,
            frontend: str = "auto") -> ChannelGraph:
    """Trace ``model`` (unless it is a GraphModule already) and find its coupled channel groups.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = fxprune.analyze(m, torch.randn(1, 4))
        >>> [g.key for g in graph.groups if not g.pinned], graph.frontend
        (['0.weight:0'], 'fx')

    An attention projection split into ``(heads, head_dim)`` has head-dim classes
    (``group.all_classes``) and whole-head classes (``group.head_classes``) in the same analysis.

    ``frontend`` picks how the model is captured (:func:`fxprune.trace`): ``"fx"``, ``"export"``
    (``torch.export`` non-strict: Python branches, ``**kwargs``, Hugging Face models; pass keyword inputs
    as :class:`fxprune.Inputs`), ``"parts"`` (the maximal traceable submodules, see
    :mod:`fxprune.frontend.partial`, with one :class:`~fxprune.errors.FallbackWarning`), ``"autograd"`` (one
    real forward recorded at the ATen level, :mod:`fxprune.frontend.autograd`), or ``"auto"``: fx, then
    export, then parts. Every frontend gives a :class:`ChannelGraph`; ``graph.frontend`` says which one ran,
    and ``graph.parts`` / ``graph.untraced`` what the parts frontend traced and left as Python. This runs
    :func:`fxprune.passes.analysis_passes` (Trace, Lower, Solve); the result is cached for ``model`` and these
    inputs (:mod:`fxprune.cache`).
    """
    from .passes import analysis_passes
    from .passes.manager import run

    gm = run(analysis_passes(example_inputs, strict=strict, frontend=frontend), model)
    rec = record_of(gm)
    graph = rec.analysis(gm)
    rec.drop_state()  # the analysis (cached for ``model``) keeps no pass state
    return graph
