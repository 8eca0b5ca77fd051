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
from typing import Dict, Iterable, Iterator, Mapping, Tuple

from .errors import PlanError

__all__ = ["PrunePlan", "parse_key", "make_key"]


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


class PrunePlan(Mapping[str, list]):
    """An immutable mapping ``key -> sorted list of indices to remove``.

    Indices must be non-negative ints without duplicates; range checks need the model and happen in
    :func:`fxprune.prune`. Plans compare equal when they hold the same keys and indices.
    """

    def __init__(self, entries: Mapping[str, Iterable[int]] | None = None):
        self._entries: Dict[str, list] = {}
        for key, idxs in (entries or {}).items():
            parse_key(key)
            try:
                lst = [int(i) for i in idxs]
            except (TypeError, ValueError):
                raise PlanError(f"plan entry {key!r}: indices must be a list of ints, got {idxs!r}") from None
            bad = [i for i in lst if i < 0]
            if bad:
                raise PlanError(f"plan entry {key!r}: negative indices {bad[:5]} (use indices in 0..size-1)")
            if len(set(lst)) != len(lst):
                dup = sorted({i for i in lst if lst.count(i) > 1})
                raise PlanError(f"plan entry {key!r}: duplicate indices {dup[:5]}")
            if lst:
                self._entries[key] = sorted(lst)

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
            out.setdefault(k, set()).update(int(i) for i in v)
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
