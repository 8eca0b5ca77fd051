"""Element-wise ops: activations, dropout, casts, and broadcasting binary/ternary ops.

Every tensor argument is coupled with the output under broadcasting; size-1 (broadcast) dims stay pinned.
Ops that only read a tensor's size (``x.size()``, ``x.shape``) touch nothing.
"""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._util import arg

_UNARY_NAMES = (
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "elu", "selu",
    "celu", "leaky_relu", "softplus", "hardtanh", "softsign", "tanhshrink", "logsigmoid", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "exp", "log", "abs",
    "neg", "sqrt", "rsqrt", "erf", "sin", "cos", "reciprocal", "sign", "floor", "ceil", "round", "square",
    "log1p", "expm1", "sgn", "trunc", "frac", "hardshrink", "softshrink", "threshold", "rrelu", "exp2",
    "clamp", "clip", "clamp_min", "clamp_max", "nan_to_num", "contiguous", "clone", "detach", "float",
    "half", "double", "bfloat16", "to", "type", "type_as", "cpu", "cuda", "requires_grad_", "sigmoid_",
    "relu_", "tanh_", "clamp_", "hardtanh_", "leaky_relu_", "elu_", "silu_", "gelu_", "abs_", "neg_",
    "pow", "pow_", "mul_", "add_", "sub_", "div_", "masked_fill", "masked_fill_", "where", "lerp",
)
_BINARY_NAMES = ("add", "sub", "mul", "div", "true_divide", "floor_divide", "maximum", "minimum", "fmod",
                 "remainder", "rsub", "atan2", "hypot", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt",
                 "ge", "logical_and", "logical_or", "bitwise_and", "__and__", "__or__")

_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.RReLU,
)


def lower_elementwise(ctx, node) -> None:
    out = ctx.out()
    if out is None:
        return
    for a in list(node.args) + list(node.kwargs.values()):
        ref = ctx.tensor(a)
        if ref is None:
            continue
        if node.target in ("type_as", "to") and a is not arg(node, 0, "self"):
            ctx.touch(ref)  # only its dtype/device is read
            continue
        ctx.broadcast(out, ref)


def lower_shape_query(ctx, node) -> None:
    ref = ctx.tensor(arg(node, 0, "input")) if node.args else None
    if ref is not None:
        ctx.touch(ref)


def _fns(names):
    out = []
    for mod in (torch, F, torch.Tensor, torch.special):
        for n in names:
            f = getattr(mod, n, None)
            if callable(f) and mod is not torch.Tensor:
                out.append(f)
    return out


_OPS = (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
        operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.neg, operator.pos,
        operator.mod, operator.and_, operator.or_, operator.eq, operator.ne, operator.lt, operator.le,
        operator.gt, operator.ge, operator.invert)

_extra = []
try:
    import torchvision.ops as tvops
    _extra.append(tvops.stochastic_depth)
except Exception:  # torchvision is optional for the rule set
    pass

register("call_function", tuple(_fns(_UNARY_NAMES + _BINARY_NAMES)) + _OPS + tuple(_extra),
         "elementwise", lower_elementwise)
register("call_method", _UNARY_NAMES + _BINARY_NAMES + tuple(f"{n}_" for n in _BINARY_NAMES),
         "elementwise", lower_elementwise)
register("call_module", _ACT_MODULES, "elementwise", lower_elementwise)
try:
    from torchvision.ops import StochasticDepth
    register("call_module", (StochasticDepth,), "elementwise", lower_elementwise)
except Exception:
    pass
register("call_method", ("size", "dim", "numel", "get_device", "nelement", "ndimension", "is_contiguous"),
         "shape query", lower_shape_query)
register("call_function", (builtins.getattr, torch.numel, builtins.len), "shape query", lower_shape_query)
