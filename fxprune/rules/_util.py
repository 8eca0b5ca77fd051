"""Small helpers shared by rule families: reading FX arguments and normalising dims."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch.fx

__all__ = ["arg", "set_arg", "norm_dims", "spatial_rank"]


def arg(node: torch.fx.Node, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, positional at ``pos`` (counting the tensor for methods) or keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def set_arg(node: torch.fx.Node, pos: int, name: str, value: Any) -> None:
    """Replace argument ``name`` wherever it was given (positional ``pos`` or keyword)."""
    if len(node.args) > pos:
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
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
