"""In-place activations as ``torch.export`` records them (``nn.Hardswish(inplace=True)`` -> ``aten.hardswish_``).

The export frontend raises an aten op to its ``torch.<name>`` namesake when that exists (``relu_``, ``tanh_``);
``hardswish_``, ``hardsigmoid_``, ``silu_``, ``gelu_``, ``mish_``, ``elu_``, ``relu6``/``relu6_``,
``leaky_relu_`` and ``hardtanh_`` have none, so their aten overloads are registered here. Each maps every
element to itself (the output is the input, changed in place), so every dim of the input goes with the same
dim of the output; each maps 0 to 0, so a removed channel zeroed in the original stays zero.

Example (EfficientViT's in-place hardswish, through the export frontend):
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Hardswish(inplace=True),
    ...                         torch.nn.Conv2d(8, 4, 1))
    >>> g = fxprune.analyze(m, torch.randn(1, 3, 4, 4), frontend="export").group_of("0.weight", 0)
    >>> g.pinned, ("2.weight", 1) in g.members
    (None, True)
"""
from __future__ import annotations

import torch

from ..registry import register

_NAMES = ("hardswish_", "hardsigmoid_", "silu_", "gelu_", "mish_", "elu_", "relu6", "relu6_", "leaky_relu_",
          "hardtanh_")


def lower_inplace_act(ctx, node) -> None:
    x, out = ctx.tensor(node.args[0]) if node.args else None, ctx.out()
    if x is not None and out is not None and x.shape == out.shape:
        ctx.couple_all(x, out)


_TARGETS = tuple(getattr(torch.ops.aten, n).default for n in _NAMES
                 if hasattr(getattr(torch.ops.aten, n, None), "default"))
register("call_function", _TARGETS, "in-place activation", lower_inplace_act)
