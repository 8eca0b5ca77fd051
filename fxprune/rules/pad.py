"""Padding modules (``nn.ZeroPad*d``, ``ConstantPad*d``, ``ReflectionPad*d``, ``ReplicationPad*d``,
``CircularPad*d``): the padded dims stay, every other dim (batch, channels) goes straight through.

``F.pad`` has its own rule in ``pooling.py``; a module pads the last ``len(padding) // 2`` dims of its input.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(4, 2, 3))
    >>> fxprune.analyze(m, torch.randn(1, 3, 8, 8)).group_of("0.weight", 0).pinned is None
    True
"""
from __future__ import annotations

import torch.nn as nn

from ..registry import register
from ._util import arg

_PAD_MODULES = tuple(
    getattr(nn, f"{kind}Pad{k}d") for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
    for k in (1, 2, 3) if hasattr(nn, f"{kind}Pad{k}d"))


def lower_pad_module(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None:
        return
    pad = tuple(ctx.module().padding)
    padded = {x.ndim - 1 - i // 2 for i, p in enumerate(pad) if p != 0}
    for d in range(x.ndim):
        if d not in padded and x.shape[d] == out.shape[d]:
            ctx.couple(x, d, out, d)


register("call_module", _PAD_MODULES, "pad module", lower_pad_module)
