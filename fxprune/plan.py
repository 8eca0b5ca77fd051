"""PrunePlan: which channels to remove, addressed by stable parameter-dim keys.

A key is ``"<parameter or buffer qualname>:<dim>"``; the indices are in that member's own coordinates
(the original, unpruned ones). A plan is JSON-serialisable and can be replayed on a fresh copy of the
model.

Example:
    >>> from fxprune import PrunePlan
    >>> plan = PrunePlan({"layer1.0.conv1.weight:0": [9, 2, 6]})
    >>> plan["layer1.0.conv1.weight:0"]
    [2, 6, 9]
    >>> PrunePlan.from_json(plan.to_json()) == plan
    True
"""
from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from typing import Dict, Iterator, Mapping, Tuple

from .errors import PlanError

__all__ = ["PrunePlan", "parse_key", "make_key"]

_BOOL_DTYPES = {"bool", "torch.bool"}  # numpy and torch bool scalars, by their dtype's name


def make_key(name: str, dim: int) -> str:
    """``make_key("conv.weight", 0) -> "conv.weight:0"``."""
    return f"{name}:{dim}"


def parse_key(key: str) -> Tuple[str, int]:
    """Split ``"conv.weight:0"`` into ``("conv.weight", 0)``; raise PlanError when malformed."""
    if not isinstance(key, str) or ":" not in key:
        raise PlanError(f"plan key {key!r} is not of the form '<parameter qualname>:<dim>'")
    name, _, dim = key.rpartition(":")
    try:
        d = int(dim)
    except ValueError:
        raise PlanError(f"plan key {key!r}: dim {dim!r} is not an integer") from None
    if not name:
        raise PlanError(f"plan key {key!r} has an empty parameter name")
    return name, d


def _index(key: str, i: object) -> int:
    """``i`` as a Python int when it is an integer (Python, numpy or a 0-d integer tensor).

    bool is refused although it is an ``int`` subclass: ``[True]`` would silently mean channel 1, and
    floats or strings are refused rather than truncated or parsed (``0.5`` is not channel 0).
    """
    if isinstance(i, bool) or str(getattr(i, "dtype", "")) in _BOOL_DTYPES:
        raise PlanError(f"plan entry {key!r}: index {i!r} is a bool; indices must be integers")
    try:
        return operator.index(i)  # type: ignore[arg-type]
    except TypeError:
        raise PlanError(f"plan entry {key!r}: index {i!r} ({type(i).__name__}) is not an integer") from None


def _indices(key: str, idxs: object) -> list:
    if type(idxs) is list and all(type(i) is int for i in idxs):
        return list(idxs)  # plain ints (every plan fxprune builds): nothing to convert or refuse
    if isinstance(idxs, (str, bytes)) or not isinstance(idxs, Iterable):
        raise PlanError(f"plan entry {key!r}: indices must be a list of integers, got {idxs!r}")
    return [_index(key, i) for i in idxs]


class PrunePlan(Mapping[str, list]):
    """An immutable mapping ``key -> sorted list of indices to remove``.

    Indices must be non-negative integers (Python or numpy) without duplicates; bools, floats and strings
    raise :class:`~fxprune.PlanError` naming the entry. Range checks need the model and happen in
    :func:`fxprune.prune`. Plans compare equal when they hold the same keys and indices.

    Example:
        >>> import numpy as np
        >>> PrunePlan({"fc.weight:0": np.array([3, 1])})
        PrunePlan({'fc.weight:0': [1, 3]})
        >>> PrunePlan({"fc.weight:0": [True]})
        Traceback (most recent call last):
        ...
        fxprune.errors.PlanError: plan entry 'fc.weight:0': index True is a bool; indices must be integers
    """

    def __init__(self, entries: Mapping[str, Iterable[int]] | None = None):
        self._entries: Dict[str, list] = {}
        for key, idxs in (entries or {}).items():
            parse_key(key)
            lst = _indices(key, idxs)
            bad = [i for i in lst if i < 0]
            if bad:
                raise PlanError(f"plan entry {key!r}: negative indices {bad[:5]} (use indices in 0..size-1)")
            if len(set(lst)) != len(lst):
                dup = sorted({i for i in lst if lst.count(i) > 1})
                raise PlanError(f"plan entry {key!r}: duplicate indices {dup[:5]}")
            if lst:
                self._entries[key] = sorted(lst)

    @classmethod
    def union(cls, classes: Iterable[Tuple[str, Iterable[int]]]) -> "PrunePlan":
        """The plan removing every ``(key, indices)`` class given; classes may overlap (a whole head and
        a head dim share a row).

        Example:
            >>> PrunePlan.union([("q.weight:0", [0, 1]), ("q.weight:0", [1, 5])])
            PrunePlan({'q.weight:0': [0, 1, 5]})
        """
        entries: Dict[str, list] = {}
        for key, idx in classes:
            lst = entries.get(key)
            if lst is None:
                lst = entries[key] = []
            lst.extend(idx)
        plan = cls()
        for key, v in entries.items():  # sorted and unique already: only keys and signs to check
            lst = sorted(set(map(int, v)))
            parse_key(key)
            if lst and lst[0] < 0:
                raise PlanError(f"plan entry {key!r}: negative indices {[i for i in lst if i < 0][:5]} "
                                "(use indices in 0..size-1)")
            if lst:
                plan._entries[key] = lst
        return plan

    def __getitem__(self, key: str) -> list:
        return list(self._entries[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PrunePlan):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v if len(v) <= 8 else v[:8] + ['...']}" for k, v in self._entries.items())
        return f"PrunePlan({{{inner}}})"

    def merge(self, other: Mapping[str, Iterable[int]]) -> "PrunePlan":
        """A new plan holding the union of both plans' indices per key."""
        out = {k: set(v) for k, v in self._entries.items()}
        for k, v in other.items():
            out.setdefault(k, set()).update(_indices(k, v))
        return PrunePlan({k: sorted(v) for k, v in out.items()})

    def to_dict(self) -> Dict[str, list]:
        """A plain ``dict`` copy."""
        return {k: list(v) for k, v in self._entries.items()}

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys)."""
        return json.dumps(self._entries, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        """Inverse of :meth:`to_json`; raises PlanError on malformed text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan JSON is malformed: {e}") from None
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object mapping keys to index lists")
        return cls(data)
