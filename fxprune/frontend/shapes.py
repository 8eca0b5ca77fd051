"""Output shapes of the commonest ops computed directly, for shape propagation on meta tensors.

On meta tensors most of :func:`fxprune.frontend.propagate_shapes`'s time is spent in the ops' meta kernels
(Python reference decompositions: a broadcast ``mul`` or an ``adaptive_avg_pool2d`` takes about a
millisecond). For plain cases whose result is certain — dense contiguous inputs of one floating dtype, the
sizes an op's own formula gives, every check its kernel would make satisfied — the result is built here
as a contiguous meta tensor; anything else returns None and runs the real meta kernel (which also raises
the errors).

Example:
    >>> import torch
    >>> x = torch.empty(2, 3, 8, 8, device="meta")
    >>> conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1).to("meta")
    >>> module_shape(conv, x).shape, function_shape(torch.cat, ([x, x], 1), {}).shape
    (torch.Size([2, 4, 4, 4]), torch.Size([2, 6, 8, 8]))
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["module_shape", "function_shape"]


def _dense(x: Any) -> bool:
    """A plain meta tensor of a floating dtype with row-major strides, size-1 dims included (a tensor
    contiguous with other strides there passes them on to an elementwise result)."""
    if type(x) is not torch.Tensor or not x.is_meta or not x.dtype.is_floating_point:
        return False
    expect = 1
    for size, stride in zip(reversed(x.shape), reversed(x.stride())):
        if stride != expect:
            return False
        expect *= max(size, 1)
    return True


def _param_ok(p: Optional[torch.Tensor], dtype: torch.dtype) -> bool:
    return p is None or (p.dtype == dtype and p.is_contiguous())


def _empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _conv(m: torch.nn.modules.conv._ConvNd, x: torch.Tensor) -> Optional[torch.Tensor]:
    n = len(m.kernel_size)
    if x.ndim != n + 2 or x.shape[1] != m.in_channels or not isinstance(m.padding, tuple) or \
            not _param_ok(m.weight, x.dtype) or not _param_ok(m.bias, x.dtype) or m.weight.ndim != n + 2:
        return None
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
           zip(x.shape[2:], m.padding, m.dilation, m.kernel_size, m.stride)]
    if any(o <= 0 for o in out) or any(p < 0 for p in m.padding):
        return None  # the kernel raises its own error
    return _empty((x.shape[0], m.out_channels, *out), x)


def _linear(m: torch.nn.Linear, x: torch.Tensor) -> Optional[torch.Tensor]:
    if x.ndim < 1 or x.shape[-1] != m.in_features or not _param_ok(m.weight, x.dtype) or \
            not _param_ok(m.bias, x.dtype):
        return None
    return _empty((*x.shape[:-1], m.out_features), x)


def _adaptive_avg(x: torch.Tensor, size: Any, n: int) -> Optional[torch.Tensor]:
    size = (size,) * n if isinstance(size, int) else tuple(size)
    if x.ndim not in (n + 1, n + 2) or len(size) != n or any(s == 0 for s in x.shape[-n:]):
        return None
    out = [x.shape[x.ndim - n + i] if s is None else s for i, s in enumerate(size)]
    if not all(isinstance(s, int) and s > 0 for s in out):
        return None
    return _empty((*x.shape[:x.ndim - n], *out), x)


_MODULES: Dict[type, Callable[[Any, torch.Tensor], Optional[torch.Tensor]]] = {
    torch.nn.Conv1d: _conv, torch.nn.Conv2d: _conv, torch.nn.Conv3d: _conv, torch.nn.Linear: _linear,
    torch.nn.AdaptiveAvgPool1d: lambda m, x: _adaptive_avg(x, m.output_size, 1),
    torch.nn.AdaptiveAvgPool2d: lambda m, x: _adaptive_avg(x, m.output_size, 2),
    torch.nn.AdaptiveAvgPool3d: lambda m, x: _adaptive_avg(x, m.output_size, 3),
}


def module_shape(m: torch.nn.Module, x: Any) -> Optional[torch.Tensor]:
    """The meta output of ``m(x)`` (matched by exact class), or None: run the module."""
    fn = _MODULES.get(type(m))
    return fn(m, x) if fn is not None and _dense(x) else None


_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
           torch.div}


def _binary(args: Sequence[Any]) -> Optional[torch.Tensor]:
    a, b = args
    tensors = [v for v in (a, b) if isinstance(v, torch.Tensor)]
    if not tensors or not all(_dense(t) for t in tensors) or len({t.dtype for t in tensors}) != 1:
        return None
    for v in (a, b):  # a Python number does not change a floating tensor's dtype (type promotion)
        if not isinstance(v, torch.Tensor) and (type(v) not in (int, float)):
            return None
    if len(tensors) == 1:
        return _empty(tensors[0].shape, tensors[0])
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return None
    return _empty(shape, a)


def _cat(tensors: Any, dim: Any) -> Optional[torch.Tensor]:
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int) or \
            not all(_dense(t) for t in tensors):
        return None
    first = tensors[0]
    nd = first.ndim
    if nd == 0 or not -nd <= dim < nd or any(t.ndim != nd or t.dtype != first.dtype for t in tensors):
        return None
    dim %= nd
    shape = list(first.shape)
    if any(t.shape[:dim] != first.shape[:dim] or t.shape[dim + 1:] != first.shape[dim + 1:] for t in tensors):
        return None
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return _empty(shape, first)


def function_shape(target: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The meta result of ``target(*args, **kwargs)`` for a few plain cases, or None: run the op."""
    if target in _BINARY:
        return _binary(args) if len(args) == 2 and not kwargs else None
    if target is torch.cat:
        if kwargs.keys() - {"dim"} or len(args) > 2:
            return None
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        return _cat(args[0], dim) if args else None
    if target is F.adaptive_avg_pool2d and len(args) == 2 and not kwargs and _dense(args[0]):
        return _adaptive_avg(args[0], args[1], 2)
    return None
