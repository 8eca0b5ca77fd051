"""The channel IR: dim nodes, index couplings, and the coupled groups they form.

A *dim node* is one dimension of one value: an FX node's output (or one element of a tuple output), or a
parameter/buffer. Every index of every dim node gets a global id. A coupling says "index i of dim A goes
with index j of dim B" (identity, offset, block, stride and permutation maps are all arrays of such pairs,
built in :mod:`fxprune.index_map`). Connected components over indices are the *classes* (what must be
removed together); components over dim nodes are the *groups*. Both are one ``connected_components`` call:
a finite computation that terminates whatever cycles the graph has.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    >>> g = fxprune.analyze(m, torch.randn(1, 3, 8, 8)).group_of("0.weight", 0)
    >>> g.key, g.size, len(g.classes)
    ('0.weight:0', 8, 8)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

if TYPE_CHECKING:
    from .grid import Grids

__all__ = ["DimNode", "ChannelIR", "Solution"]


def _components(n: int, links: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Connected components of ``n`` dim nodes under ``links`` (one label per node)."""
    pairs = np.array(list(links), dtype=np.int64).reshape(-1, 2)
    return connected_components(_adjacency(n, pairs[:, 0], pairs[:, 1]), directed=False)[1]


def _adjacency(n: int, a: np.ndarray, b: np.ndarray) -> sp.csr_matrix:
    """The ``n x n`` CSR matrix with an entry at every ``(a[k], b[k])``, built in one linear pass: rows are
    left unsorted and repeated entries unsummed (``coo_matrix.tocsr`` does both), which
    ``connected_components`` needs neither of."""
    nnz = len(a)
    dt = np.int32 if max(n, nnz) < _I32 else np.int64
    try:
        from scipy.sparse import _sparsetools
        indptr, indices, data = np.empty(n + 1, dt), np.empty(nnz, dt), np.empty(nnz)
        _sparsetools.coo_tocsr(n, n, nnz, a.astype(dt, copy=False), b.astype(dt, copy=False), np.ones(nnz),
                               indptr, indices, data)
        return sp.csr_matrix((data, indices, indptr), shape=(n, n))
    except (ImportError, AttributeError, TypeError, ValueError):  # another scipy: its public path
        return sp.coo_matrix((np.ones(nnz), (a, b)), shape=(n, n)).tocsr()

_I32 = 2 ** 31 - 1  # global index ids below this are stored as int32

ValueKey = Tuple[Hashable, ...]  # ("param", qualname) or ("value", node_name, elem_path)


@dataclass
class DimNode:
    """One dimension of one value; ``base`` is the global id of its index 0."""

    id: int
    value: ValueKey
    dim: int
    size: int
    base: int

    @property
    def is_param(self) -> bool:
        return self.value[0] == "param"

    @property
    def name(self) -> str:
        return self.value[1] if self.is_param else f"{self.value[1]}{''.join(f'[{i}]' for i in self.value[2])}"


@dataclass
class ChannelIR:
    """Mutable builder: dim nodes, coupling pairs and pins, then :meth:`solve`."""

    dims: List[DimNode] = field(default_factory=list)
    index: Dict[Tuple[ValueKey, int], int] = field(default_factory=dict)
    free: List[bool] = field(default_factory=list)
    total: int = 0
    _a: List[np.ndarray] = field(default_factory=list)
    _b: List[np.ndarray] = field(default_factory=list)
    pins: List[Tuple[int, Optional[np.ndarray], str]] = field(default_factory=list)
    _pairs: List[Tuple[int, int]] = field(default_factory=list)
    grids: List[Tuple[int, Tuple[int, ...], str]] = field(default_factory=list)
    # coupling k is an identity of two whole dims: True when its caller said so, else checked on first solve
    _ident: List[Optional[bool]] = field(default_factory=list)

    def dim(self, value: ValueKey, d: int, size: int) -> DimNode:
        """The dim node of ``value`` along ``d``, created on first use."""
        i = self.index.get((value, d))
        if i is not None:
            return self.dims[i]
        node = DimNode(len(self.dims), value, d, int(size), self.total)
        self.dims.append(node)
        self.free.append(value[0] == "param")
        self.index[(value, d)] = node.id
        self.total += int(size)
        return node

    def couple(self, a: DimNode, b: DimNode, ia: np.ndarray, ib: np.ndarray, identity: bool = False) -> None:
        """Index ``ia[k]`` of ``a`` goes with index ``ib[k]`` of ``b``, for every k (``identity``: the caller
        knows both are ``arange`` of one size, which spares the solve checking it)."""
        if not len(ia):
            pass
        elif identity and a.size == b.size == len(ia):  # no arrays: pair_arrays makes them when asked
            self._a.append(None)
            self._b.append(None)
            self._pairs.append((a.id, b.id))
            self._ident.append(True)
        else:  # int32 ids while they fit: a 7B model has millions of coupled indices
            dt = np.int32 if max(a.base + a.size, b.base + b.size) < _I32 else np.int64
            self._a.append(ia.astype(dt) + dt(a.base))
            self._b.append(ib.astype(dt) + dt(b.base))
            self._pairs.append((a.id, b.id))
            self._ident.append(None)
        f = self.free[a.id] or self.free[b.id]
        self.free[a.id] = self.free[b.id] = f

    def pair_arrays(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Global ids ``(a, b)`` of coupling ``k``: index ``a[i]`` goes with ``b[i]`` (an identity its caller
        flagged is stored without arrays; these are made here)."""
        a, b = self._a[k], self._b[k]
        if a is None:
            da, db = (self.dims[x] for x in self._pairs[k])
            return np.arange(da.base, da.base + da.size), np.arange(db.base, db.base + db.size)
        return a, b

    def grid(self, product: DimNode, factors: Sequence[DimNode], where: str = "") -> None:
        """``product`` is the row-major product of ``factors`` (outer first): its index
        ``(i_1, ..., i_k)`` is removed exactly when some factor loses ``i_m``, so what it keeps is always a
        sub-grid (kept heads x kept head dims). ``where`` names the op, for messages."""
        n = int(np.prod([f.size for f in factors], dtype=np.int64)) if factors else 0
        if n != product.size:
            raise ValueError(f"grid of sizes {[f.size for f in factors]} does not factor {product.size}")
        self.grids.append((product.id, tuple(f.id for f in factors), where))
        f = self.free[product.id] or any(self.free[x.id] for x in factors)
        for x in (product, *factors):
            self.free[x.id] = f

    def ungrid(self, which: Sequence[Tuple[int, Optional[int]]]) -> None:
        """Replace grids ``(position, factor)`` by a coupling of the product with that factor (when None:
        the innermost one that reaches a parameter, else the innermost); the other factors are pinned, as
        they can lose nothing."""
        from .index_map import factor

        drop = dict(which)
        keep = []
        for k, (pid, fids, where) in enumerate(self.grids):
            if k not in drop:
                keep.append((pid, fids, where))
                continue
            m = drop[k]
            if m is None:
                big = [j for j, f in enumerate(fids) if self.dims[f].size > 1] or [len(fids) - 1]
                m = max(big, key=lambda j: (self.free[fids[j]], j))
            p, f = self.dims[pid], self.dims[fids[m]]
            inner = int(np.prod([self.dims[x].size for x in fids[m + 1:]], dtype=np.int64))
            ia, ib = factor(p.size, inner, f.size)
            self.couple(p, f, ia, ib)
            for x in fids:
                if x != fids[m] and self.dims[x].size > 1:
                    self.pin(self.dims[x], f"dim {self.dims[x].dim} produced by reshape ({where})")
        self.grids = keep

    def pin(self, d: DimNode, reason: str, idx: Optional[np.ndarray] = None) -> None:
        """No index of ``d`` (or only ``idx``) may be removed."""
        self.pins.append((d.id, idx, reason))

    def to_networkx(self, dims: Optional[Sequence[int]] = None):
        """The dim graph as a ``networkx.MultiGraph``: nodes are dim ids (attributes ``name``, ``dim``,
        ``size``, ``param``), one edge per coupling with its index map as ``src``/``dst`` arrays (local
        indices of the edge's first and second node), and one edge from a grid product to each factor
        (``grid``: the op, ``factor``: its position, outer first). ``dims`` restricts it to those dim ids.
        """
        import networkx as nx

        keep = None if dims is None else set(int(d) for d in dims)
        g = nx.MultiGraph()
        for d in self.dims:
            if keep is None or d.id in keep:
                g.add_node(d.id, name=d.name, dim=d.dim, size=d.size, param=d.is_param)
        for k, (i, j) in enumerate(self._pairs):
            if keep is None or (i in keep and j in keep):
                a, b = self.pair_arrays(k)
                g.add_edge(i, j, src=a - self.dims[i].base, dst=b - self.dims[j].base)
        for p, fs, where in self.grids:  # product -> factor m: index i of the product is (i_1, ..., i_k)
            for m, f in enumerate(fs):
                if keep is None or (p in keep and f in keep):
                    g.add_edge(p, f, grid=where, factor=m, factors=len(fs))
        return g

    def solve(self) -> "Solution":
        """Classes (index components) and groups (dim components).

        Groups are components over dim nodes (small); a grid joins groups through its innermost factor
        only (see ``Grids.links``: the heads it adds do not merge the q/k and v groups). Index-level
        classes are computed only inside components, over every link, that hold a parameter: elsewhere
        nothing can ever be removed (token and spatial dims of a video transformer are millions of
        indices), so each such dim gets one label, pinned when its group is.
        """
        n, nd = self.total, len(self.dims)
        sizes = np.array([d.size for d in self.dims], dtype=np.int64)
        owner = np.repeat(np.arange(nd, dtype=np.int32), sizes) if nd else np.zeros(0, np.int32)
        dim_group = _components(nd, list(self._pairs) + [(p, f) for p, fs, _ in self.grids for f in fs])
        with_param = np.zeros(nd, bool)
        with_param[[dim_group[d.id] for d in self.dims if d.is_param]] = True
        keep_dim = with_param[dim_group]
        keep = keep_dim[owner]
        labels = np.empty(n, dtype=np.int64)
        n_cls = self._kept_classes(keep_dim, labels)
        rank = np.cumsum(~keep_dim) - 1 + n_cls  # one label per dim outside parameter groups
        labels[~keep] = rank[owner[~keep]]
        pinned_reason = self._pin_reasons(labels, keep_dim)
        group_reason: Dict[int, str] = {}
        for did, _, reason in self.pins:
            if not keep_dim[did]:
                group_reason.setdefault(int(dim_group[did]), reason)
        if group_reason:
            for did in np.nonzero(~keep_dim)[0].tolist():
                why = group_reason.get(int(dim_group[did]))
                if why is not None:
                    pinned_reason[int(rank[did])] = why
        sol = Solution(self, labels, owner, dim_group, pinned_reason)
        if self.grids:
            from .grid import Grids
            sol.grids = Grids.build(sol, {k for k, g in enumerate(self.grids) if keep_dim[g[0]]})
            # the groups users see: a grid joins groups through its innermost factor only, not its heads
            sol.dim_group = _components(nd, list(self._pairs) + sol.grids.links(sol))
        return sol

    def _kept_classes(self, keep_dim: np.ndarray, labels: np.ndarray) -> int:
        """Index components of the kept dims (``keep_dim``) written into ``labels``, numbered in the order of
        their first index (what ``connected_components`` over every kept index gives); returns their count.

        Nearly every coupling is an identity between two whole dims of one size (element-wise ops,
        residual adds: 99.7 % of a 7B decoder's coupled indices), so dims joined by identities share one
        block of compact ids, laid out in the order of each set's first dim; only the other couplings go
        to ``connected_components``. A component's first compact id belongs to its first index, so the
        numbering is unchanged.
        """
        nd = len(self.dims)
        base = np.array([d.base for d in self.dims], dtype=np.int64)
        size = np.array([d.size for d in self.dims], dtype=np.int64)
        for k in [k for k, v in enumerate(self._ident) if v is None]:  # each is checked once
            (i, j), a, b = self._pairs[k], self._a[k], self._b[k]
            self._ident[k] = (bool(
                size[i] == size[j] == len(a) and a[0] == base[i] and b[0] == base[j]
                and np.array_equal(a, np.arange(base[i], base[i] + size[i], dtype=a.dtype))
                and np.array_equal(b, np.arange(base[j], base[j] + size[j], dtype=b.dtype))))
        same, other = [], []
        for k, (i, j) in enumerate(self._pairs):
            if keep_dim[i]:  # both ends lie in one group: outside parameter groups nothing is removed
                (same.append((i, j)) if self._ident[k] else other.append(k))
        comp = _components(nd, same)
        first = np.full(comp.max() + 1 if nd else 0, nd, dtype=np.int64)
        np.minimum.at(first, comp, np.arange(nd))
        rep = first[comp]  # each dim's set's first dim: its lowest ids
        is_rep = (rep == np.arange(nd)) & keep_dim
        cstart = np.zeros(nd, dtype=np.int64)
        cstart[is_rep] = np.cumsum(size[is_rep]) - size[is_rep]
        cb = cstart[rep]  # compact id of each dim's index 0
        m = int(size[is_rep].sum())
        if other:
            a = np.concatenate([self._a[k].astype(np.int64) - base[self._pairs[k][0]] + cb[self._pairs[k][0]]
                                for k in other])
            b = np.concatenate([self._b[k].astype(np.int64) - base[self._pairs[k][1]] + cb[self._pairs[k][1]]
                                for k in other])
        else:
            a = b = np.zeros(0, np.int64)
        n_cls, cls = connected_components(_adjacency(m, a, b), directed=False)
        starts, ends, cstarts = base.tolist(), (base + size).tolist(), cb.tolist()
        for d in np.nonzero(keep_dim & (size > 0))[0].tolist():
            labels[starts[d]:ends[d]] = cls[cstarts[d]:cstarts[d] + ends[d] - starts[d]]
        return int(n_cls)

    def settle(self) -> "Solution":
        """Solve, first turning every grid that cannot keep two factors that lose channels into a
        coupling (see :mod:`fxprune.grid`): before any index-level solve, a grid whose product or factors
        lie in components pinned outright (a flatten of pinned spatial dims, a video transformer's token
        grids of millions of indices); after each solve, grids one live factor away from a coupling, and
        two grids over the same product share their factors (``repeat_kv`` of k and of v)."""
        from .index_map import identity

        for _ in range(len(self.grids)):  # an ungridded product couples its factor: components grow
            comp = _components(len(self.dims), self._pairs)
            dead = np.zeros(comp.max() + 1 if len(comp) else 0, bool)
            dead[[comp[did] for did, idx, _ in self.pins if idx is None]] = True
            bad = []
            for k, (p, fs, _) in enumerate(self.grids):
                # a product pinned outright pins every factor index (each slice holds a pinned element)
                live = [] if dead[comp[p]] else [m for m, f in enumerate(fs)
                                                  if self.dims[f].size > 1 and not dead[comp[f]]]
                if len(live) <= 1:
                    bad.append((k, live[0] if live else None))
            if not bad:
                break
            self.ungrid(bad)
        sol = self.solve()
        for _ in range(2 * len(self.grids)):  # each round couples dims or turns grids into couplings
            same = sol.grids.duplicates() if sol.grids is not None else []
            bad = [] if same or sol.grids is None else sol.grids.degenerate(sol)
            if not same and not bad:
                break
            for a, b in same:
                da, db = self.dims[a], self.dims[b]
                self.couple(da, db, *identity(da.size), identity=True)
            self.ungrid(bad)
            sol = self.solve()
        return sol

    def _pin_reasons(self, labels: np.ndarray, keep_dim: np.ndarray) -> Dict[int, str]:
        """Every pinned class of a parameter group with the reason of the first pin that touches it (in
        pin order, then label order: the order a pin-by-pin loop would insert them)."""
        ids, which = [], []
        for k, (did, idx, _) in enumerate(self.pins):
            if not keep_dim[did]:
                continue
            d = self.dims[did]
            local = np.arange(d.size, dtype=np.int64) if idx is None else np.asarray(idx, np.int64)
            ids.append(local + d.base)
            which.append(np.full(len(local), k, dtype=np.int64))
        if not ids:
            return {}
        labs = labels[np.concatenate(ids)]
        pin_of = np.concatenate(which)
        uniq, first = np.unique(labs, return_index=True)  # the first occurrence is the earliest pin
        k = pin_of[first]
        order = np.lexsort((uniq, k))
        return {lab: self.pins[kk][2] for lab, kk in zip(uniq[order].tolist(), k[order].tolist())}


@dataclass
class Solution:
    """The solved IR: ``labels[global id]`` is the class, ``dim_group[dim id]`` the group."""

    ir: ChannelIR
    labels: np.ndarray
    owner: np.ndarray
    dim_group: np.ndarray
    pinned_reason: Dict[int, str]
    grids: Optional["Grids"] = None  # set when the IR has grid constraints

    def labels_of(self, d: DimNode, idx: Optional[Sequence[int]] = None) -> np.ndarray:
        ids = d.base + (np.arange(d.size) if idx is None else np.asarray(idx, np.int64))
        return self.labels[ids]

    def removed_mask(self, removed_labels: np.ndarray) -> np.ndarray:
        """Boolean mask over global ids: which indices a set of removed classes takes away (with every
        grid product element whose factor lost an index)."""
        if len(removed_labels) == 0:
            return np.zeros(len(self.labels), bool)
        table = np.zeros(int(max(self.labels.max(), np.max(removed_labels))) + 1, bool)
        table[removed_labels] = True
        if self.grids is not None:
            self.grids.derive(table)
        return table[self.labels]
