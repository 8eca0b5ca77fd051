"""MACs and parameters of a candidate plan, read from the analysis' shapes without building the model.

A budget search (``target_macs``/``target_params``) asks "how big is the model without these classes?"
many times. Building a pruned copy and running a counter for each probe costs a trace-sized amount of work
every time; here the answer comes from the IR: each value's shape minus the indices the plan removes along
each dim, and the MAC formula of each op that multiplies (conv, linear, matmul, attention). Parameters are
exact by construction. MACs use the same convention as :func:`fxprune.count` (one multiply-add per weight
read per output element); when the graph holds an op whose MACs are not written here (an RNN, an einsum,
``nn.MultiheadAttention``) the estimate is ``None`` and callers build and count the model instead.

Example:
    >>> import torch, fxprune
    >>> from fxprune.ircount import plan_size
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> graph = fxprune.analyze(m, x)
    >>> plan = fxprune.PrunePlan({"0.weight:0": [0, 1]})
    >>> plan_size(graph, plan) == fxprune.count(fxprune.prune(m, plan, x), x)[0]
    True
"""
from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .lower import TRef
from .registry import lookup

__all__ = ["plan_size", "params_after", "macs_after"]

_CONV_FNS = (F.conv1d, F.conv2d, F.conv3d)
_CONVT_FNS = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_MATMUL_FNS = (torch.matmul, torch.bmm, torch.mm)
_MATMUL_METHODS = ("matmul", "bmm", "mm", "__matmul__")
# Rule families with no multiply-accumulate in the counter's convention. Any other op the formulas below
# do not cover (a wrapped window attention, an RNN, an einsum, an op with no rule) makes the estimate None.
_NO_MACS = frozenset({
    "attention mask", "batchnorm", "cat", "channel shuffle", "container", "creation", "creation like",
    "creation new", "elementwise", "embedding", "embedding bag", "expand", "fold", "functional batchnorm",
    "functional embedding", "functional groupnorm", "functional layernorm", "getitem", "glu", "grid_sample",
    "groupnorm", "index_select", "interpolate", "layernorm", "local response norm", "max unpool", "mean",
    "meshgrid", "narrow", "pad", "pad module", "permute", "pixel shuffle", "pooling", "prelu", "reduction", "repeat",
    "repeat_interleave", "reshape", "reshape_as", "roll", "shape query", "softmax-like", "softmax2d", "split",
    "stack", "unflatten", "unfold",
})


class _Shapes:
    """Shapes after removing ``mask``'s indices, for values and parameters of one analysis."""

    def __init__(self, graph: Any, mask: np.ndarray) -> None:
        self.graph, self.mask, self.ctx = graph, mask, graph.ctx

    def new(self, ref: Optional[TRef]) -> Optional[Tuple[int, ...]]:
        if ref is None:
            return None
        count = getattr(self.graph, "removed_count", None)
        if count is None:
            return tuple(s - len(self.graph.removed(self.mask, ref.key, d)) for d, s in enumerate(ref.shape))
        return tuple(s - count(self.mask, ref.key, d) for d, s in enumerate(ref.shape))

    def value(self, a: Any) -> Optional[Tuple[int, ...]]:
        return self.new(self.ctx.tensor(a))

    def param(self, qualname: str, t: torch.Tensor) -> Tuple[int, ...]:
        return self.new(TRef(("param", self.ctx.canonical.get(qualname, qualname)), tuple(t.shape)))


def _conv(out: Sequence[int], w: Sequence[int], x: Sequence[int], transposed: bool) -> int:
    if transposed:  # weight (Cin, Cout/g, *k): every input element meets Cout/g * k weights
        return math.prod(x) * math.prod(w[1:])
    return math.prod(out) * math.prod(w[1:])


def _node_macs(node: torch.fx.Node, sh: _Shapes) -> Optional[int]:
    """MACs of one node after pruning; 0 for ops without multiplies; None when not modelled."""
    ctx = sh.ctx
    if node.op == "call_module":
        m = ctx.modules[node.target]
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            out, x = sh.value(node), sh.value(node.args[0])
            w = sh.param(f"{node.target}.weight", m.weight)
            if out is None or x is None:
                return None
            if isinstance(m, nn.Linear):
                return math.prod(out) * w[1]
            return _conv(out, w, x, m.transposed)
        return _other(node, type(m))
    if node.op not in ("call_function", "call_method"):
        return 0
    t = node.target
    args = node.args
    if t is F.linear or t in _CONV_FNS or t in _CONVT_FNS:
        x, w = args[0] if args else node.kwargs.get("input"), args[1] if len(args) > 1 else node.kwargs.get("weight")
        out, xs, ws = sh.value(node), sh.value(x), sh.value(w)
        if out is None or xs is None or ws is None:
            return None
        if t is F.linear:
            return math.prod(out) * ws[1]
        return _conv(out, ws, xs, t in _CONVT_FNS)
    if t is torch.addmm:
        a, b = sh.value(args[1]), sh.value(args[2])
        return None if a is None or b is None else a[0] * a[1] * b[1]
    if t in _MATMUL_FNS or (node.op == "call_method" and t in _MATMUL_METHODS) or t is operator.matmul:
        a, out = sh.value(args[0]), sh.value(node)
        if a is None or out is None:
            return None
        return math.prod(out) * a[-1]
    if t is F.scaled_dot_product_attention:
        q, k, v = (sh.value(a) for a in args[:3])
        if q is None or k is None or v is None:
            return None
        batch = math.prod(q[:-2])
        return batch * q[-2] * k[-2] * (q[-1] + v[-1])
    return _other(node, t)


def _other(node: torch.fx.Node, target: Any) -> Optional[int]:
    """0 for an op family without MACs; None for anything else (not modelled here)."""
    if node.op == "call_method" and node.target in ("size", "dim", "numel", "contiguous", "view", "reshape"):
        return 0
    rule = lookup(node.op, target)
    return 0 if rule is not None and rule.name in _NO_MACS else None


def macs_after(graph: Any, mask: np.ndarray) -> Optional[int]:
    """MACs of the analysed model with the indices in ``mask`` removed, or None when not modelled."""
    sh = _Shapes(graph, mask)
    total = 0
    for node in graph.gm.graph.nodes:
        n = _node_macs(node, sh)
        if n is None:
            return None
        total += int(n)
    return total


def params_after(graph: Any, mask: np.ndarray, model: Optional[nn.Module] = None) -> int:
    """Parameters of the analysed model (or of ``model``, which it was traced from) after the removal."""
    root = graph.gm if model is None else model
    total, seen = 0, set()
    for name, p in root.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += math.prod(_Shapes(graph, mask).new(TRef(("param", graph.ctx.canonical.get(name, name)),
                                                        tuple(p.shape))))
    return total


def plan_size(graph: Any, plan: Any, what: str = "macs") -> Optional[int]:
    """MACs (``what="macs"``) or parameters (``"params"``) after ``plan``, from the IR alone."""
    mask = graph.expand(plan).mask
    return macs_after(graph, mask) if what == "macs" else params_after(graph, mask)

