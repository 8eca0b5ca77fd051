"""``ChannelIR.solve`` contracts identity couplings of whole dims before its index-level components
(``ChannelIR._kept_classes``): its labels must equal ``connected_components`` over every kept index, the
numbering included (order of each class's first index), on IRs mixing identities with other maps."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from fxprune.index_map import block, identity, offset, stride
from fxprune.ir import ChannelIR


def _oracle(ir: ChannelIR, keep_dim: np.ndarray) -> np.ndarray:
    """Labels of kept indices from one components call over all of them (the solve before contraction)."""
    sizes = np.array([d.size for d in ir.dims], dtype=np.int64)
    owner = np.repeat(np.arange(len(ir.dims)), sizes)
    keep = keep_dim[owner]
    kept = np.nonzero(keep)[0]
    remap = np.full(ir.total, -1, np.int64)
    remap[kept] = np.arange(len(kept))
    pairs = [ir.pair_arrays(k) for k in range(len(ir._pairs))]
    a = np.concatenate([p[0] for p in pairs]).astype(np.int64)
    b = np.concatenate([p[1] for p in pairs]).astype(np.int64)
    sel = keep[a]
    a, b = remap[a[sel]], remap[b[sel]]
    adj = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(len(kept), len(kept))).tocsr()
    return connected_components(adj, directed=False)[1], kept


def _random_ir(seed: int) -> ChannelIR:
    rng = np.random.default_rng(seed)
    ir = ChannelIR()
    dims = [ir.dim(("param" if k % 3 == 0 else "value", f"v{k}"), 0, int(rng.choice([4, 6, 12])))
            for k in range(40)]
    for _ in range(60):
        x, y = (dims[i] for i in rng.integers(0, len(dims), 2))
        kind = rng.integers(0, 5)
        if kind <= 1 and x.size == y.size:  # identities are most couplings, as in a real model
            # flagged by the caller (stored without arrays), or found by the solve's own check
            ir.couple(x, y, *identity(x.size), identity=bool(kind == 0))
        elif kind == 2 and x.size == y.size:  # a permutation: same ends, not an identity
            p = rng.permutation(x.size)
            p[[0, -1]] = [0, x.size - 1]
            ir.couple(x, y, np.arange(x.size), p)
        elif kind == 3 and x.size > y.size and x.size % y.size == 0:
            ir.couple(x, y, *stride(x.size, y.size))
        elif kind == 4 and x.size == 2 * y.size:
            ir.couple(y, x, *offset(y.size, y.size))
        elif x.size == 12 and y.size == 4:
            ir.couple(x, y, *block(12, 3))
    return ir


@pytest.mark.parametrize("seed", range(6))
def test_contracted_labels_equal_components_over_every_index(seed):
    ir = _random_ir(seed)
    rng = np.random.default_rng(100 + seed)
    for keep_dim in (np.ones(len(ir.dims), bool), rng.random(len(ir.dims)) < 0.7):
        # a kept dim's partners must be kept too (solve keeps whole groups): close keep over couplings
        for _ in range(len(ir.dims)):
            for i, j in ir._pairs:
                keep_dim[i] = keep_dim[j] = keep_dim[i] and keep_dim[j]
        labels = np.full(ir.total, -1, np.int64)
        n_cls = ir._kept_classes(keep_dim, labels)
        want, kept = _oracle(ir, keep_dim)
        assert n_cls == (want.max() + 1 if len(want) else 0)
        assert np.array_equal(labels[kept], want)
    assert any(ir._ident) and not all(ir._ident)  # both kinds of coupling were exercised


def test_the_random_irs_hold_flagged_and_found_identities():
    irs = [_random_ir(seed) for seed in range(6)]
    flagged = sum(a is None for ir in irs for a in ir._a)  # stored without arrays
    found = sum(v is None and a is not None and len(a) and np.array_equal(a - a[0], np.arange(len(a)))
                for ir in irs for a, v in zip(ir._a, ir._ident))
    assert flagged and found


def test_a_permutation_with_identity_ends_is_not_an_identity():
    ir = ChannelIR()
    a, b, c = ir.dim(("param", "a"), 0, 4), ir.dim(("value", "b"), 0, 4), ir.dim(("value", "c"), 0, 4)
    ir.couple(a, b, np.arange(4), np.array([0, 2, 1, 3]))
    ir.couple(b, c, *identity(4))
    labels = np.full(ir.total, -1, np.int64)
    ir._kept_classes(np.ones(3, bool), labels)
    # a[1] goes with b[2] (= c[2]); a[2] with b[1] (= c[1])
    assert labels[a.base + 1] == labels[b.base + 2] == labels[c.base + 2] != labels[c.base + 1]
    assert ir._ident == [False, True]
