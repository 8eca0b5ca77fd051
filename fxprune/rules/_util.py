"""Small helpers shared by rule families: reading FX arguments and normalising dims."""
from __future__ import annotations

import functools
import inspect
import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx

__all__ = ["gather_kept", "scatter_kept", "arg", "set_arg", "call_args", "normalize_call", "norm_dims", "spatial_rank", "size_reads",
           "fixed_size", "reads_pruned"]


@functools.lru_cache(maxsize=4096)
def _positional_names(op: str, target: Any, given: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
    """Names of the positional parameters of a call target, in order (``self`` first for methods), from
    the first signature that accepts every keyword in ``given``; None when no signature is known."""
    sigs: List[List[Tuple[str, bool]]] = []  # [(name, keyword-only)]
    if op == "call_method" and isinstance(target, str):
        for s in torch._C._jit_get_schemas_for_operator(f"aten::{target}"):
            sigs.append([(a.name, a.kwarg_only) for a in s.arguments])
    elif isinstance(target, torch._ops.OpOverload):
        sigs.append([(a.name, a.kwarg_only) for a in target._schema.arguments])
    elif callable(target):
        try:
            params = inspect.signature(target).parameters.values()
            sigs.append([(p.name, p.kind is p.KEYWORD_ONLY) for p in params
                         if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])
        except (TypeError, ValueError):  # a builtin: the TorchScript schemas of the torch op
            from torch.fx.operator_schemas import get_signature_for_torch_op
            for s in get_signature_for_torch_op(target) or ():
                sigs.append([(p.name, p.kind is p.KEYWORD_ONLY) for p in s.parameters.values()])
    for sig in sigs:
        names = {n for n, _ in sig}
        if all(k in names for k in given):
            return tuple(n for n, kw_only in sig if not kw_only)
    return None


def normalize_call(op: str, target: Any, args: Sequence[Any], kwargs: Dict[str, Any]
                   ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """``(args, kwargs)`` of a call with every keyword argument that has a positional slot right after
    the given positional ones moved into it, so ``torch.flatten(input=x, start_dim=1)`` reads as
    ``torch.flatten(x, 1)``. Works for torch functions, Tensor methods, Python functions and aten
    overloads; a call whose signature is unknown is returned as it is.

    Example:
        >>> import torch
        >>> normalize_call("call_function", torch.flatten, (), {"input": "x", "start_dim": 1})
        (('x', 1), {})
        >>> normalize_call("call_method", "sum", ("x",), {"keepdim": True})
        (('x',), {'keepdim': True})
    """
    args = tuple(args)
    if not kwargs:
        return args, {}
    try:
        names = _positional_names(op, target, tuple(sorted(kwargs)))
    except Exception:  # an exotic target: read it as given
        names = None
    if names is None:
        return args, dict(kwargs)
    out, rest = list(args), dict(kwargs)
    for name in names[len(out):]:
        if name not in rest:
            break
        out.append(rest.pop(name))
    return tuple(out), rest


def call_args(node: torch.fx.Node) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """The normalised ``(args, kwargs)`` of a call node (see :func:`normalize_call`)."""
    if node.op not in ("call_function", "call_method"):
        return tuple(node.args), dict(node.kwargs)
    return normalize_call(node.op, node.target, node.args, node.kwargs)


def arg(node: torch.fx.Node, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, positional at ``pos`` (counting the tensor for methods) or keyword;
    a keyword argument that has a positional slot is found at its position."""
    if len(node.args) > pos:
        return node.args[pos]
    if not node.kwargs:
        return default
    args, kwargs = call_args(node)
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def set_arg(node: torch.fx.Node, pos: int, name: str, value: Any) -> None:
    """Replace argument ``name`` wherever it was given (positional ``pos`` or keyword)."""
    if len(node.args) > pos:
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
        return
    kwargs = dict(node.kwargs)
    if name not in kwargs and kwargs:  # given by keyword under its real name (``input=`` vs ``self``)
        try:
            names = _positional_names(node.op, node.target, tuple(sorted(kwargs)))
        except Exception:
            names = None
        if names is not None and pos < len(names) and names[pos] in kwargs:
            name = names[pos]
    kwargs[name] = value
    node.kwargs = kwargs


def norm_dims(dims: Any, ndim: int) -> Optional[List[int]]:
    """``dims`` (int, sequence or None) as sorted non-negative ints; None means every dim."""
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, Sequence) or not all(isinstance(d, int) for d in dims):
        return list(range(ndim))  # dims computed at run time: treat as "all" (conservative)
    return sorted({d % ndim for d in dims}) if ndim else []


def spatial_rank(name: str, default: int = 2) -> int:
    """1, 2 or 3 from a class or function name such as ``MaxPool3d`` or ``avg_pool1d``."""
    for k in (1, 2, 3):
        if name.lower().endswith(f"{k}d"):
            return k
    return default


def size_reads(value: Any) -> Optional[List[Tuple[torch.fx.Node, Optional[int]]]]:
    """The ``(tensor node, dim)`` pairs a Python size expression reads through ``x.size()``/``x.shape``.

    ``dim`` is None when the whole shape is read. Returns None when the expression depends on
    something else than sizes (a tensor's values, an op this helper does not follow).
    """
    reads: List[Tuple[torch.fx.Node, Optional[int]]] = []
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if not isinstance(v, torch.fx.Node) or v in seen:
            continue
        seen.add(v)
        if isinstance(v.meta.get("val"), torch.Tensor):
            return None  # a tensor's values feed the size
        x = _shape_source(v)
        if x is not None:
            reads.append(x)
            continue
        if v.op == "call_function" and v.target is operator.getitem:
            src, i = v.args
            x = _shape_source(src) if isinstance(src, torch.fx.Node) else None
            if x is not None and x[1] is None and isinstance(i, int):
                reads.append((x[0], i))
                continue
        if v.op not in ("call_function", "call_method"):
            return None
        args = _flat(v.args) + _flat(tuple(v.kwargs.values()))
        stack.extend(a for a in args if isinstance(a, torch.fx.Node))
    return reads


def _shape_source(v: torch.fx.Node) -> Optional[Tuple[torch.fx.Node, Optional[int]]]:
    """``(x, d)`` for ``x.size(d)``, ``(x, None)`` for ``x.size()`` / ``x.shape``; else None."""
    if v.op == "call_method" and v.target == "size" and v.args:
        d = arg(v, 1, "dim")
        return (v.args[0], d if isinstance(d, int) else None)
    if v.op == "call_function" and v.target is getattr and len(v.args) == 2 and v.args[1] == "shape":
        return (v.args[0], None)
    return None


def _flat(items: Any) -> List[Any]:
    out: List[Any] = []
    for a in items:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out


def fixed_size(entry: Any, old: int, new: int, rctx) -> Any:
    """A size argument after pruning: ``new`` where pruning changes it, else ``entry`` unchanged.

    An int entry changes when the dim it sizes shrank (``-1`` is left alone). A size computed in the graph
    (``c // heads`` from another tensor's shape) becomes the constant ``new`` when the dim shrank or when
    the expression reads a pruned dim (then its run-time value would no longer be ``old``): it is a
    channel size, fixed once pruned. Sizes that read only unpruned dims (the batch) stay dynamic.
    """
    if isinstance(entry, int):
        return new if entry != -1 and old != new else entry
    if not isinstance(entry, torch.fx.Node):
        return entry
    if old != new or reads_pruned(entry, rctx):
        return new
    return entry


def reads_pruned(entry: Any, rctx) -> bool:
    """True when a size expression reads a dim that loses channels (or cannot be followed)."""
    reads = size_reads(entry)
    if reads is None:
        return True
    for x, d in reads:
        ref = rctx.tensor(x)
        if ref is None:
            continue
        dims = range(ref.ndim) if d is None else [d % ref.ndim]
        if any(len(rctx.removed(ref, k)) for k in dims):
            return True
    return False


def couple_others(ctx, x, out, skip: int) -> None:
    """Couple every dim of ``x`` with the same dim of ``out`` except dim ``skip`` (the one the op changes)."""
    for d in range(x.ndim):
        if d != skip:
            ctx.couple(x, d, out, d)


def gather_kept(t: torch.Tensor, kept: List[Any]) -> torch.Tensor:
    """``t`` reduced to the kept indices of each dim (``kept[d]`` an index tensor, or None for all)."""
    for d, idx in enumerate(kept):
        if idx is not None:
            t = t.index_select(d, idx)
    return t


def scatter_kept(full_shape: Sequence[int], t: torch.Tensor, kept: List[Any]) -> torch.Tensor:
    """The inverse of :func:`gather_kept`: ``t`` placed at the kept indices of zeros of ``full_shape``
    (a statistic recomputed over the kept channels, shown at full width in the masked original)."""
    for d in reversed(range(len(kept))):
        if kept[d] is not None:
            shape = list(t.shape)
            shape[d] = full_shape[d]
            t = t.new_zeros(shape).index_copy(d, kept[d], t)
    return t
