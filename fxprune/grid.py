"""Grid constraints: a dim that is the product of factor dims (``D -> heads x head_dim``, GQA
``heads -> kv_heads x group``, a flatten ``C*H*W``, a channel shuffle).

An index ``(i_1, ..., i_k)`` of the product is removed exactly when some factor loses ``i_m``: the
product's classes are *derived*, never chosen on their own, and what a plan keeps of the product is a
sub-grid. Removing whole heads, head dims, or both in one plan is the same mechanism. A plan entry on a
product (rows of ``q_proj``) is closed to a cover by factor indices: every whole slice it lists (a whole
head, a head dim in every head), then the rest by the innermost factor that can lose it (two rows of one
head: those two head dims in every head, as Torch-Pruning reads them).

Example:
    >>> import torch, fxprune
    >>> class Heads(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.q, self.o = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    ...     def forward(self, x):                  # 2 heads of 4
    ...         h = self.q(x).view(3, 2, 4).relu()
    ...         return self.o(h.reshape(3, 8))
    >>> g = fxprune.analyze(Heads(), torch.randn(3, 8)).group_of("q.weight", 0)
    >>> len(g.all_classes), len(g.head_classes)  # 4 head dims, 2 whole heads
    (4, 2)
    >>> small = fxprune.prune(Heads(), {"q.weight:0": [0, 1, 2, 3, 5]}, torch.randn(3, 8))
    >>> small.q.out_features                     # head 0, and dim 1 of every head: 1 head x 3 dims
    3
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from .errors import InternalError, PlanError

__all__ = ["Grids", "csr_rows", "with_derived"]


def csr_rows(m: "sp.csr_matrix", rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(r, c)``: the stored entries of ``m[rows]`` in CSR order (``m[rows].tocoo()``'s ``row`` and
    ``col``), without scipy's fancy indexing, whose checks cost tens of microseconds a call (once per
    dim of a grid model: a fifth of regnet_x_400mf's analysis).

    Example:
        >>> m = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], np.float32))
        >>> [a.tolist() for a in csr_rows(m, np.array([2, 0]))]
        [[0, 0, 1, 1], [0, 1, 0, 2]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    start, end = m.indptr[rows].astype(np.int64), m.indptr[rows + 1].astype(np.int64)
    n = end - start
    r = np.repeat(np.arange(len(rows), dtype=np.int64), n)
    at = np.arange(int(n.sum()), dtype=np.int64) + np.repeat(start - (np.cumsum(n) - n), n)
    return r, m.indices[at].astype(np.int64)


_VECTOR_MAX = 1 << 22  # indices with_derived checks in one pass; above, slice by slice (a 7B index space)


def with_derived(derived: np.ndarray, labels: np.ndarray, dims: List) -> List[int]:
    """Positions in ``dims`` (DimNodes) of the non-empty ones holding a label marked in ``derived``: one
    vectorised pass while they hold at most ``_VECTOR_MAX`` indices (a check per dim cost a fifth of
    regnet_y_400mf's analysis), slice by slice above (a mask over a 7B model's indices costs memory).

    Example:
        >>> from fxprune.ir import DimNode
        >>> dims = [DimNode(0, ("value", "a"), 0, 2, 0), DimNode(1, ("value", "b"), 0, 0, 2),
        ...         DimNode(2, ("value", "c"), 0, 3, 2)]
        >>> with_derived(np.array([False, True, False]), np.array([0, 0, 2, 1, 2]), dims)
        [2]
    """
    nz = [k for k, d in enumerate(dims) if d.size]
    if not nz:
        return []
    if sum(dims[k].size for k in nz) > _VECTOR_MAX:
        return [k for k in nz if derived[labels[dims[k].base:dims[k].base + dims[k].size]].any()]
    segs = [labels[dims[k].base:dims[k].base + dims[k].size] for k in nz]
    sizes = np.array([len(x) for x in segs], dtype=np.int64)
    has = np.logical_or.reduceat(derived[np.concatenate(segs)], np.cumsum(sizes) - sizes)
    return [nz[k] for k in np.flatnonzero(has).tolist()]


def _per_index(a: np.ndarray, m: int, reduce: str) -> np.ndarray:
    """``a.any``/``a.all`` over every axis but ``m``: one value per index of factor ``m``."""
    axes = tuple(x for x in range(a.ndim) if x != m)
    return getattr(a, reduce)(axis=axes) if axes else a


def _on_axis(v: np.ndarray, m: int, k: int) -> np.ndarray:
    """Factor ``m``'s vector shaped to broadcast along axis ``m`` of a ``k``-factor grid."""
    shape = [1] * k
    shape[m] = len(v)
    return v.reshape(shape)


def _slice(k: int, m: int, i: int) -> tuple:
    """The index ``[..., i, ...]`` of a grid's slice at index ``i`` of factor ``m`` (of ``k``)."""
    sl = [slice(None)] * k
    sl[m] = i
    return tuple(sl)


@dataclass
class _Grid:
    product: int                    # dim id
    elems: np.ndarray               # labels of the product's indices, shaped like the factors
    factors: List[np.ndarray]       # labels of each factor's indices (outer first)
    where: str
    index: int                      # position in ``ChannelIR.grids``
    fids: Tuple[int, ...] = ()      # the factors' dim ids

    def parents_removed(self, table: np.ndarray) -> np.ndarray:
        """Which product indices some factor's removal takes away (shaped like ``elems``)."""
        out = np.zeros(self.elems.shape, bool)
        for m, f in enumerate(self.factors):
            out |= _on_axis(table[f], m, len(self.factors))
        return out


class Grids:
    """Every grid constraint of a solved IR, in label space (see the module docstring)."""

    def __init__(self, grids: List[_Grid], n_labels: int):
        self.grids = grids
        self.derived = np.zeros(n_labels, bool)
        for g in grids:
            self.derived[g.elems.ravel()] = True
        self._anc: Optional[sp.csr_matrix] = None
        self._empties: Optional[np.ndarray] = None

    @classmethod
    def build(cls, sol, grids) -> "Grids":
        """Label arrays of every grid, then pins moved up: a factor index whose slice holds a pinned
        product index is pinned with that index's reason (removing it would remove the pinned one)."""
        ir, labels = sol.ir, sol.labels
        out = []
        for k, (pid, fids, where) in enumerate(ir.grids):
            if k not in grids:
                continue
            p = ir.dims[pid]
            fs = [labels[ir.dims[f].base:ir.dims[f].base + ir.dims[f].size] for f in fids]
            elems = labels[p.base:p.base + p.size].reshape([len(f) for f in fs])
            out.append(_Grid(pid, elems, fs, where, k, tuple(fids)))
        n_lab = int(labels.max()) + 1 if len(labels) else 0
        self = cls(out, n_lab)
        self._lift_pins(sol.pinned_reason, n_lab)
        return self

    def _lift_pins(self, reasons: Dict[int, str], n_lab: int) -> None:
        pinned = np.zeros(n_lab, bool)
        pinned[list(reasons)] = True
        for _ in range(len(self.grids) + 1):  # a fixpoint: nested grids pass pins up one level per round
            changed = False
            for g in self.grids:
                hit = pinned[g.elems]
                if not hit.any():
                    continue
                k = len(g.factors)
                for m, f in enumerate(g.factors):
                    new = _per_index(hit, m, "any") & ~pinned[f]
                    if not new.any():
                        continue
                    for i in np.nonzero(new)[0].tolist():
                        sl = _slice(k, m, i)
                        lab = int(g.elems[sl][hit[sl]].ravel()[0])
                        reasons[int(f[i])] = reasons[lab]
                        pinned[f[i]] = True
                    changed = True
            if not changed:
                break

    def empties(self, sol) -> np.ndarray:
        """Labels whose removal takes every index of some grid product dim (one branch of a channel
        shuffle's ``cat``: a whole group factor)."""
        if self._empties is not None:
            return self._empties
        labels, anc = sol.labels, self.ancestors()
        out = np.zeros(anc.shape[1], bool)
        # one csr_rows over every dim holding a derived label
        dims = sol.ir.dims
        segs = [labels[dims[k].base:dims[k].base + dims[k].size]
                for k in with_derived(self.derived, labels, dims)]
        if segs:
            sizes = np.array([len(s) for s in segs], dtype=np.int64)
            row, col = csr_rows(anc, np.concatenate(segs))
            key = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)[row] * anc.shape[1] + col
            u, c = np.unique(key, return_counts=True)
            full = c >= np.asarray(sizes, np.int64)[u // anc.shape[1]]
            out[u[full] % anc.shape[1]] = True
        self._empties = out
        return out

    def degenerate(self, sol) -> List[Tuple[int, Optional[int]]]:
        """Grids with at most one factor that can lose an index, as ``(position in ChannelIR.grids,
        that factor or None)``: such a grid is a plain coupling of its product with that factor (a
        flatten after a conv, a channel shuffle whose outer factor is a whole branch), which the class
        solver closes exactly."""
        live, _ = self._roles(sol)
        return [(g.index, lv[0] if lv else None) for g, lv in zip(self.grids, live) if len(lv) <= 1]

    def duplicates(self) -> List[Tuple[int, int]]:
        """Factor dims ``(a, b)`` of two grids over the same product classes with the same factor sizes:
        they are the same factor (the kv heads that ``repeat_kv`` expands for k and for v)."""
        seen: Dict[Tuple[Tuple[int, ...], bytes], _Grid] = {}
        out = []
        for g in self.grids:
            key = (g.elems.shape, g.elems.tobytes())
            first = seen.setdefault(key, g)
            if first is not g:
                out.extend((a, b) for a, b in zip(first.fids, g.fids) if a != b
                           and not np.array_equal(first.factors[first.fids.index(a)],
                                                  g.factors[g.fids.index(b)]))
        return out

    def derive(self, table: np.ndarray) -> np.ndarray:
        """Mark (in place) every product label that the removed labels of ``table`` take away."""
        for _ in range(len(self.grids) + 1):
            changed = False
            for g in self.grids:
                labs = g.elems[g.parents_removed(table)]
                if len(labs) and not table[labs].all():
                    table[labs] = True
                    changed = True
            if not changed:
                break
        return table

    def close(self, want: np.ndarray, pinned: np.ndarray, describe) -> np.ndarray:
        """The labels to remove (never a derived one) so that every label in ``want`` is removed and every
        grid keeps a sub-grid. ``describe(dim id)`` names a product for messages; PlanError when a wanted
        product index has every factor index pinned."""
        n = len(self.derived)
        req = np.zeros(n, bool)
        req[want] = True
        chosen = req & ~self.derived
        for _ in range(4 * len(self.grids) + 4):
            table = self.derive(chosen.copy())
            changed = False
            for g in self.grids:
                wanted = (req | table)[g.elems]
                have = g.parents_removed(table)
                todo = wanted & ~have
                if not todo.any():
                    continue
                for m, i in self._cover(g, wanted | have, todo, pinned, describe):
                    lab = int(g.factors[m][i])
                    req[lab] = True
                    if not self.derived[lab]:
                        chosen[lab] = True
                changed = True
            if not changed:
                return np.nonzero(chosen)[0]
        raise InternalError("grid constraints did not settle")

    @staticmethod
    def _cover(g: _Grid, ok: np.ndarray, todo: np.ndarray, pinned: np.ndarray,
               describe) -> List[Tuple[int, int]]:
        """Factor indices covering ``todo``: every whole slice of ``ok`` first, then the rest by the
        innermost factor whose index is not pinned."""
        k = len(g.factors)
        free = [~pinned[f] for f in g.factors]
        picks: List[Tuple[int, int]] = []
        todo = todo.copy()
        for m in range(k):
            whole = _per_index(ok, m, "all") & _per_index(todo, m, "any")
            picks.extend((m, i) for i in np.nonzero(whole & free[m])[0].tolist())
        for m, i in picks:
            todo[_slice(k, m, i)] = False
        for m in reversed(range(k)):  # the rest by the innermost factor that can lose it (head dims)
            if not todo.any():
                break
            for i in np.nonzero(_per_index(todo, m, "any") & free[m])[0].tolist():
                picks.append((m, i))
                todo[_slice(k, m, i)] = False
        if todo.any():
            at = np.argwhere(todo)[0].tolist()
            raise PlanError(f"index {at} of the grid {describe(g.product)} (split by {g.where}) "
                            f"cannot be removed: each of its factor indices is pinned")
        return picks

    def ancestors(self) -> sp.csr_matrix:
        """``A[l, b]`` is True when removing label ``b`` (never derived) removes label ``l``; the identity
        on labels that are not derived."""
        if self._anc is None:
            n = len(self.derived)
            base = np.nonzero(~self.derived)[0]
            ident = sp.csr_matrix((np.ones(len(base), np.float32), (base, base)), shape=(n, n))
            rows, cols = [], []  # every product label with the label of each of its factor indices
            for g in self.grids:
                for m, f in enumerate(g.factors):
                    rows.append(g.elems.ravel())
                    cols.append(np.broadcast_to(_on_axis(f, m, len(g.factors)), g.elems.shape).ravel())
            r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
            pick = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, n))
            pick.sum_duplicates()
            a = ident
            for _ in range(len(self.grids) + 1):  # one more level of nesting per round
                acc = ((ident + pick @ a) > 0).astype(np.float32).tocsr()
                done = acc.nnz == a.nnz and (acc != a).nnz == 0
                a = acc
                if done:
                    break
            self._anc = a
        return self._anc

    def _roles(self, sol) -> Tuple[List[List[int]], np.ndarray]:
        """Per grid, the factors that can lose an index (``live``); and the labels of every grid's
        innermost live factor (head dims, positions in a block: the ordinary classes)."""
        pinned = np.zeros(len(self.derived), bool)
        pinned[list(sol.pinned_reason)] = True
        dead = pinned | self.empties(sol)
        live = [[m for m, f in enumerate(g.factors) if len(f) > 1 and not dead[f].all()] for g in self.grids]
        inner = np.zeros(len(self.derived), bool)
        for g, lv in zip(self.grids, live):
            if lv:
                inner[g.factors[lv[-1]]] = True
        return live, inner

    def links(self, sol) -> List[Tuple[int, int]]:
        """``(product, factor)`` dim pairs that join groups: the innermost live factor, and any factor
        that is the innermost live one of another grid (a channel shuffle's two reshapes). A factor that
        only ever holds heads does not join the groups it spans."""
        live, inner = self._roles(sol)
        out = []
        for g, lv in zip(self.grids, live):
            for m, f in enumerate(g.factors):
                if lv and (m == lv[-1] or inner[f].any()):
                    out.append((g.product, g.fids[m]))
        return out

    def coarse(self, sol) -> np.ndarray:
        """Labels (never derived) that remove whole heads: indices of a live factor outside the innermost
        one that is never the innermost of a grid, and every label they derive from."""
        live, inner = self._roles(sol)
        mark = np.zeros(len(self.derived), bool)
        for g, lv in zip(self.grids, live):
            for m in lv[:-1]:
                if not inner[g.factors[m]].any():
                    mark[g.factors[m]] = True
        rows = np.nonzero(mark)[0]
        if not len(rows):
            return rows
        return np.unique(csr_rows(self.ancestors(), rows)[1])
