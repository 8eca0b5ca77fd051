"""Index maps as arrays of pairs ``(i_a, i_b)`` — the edges of the channel IR.

Every map is total over the indices it names and has an obvious inverse (swap the arrays), so cycles of
maps can never "shift" indices forever: they just add edges to a finite graph.

Example:
    >>> from fxprune.index_map import block
    >>> block(6, 3)          # flatten [2, 3] -> 6: feature f goes with channel f // 3
    (array([0, 1, 2, 3, 4, 5]), array([0, 0, 0, 1, 1, 1]))
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["identity", "offset", "factor", "block", "stride"]

Pairs = Tuple[np.ndarray, np.ndarray]


def identity(n: int) -> Pairs:
    """Index i goes with index i."""
    a = np.arange(n, dtype=np.int64)
    return a, a


def offset(n: int, off: int) -> Pairs:
    """Index i of a part goes with index i + off of the whole (cat, split, slice)."""
    a = np.arange(n, dtype=np.int64)
    return a, a + off


def factor(n: int, stride: int, size: int) -> Pairs:
    """Index f of a merged dim goes with factor index ``(f // stride) % size`` (view/flatten)."""
    f = np.arange(n, dtype=np.int64)
    return f, (f // stride) % size


def block(n: int, inner: int) -> Pairs:
    """Index f goes with block ``f // inner`` (flatten C,H,W -> C*H*W with H*W = inner)."""
    return factor(n, inner, max(n // inner, 1))


def stride(n: int, period: int) -> Pairs:
    """Index f goes with ``f % period``: the same position in every block (grouped conv, shuffle)."""
    return factor(n, 1, period)
