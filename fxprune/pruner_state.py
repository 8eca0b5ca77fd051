"""What the :class:`~fxprune.Pruner` keeps track of between picks, and what it asks of the model.

``_KeptIndices`` maps a parameter dim to the original indices the cumulative plan still keeps; ``_Cand`` and
``_Guard`` are one group's candidate classes and the bookkeeping that stops a pick from emptying a dim or
exceeding ``max_pruning_ratio``; the rest reads the model (transformers or not, on meta or not, a layer's
output width) and the analysis's attention heads (which groups hold heads, a GQA attention's layout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .analyze import ChannelGraph, Group
from .errors import PlanError
from .plan import PrunePlan, parse_key
from .select import class_dim_counts, valid_prefix

if TYPE_CHECKING:
    from .pruner import Pruner


class _KeptIndices:
    """``(param, dim) -> original indices still kept`` for every member the cumulative plan touches
    (the plan names one member per class; expanding it on the original analysis names them all)."""

    def __init__(self, pruner: "Pruner", graph: ChannelGraph):
        self.pruner, self.graph = pruner, graph
        self._sig, self._kept = 0, {}

    def get(self, key: Tuple[str, int], default: Any = None) -> Any:
        plan = self.pruner._plan
        sig = sum(len(v) for v in plan.values())  # the plan only grows
        if sig != self._sig:
            self._kept = {}
            for k, removed in self.graph.expand(PrunePlan(plan)).plan.items():
                name, dim = parse_key(k)
                size = self.graph._param_dim(name, dim).size
                self._kept[(name, dim)] = np.setdiff1d(np.arange(size), np.asarray(removed, dtype=np.int64))
            self._sig = sig
        return self._kept.get(key, default)


@dataclass
class _Cand:
    group: Group
    scores: np.ndarray
    n_init: int


class _Guard:
    """Tracks how many indices of every parameter dim a scope's picks remove; refuses a pick that would
    empty a dim or exceed ``max_pruning_ratio`` of the group's initial classes."""

    def __init__(self, c: _Cand, max_ratio: float):
        # every dim of the group, not only parameters: a split part or one head's slice may not empty
        self.counts, self.remaining = class_dim_counts(c.group)
        already = c.n_init - len(c.scores)
        self.cap = max(0, math.floor(c.n_init * max_ratio + 1e-9) - already)
        if max_ratio >= 1.0:
            self.cap = len(c.scores)
        self.taken = 0
        self.used = set()

    def take(self, i: int) -> bool:
        if i in self.used or self.taken >= self.cap:
            return False
        if any(self.remaining[j] - n <= 0 for j, n in self.counts[i]):
            return False
        for j, n in self.counts[i]:
            self.remaining[j] -= n
        self.used.add(i)
        self.taken += 1
        return True


def _is_hf_causal_lm(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` with a causal-LM head (its class in the causal-LM auto mapping)."""
    if not _is_transformers(model):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as names
    except ImportError:
        names = {}
    known = {c for v in names.values() for c in ((v,) if isinstance(v, str) else v)}
    return type(model).__name__ in known or type(model).__name__.endswith("ForCausalLM")


def _on_meta(model: nn.Module) -> bool:
    from .scores import has_meta_tensors  # here: scores and importance import each other
    return has_meta_tensors(model)


def _check_ratio(what: str, r: float) -> None:
    if not 0.0 <= r < 1.0:
        raise PlanError(f"{what} must be in [0, 1), got {r}")


def _tensor(model: nn.Module, name: str) -> Optional[torch.Tensor]:
    owner, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(owner) if owner else model
    except AttributeError:
        return None
    t = getattr(mod, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def _is_transformers(model: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel`` (checked by its base classes' module, without importing transformers)."""
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(model).__mro__)


def _out_dim(model: nn.Module, owner: str, attr: str) -> int:
    """The output-channel dim of a module's parameter (1 for transposed-conv weights and Hugging Face's
    ``Conv1D``, whose weight is ``[in, out]``; else 0)."""
    try:
        mod = model.get_submodule(owner) if owner else model
    except AttributeError:
        return 0
    if attr == "weight" and (isinstance(mod, nn.modules.conv._ConvTransposeNd) or type(mod).__name__ == "Conv1D"):
        return 1
    return 0


def _signature(model: nn.Module, g: Group) -> Tuple:
    """Structural signature of a group: module types, parameter roles and dims of its members."""
    sig = []
    for name, dim, _ in g.index_classes():  # parameters and buffers only: value names differ per block
        owner, _, attr = name.rpartition(".")
        try:
            mod = model.get_submodule(owner) if owner else model
            kind = type(mod).__name__
        except AttributeError:
            kind = "?"
        sig.append((kind, attr, dim))
    return tuple(sorted(sig))


def _valid_picks(graph: ChannelGraph, picked: List[Tuple["_Cand", int]]) -> List[Tuple[str, List[int]]]:
    """Each group's picks cut to the longest prefix its expansion allows
    (:func:`fxprune.select.valid_prefix`)."""
    by_group: Dict[int, Tuple[Group, List[Tuple[str, List[int]]]]] = {}
    for c, i in picked:
        by_group.setdefault(id(c.group), (c.group, []))[1].append(c.group.all_classes[i])
    return [cls for g, picks in by_group.values() for cls in valid_prefix(graph, picks, g.key, g)]


def _groups_inside_heads(graph: ChannelGraph) -> set:
    """Keys of the groups whose classes are head dims: those holding heads and those the heads span."""
    out = set()
    for g in graph.groups:
        if g.head_classes:
            out.add(g.key)
            out.update(graph.groups[j].key for span in g.head_span for j in span)
    return out


def _head_key(part: Group) -> str:
    """Which attention a view of head classes stands for: the member key naming its first head."""
    return part.all_classes[0][0] if part.all_classes else part.key


def _gqa_layout(part: Group) -> Optional[Tuple[List[int], List[int]]]:
    """``(kv groups, query positions)``: the positions in ``part.all_classes`` of a GQA attention's two kinds
    of head class, or None for any other attention. A kv group removes its k/v rows as well, so it takes
    indices from every dim a query position (one query head of every group) takes and more; on the query
    rows each kv group meets each query position in exactly one head, all of one size."""
    counts, _ = class_dim_counts(part)
    kinds: Dict[frozenset, List[int]] = {}
    for i, cls in enumerate(counts):
        kinds.setdefault(frozenset(d for d, _ in cls), []).append(i)
    if len(kinds) != 2 or len({k for k, _ in part.all_classes}) != 1:
        return None
    (sa, a), (sb, b) = kinds.items()
    kv, pos = (a, b) if sa > sb else (b, a) if sb > sa else (None, None)
    if kv is None:
        return None
    rows = [set(idx) for _, idx in part.all_classes]
    meets = {len(rows[i] & rows[j]) for i in kv for j in pos}
    if len(meets) != 1 or 0 in meets or any(len(rows[i]) != len(pos) * min(meets) for i in kv):
        return None
    return kv, pos
