"""One analysis per model: ``prune``, ``plan_by_ratio``, the Pruner and the budget search reuse it.

:func:`fxprune.analyze` keeps its last result per model (a weak reference: the cache never keeps a model
alive) under a fingerprint of everything the analysis reads besides weight values: the module tree
(identity, class, training flag, plain size-like attributes such as ``num_heads``), every parameter's and
buffer's identity and shape, and the example inputs' shapes, dtypes and non-tensor values. Any change —
a pruned-in-place model, a swapped submodule, ``model.eval()``, other input shapes — misses the cache and
analyses again, so a cached graph is always the graph a new trace would give.

A GraphModule is not cached (its graph can be edited in place, which no fingerprint sees) except inside
:func:`graphs_unchanged`, where the caller promises no graph is edited: the Pruner's step analyses its
current GraphModule to select, then ``prune`` analyses it again to apply.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> fxprune.analyze(m, torch.randn(1, 4)) is fxprune.analyze(m, torch.randn(1, 4))
    True
    >>> fxprune.analyze(m, torch.randn(3, 4)) is fxprune.analyze(m, torch.randn(1, 4))  # other shapes
    False
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Hashable, Iterator, List, Optional, Tuple

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["fingerprint", "lookup", "store", "clear", "graphs_unchanged"]

_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, Tuple[Hashable, Any]]" = weakref.WeakKeyDictionary()
_SCOPES: List[List[torch.nn.Module]] = []  # open graphs_unchanged blocks: the GraphModules each cached
_PLAIN = (int, float, bool, str, type(None))


def _attrs(m: torch.nn.Module) -> Tuple[Any, ...]:
    out = []
    for k, v in m.__dict__.items():
        if k[0] == "_" or k == "training":
            continue
        t = type(v)
        if t in _PLAIN_SET or isinstance(v, _PLAIN) or (
                isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)):
            out.append((k, v))
    return tuple(out)


_PLAIN_SET = frozenset(_PLAIN)


def _walk(model: torch.nn.Module) -> Tuple[Tuple[Any, ...], Tuple[Any, ...]]:
    """Modules ``(name, id, class, training, plain attributes)`` and tensors ``(name, id, shape, dtype)``
    in one walk of the module tree (every name a shared module or tensor is reachable under)."""
    mods, tensors = [], []
    for name, m in model.named_modules(remove_duplicate=False):
        mods.append((name, id(m), type(m), m.training, _attrs(m)))
        prefix = name + "." if name else ""
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None:
                    tensors.append((prefix + k, id(t), tuple(t.shape), t.dtype))
    return tuple(mods), tuple(tensors)


def _inputs_key(example_inputs: Any) -> Tuple[Any, ...]:
    from .frontend import split_inputs
    args, kwargs = split_inputs(example_inputs)
    leaves, spec = tree_flatten((args, kwargs))
    key = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            key.append(("T", tuple(x.shape), x.dtype, x.device.type))
        else:
            try:
                hash(x)
                key.append(("V", type(x).__name__, x))
            except TypeError:
                key.append(("O", id(x)))
    return (str(spec), tuple(key))


def fingerprint(model: torch.nn.Module, example_inputs: Any, *options: Hashable) -> Optional[Hashable]:
    """What the analysis of ``model`` depends on, besides weight values (None: do not cache)."""
    graph_id: Hashable = None
    if isinstance(model, torch.fx.GraphModule):
        if not _SCOPES:
            return None  # a GraphModule's graph can be edited in place, unseen by this fingerprint
        graph_id = (id(model.graph), len(model.graph.nodes))
    mods, tensors = _walk(model)
    return (mods, tensors, _inputs_key(example_inputs), options, graph_id)


def lookup(model: torch.nn.Module, key: Optional[Hashable]) -> Any:
    """The cached analysis of ``model`` under ``key``, or None."""
    if key is None:
        return None
    try:
        hit = _CACHE.get(model)
    except TypeError:  # a module that cannot be weakly referenced
        return None
    return hit[1] if hit is not None and hit[0] == key else None


def store(model: torch.nn.Module, key: Optional[Hashable], graph: Any) -> None:
    """Remember ``graph`` as the analysis of ``model`` (only the latest one per model)."""
    if key is None:
        return
    try:
        _CACHE[model] = (key, graph)
    except TypeError:
        return
    if isinstance(model, torch.fx.GraphModule) and _SCOPES:
        _SCOPES[-1].append(model)


@contextlib.contextmanager
def graphs_unchanged() -> Iterator[None]:
    """Cache GraphModule analyses inside the block; the caller promises no graph is edited in place there.

    Entries made inside are forgotten when the outermost block ends, so an edit after it is never missed.

    Example:
        >>> import torch, fxprune
        >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
        >>> x = torch.randn(1, 4)
        >>> fxprune.analyze(gm, x) is fxprune.analyze(gm, x)
        False
        >>> with graphs_unchanged():
        ...     fxprune.analyze(gm, x) is fxprune.analyze(gm, x)
        True
        >>> fxprune.analyze(gm, x) is fxprune.analyze(gm, x)
        False
    """
    _SCOPES.append([])
    try:
        yield
    finally:
        cached = _SCOPES.pop()
        if _SCOPES:
            _SCOPES[-1].extend(cached)
        else:
            for gm in cached:
                _CACHE.pop(gm, None)


def clear() -> None:
    """Forget every cached analysis."""
    _CACHE.clear()
