"""Raise an exported aten-level graph to the torch-level ops the rule registry speaks.

``torch.export`` records ATen overloads (``aten.linear.default``, ``aten.view.default``,
``aten.slice.Tensor``). Most of them are one torch-level call with the same arguments in the same order
(``torch.ops.aten.transpose.int(x, 0, 1)`` is ``torch.transpose(x, 0, 1)``); a few differ only in argument
order (``aten.embedding(weight, ids)`` is ``F.embedding(ids, weight)``) or spell an indexing expression
(``aten.slice.Tensor(x, 1, 0, 4)`` is ``x[:, 0:4]``). Raising each such node to its torch-level form lets
every op rule, constant rewrite and masked evaluation serve both frontends, and the pruned graph target is
ordinary torch code that TorchScript and both ONNX exporters take. An overload without an entry here is left
as it is: its rule (if one is registered for the overload) or the default-deny pin applies.

One small converter per op; a factory per family (same-signature functions, methods, dropped no-ops).

Example:
    >>> import torch
    >>> from fxprune.frontend.aten import RAISE
    >>> RAISE[torch.ops.aten.linear.default].__name__
    'same_as_linear'
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F

__all__ = ["RAISE", "FIRST_OF_TUPLE", "raise_graph"]

aten = torch.ops.aten

# A converter returns (op, target, args, kwargs) for the node's torch-level form, or None to keep it.
Converted = Optional[Tuple[str, Any, Tuple[Any, ...], Dict[str, Any]]]
RAISE: Dict[Any, Callable[[torch.fx.Node], Converted]] = {}

# Aten ops that do nothing to values: their users read their input directly.
DROP_NOOPS = (aten.alias.default, aten.lift_fresh_copy.default, aten.detach.default, aten.detach_.default)
# Aten ops that only check metadata and return nothing.
DROP_CHECKS = (aten._assert_tensor_metadata.default, aten._assert_scalar.default,
               aten.sym_constrain_range_for_size.default)


def _same(fn: Callable) -> Callable[[torch.fx.Node], Converted]:
    def conv(node: torch.fx.Node) -> Converted:
        return "call_function", fn, tuple(node.args), dict(node.kwargs)
    conv.__name__ = f"same_as_{getattr(fn, '__name__', fn)}"
    return conv


def _method(name: str) -> Callable[[torch.fx.Node], Converted]:
    def conv(node: torch.fx.Node) -> Converted:
        return "call_method", name, tuple(node.args), dict(node.kwargs)
    conv.__name__ = f"method_{name}"
    return conv


def _reg(fn: Callable[[torch.fx.Node], Converted], *overloads: Any) -> None:
    for o in overloads:
        if o is not None:
            RAISE[o] = fn


def _ov(packet: str, *names: str) -> Tuple[Any, ...]:
    """Overloads of ``aten.<packet>`` that exist in this torch build."""
    p = getattr(aten, packet, None)
    return tuple(getattr(p, n) for n in names if p is not None and hasattr(p, n))


# -- same arguments, torch-level function -------------------------------------------------------------
_SAME_FN = {
    F.linear: _ov("linear", "default"),
    torch.conv1d: _ov("conv1d", "default"), torch.conv2d: _ov("conv2d", "default"),
    torch.conv3d: _ov("conv3d", "default"),
    torch.conv_transpose1d: _ov("conv_transpose1d", "default"),
    torch.conv_transpose2d: _ov("conv_transpose2d", "input"),
    torch.conv_transpose3d: _ov("conv_transpose3d", "input"),
    F.scaled_dot_product_attention: _ov("scaled_dot_product_attention", "default"),
    torch.matmul: _ov("matmul", "default"), torch.bmm: _ov("bmm", "default"), torch.mm: _ov("mm", "default"),
    torch.addmm: _ov("addmm", "default"), torch.einsum: _ov("einsum", "default"),
    torch.reshape: _ov("reshape", "default"), torch.permute: _ov("permute", "default"),
    torch.transpose: _ov("transpose", "int"), torch.t: _ov("t", "default"),
    torch.unsqueeze: _ov("unsqueeze", "default"), torch.squeeze: _ov("squeeze", "dim", "dims", "default"),
    torch.flatten: _ov("flatten", "using_ints"), torch.unflatten: _ov("unflatten", "int"),
    torch.cat: _ov("cat", "default"), torch.stack: _ov("stack", "default"),
    torch.split: _ov("split", "Tensor") + _ov("split_with_sizes", "default"),
    torch.chunk: _ov("chunk", "default"), torch.unbind: _ov("unbind", "int"),
    torch.mean: _ov("mean", "dim", "default"), torch.sum: _ov("sum", "dim_IntList", "default"),
    torch.amax: _ov("amax", "default"), torch.softmax: _ov("softmax", "int"),
    torch.log_softmax: _ov("log_softmax", "int"),
    torch.add: _ov("add", "Tensor", "Scalar"), torch.sub: _ov("sub", "Tensor", "Scalar"),
    torch.mul: _ov("mul", "Tensor", "Scalar"), torch.div: _ov("div", "Tensor", "Scalar"),
    torch.pow: _ov("pow", "Tensor_Scalar", "Tensor_Tensor", "Scalar"),
    torch.rsqrt: _ov("rsqrt", "default"), torch.sqrt: _ov("sqrt", "default"), torch.neg: _ov("neg", "default"),
    torch.exp: _ov("exp", "default"), torch.tanh: _ov("tanh", "default"), torch.sigmoid: _ov("sigmoid", "default"),
    torch.cos: _ov("cos", "default"), torch.sin: _ov("sin", "default"), torch.abs: _ov("abs", "default"),
    torch.erf: _ov("erf", "default"), torch.relu: _ov("relu", "default"), torch.clone: _ov("clone", "default"),
    torch.maximum: _ov("maximum", "default"), torch.minimum: _ov("minimum", "default"),
    torch.clamp: _ov("clamp", "default"), torch.where: _ov("where", "self"),
    F.silu: _ov("silu", "default"), F.gelu: _ov("gelu", "default"), F.hardtanh: _ov("hardtanh", "default"),
    F.hardswish: _ov("hardswish", "default"), F.hardsigmoid: _ov("hardsigmoid", "default"),
    F.adaptive_avg_pool1d: _ov("adaptive_avg_pool1d", "default"),
    F.adaptive_avg_pool2d: _ov("adaptive_avg_pool2d", "default"),
    F.adaptive_avg_pool3d: _ov("adaptive_avg_pool3d", "default"),
    F.avg_pool2d: _ov("avg_pool2d", "default"), F.max_pool2d: _ov("max_pool2d", "default"),
    F.pad: _ov("pad", "default"), torch.constant_pad_nd: _ov("constant_pad_nd", "default"),
    torch.arange: _ov("arange", "default", "start", "start_step"), torch.zeros: _ov("zeros", "default"),
    torch.linspace: _ov("linspace", "default"),
    torch.ones: _ov("ones", "default"), torch.full: _ov("full", "default"),
    torch.zeros_like: _ov("zeros_like", "default"), torch.ones_like: _ov("ones_like", "default"),
    torch.tril: _ov("tril", "default"), torch.triu: _ov("triu", "default"),
}
for _fn, _ovs in _SAME_FN.items():
    _reg(_same(_fn), *_ovs)

if hasattr(F, "rms_norm"):
    _reg(_same(F.rms_norm), *_ov("rms_norm", "default"))

# -- same arguments, a Tensor method --------------------------------------------------------------------
for _name, _ovs in {"view": _ov("view", "default"), "expand": _ov("expand", "default"),
                    "contiguous": _ov("contiguous", "default"), "repeat": _ov("repeat", "default"),
                    "type_as": _ov("type_as", "default"), "reshape_as": _ov("reshape_as", "default"),
                    "view_as": _ov("view_as", "default"), "expand_as": _ov("expand_as", "default")}.items():
    _reg(_method(_name), *_ovs)


def _first(fn: Callable, n: int) -> Callable[[torch.fx.Node], Converted]:
    """``fn`` with the aten op's first ``n`` positional arguments (the rest are backend flags)."""
    def conv(node: torch.fx.Node) -> Converted:
        return "call_function", fn, tuple(node.args[:n]), dict(node.kwargs)
    conv.__name__ = f"first_{n}_of_{fn.__name__}"
    return conv


# aten.group_norm carries a sixth argument (cudnn_enabled) that F.group_norm does not take
_reg(_first(F.group_norm, 5), *_ov("group_norm", "default"))


def _dropout(node: torch.fx.Node) -> Converted:
    x, p, train = (list(node.args) + [None, None])[:3]
    return "call_function", F.dropout, (x,), {"p": p, "training": bool(train)}


def _embedding(node: torch.fx.Node) -> Converted:
    weight, ids = node.args[:2]
    padding_idx = node.args[2] if len(node.args) > 2 else node.kwargs.get("padding_idx", -1)
    return "call_function", F.embedding, (ids, weight), \
        ({"padding_idx": padding_idx} if padding_idx not in (None, -1) else {})


def _batch_norm(node: torch.fx.Node) -> Converted:
    # aten: (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    x, w, b, rm, rv, training, momentum, eps = (list(node.args) + [None] * 8)[:8]
    return "call_function", F.batch_norm, (x, rm, rv, w, b, bool(training), momentum, eps), {}


def _instance_norm(node: torch.fx.Node) -> Converted:
    # aten: (input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn_enabled)
    x, w, b, rm, rv, use_stats, momentum, eps = (list(node.args) + [None] * 8)[:8]
    return "call_function", F.instance_norm, (x, rm, rv, w, b, bool(use_stats), momentum, eps), {}


_MODES = {0: "bilinear", 1: "nearest", 2: "bicubic"}
_PADDING = {0: "zeros", 1: "border", 2: "reflection"}


def _grid_sampler(node: torch.fx.Node) -> Converted:
    x, grid, mode, padding, align = node.args[:5]
    return "call_function", F.grid_sample, (x, grid), {
        "mode": _MODES[mode], "padding_mode": _PADDING[padding], "align_corners": bool(align)}


def _upsample(mode: str) -> Callable[[torch.fx.Node], Converted]:
    def conv(node: torch.fx.Node) -> Converted:
        a = list(node.args) + [None] * 4
        if mode == "nearest":  # (input, output_size, scale_factors)
            x, size, scale, align = a[0], a[1], a[2], None
        else:  # (input, output_size, align_corners, scale_factors)
            x, size, align, scale = a[0], a[1], a[2], a[3]
        kw = {"size": list(size) if size is not None else None, "mode": mode}
        if size is None:
            kw["scale_factor"] = list(scale) if scale is not None else None
        if align is not None:
            kw["align_corners"] = bool(align)
        return "call_function", F.interpolate, (x,), kw
    conv.__name__ = f"upsample_{mode}"
    return conv


def _slice(node: torch.fx.Node) -> Converted:
    x = node.args[0]
    given = list(node.args[1:])
    dim, start, end, step = given + [0, None, None, 1][len(given):]
    if dim < 0:
        return None
    idx = (slice(None),) * int(dim) + (slice(start, end, None if step == 1 else step),)
    return "call_function", operator.getitem, (x, idx), {}


def _select(node: torch.fx.Node) -> Converted:
    x, dim, i = node.args[:3]
    if dim < 0:
        return None
    return "call_function", operator.getitem, (x, (slice(None),) * int(dim) + (i,)), {}


def _to(node: torch.fx.Node) -> Converted:
    """``aten.to.*`` and ``aten._to_copy``: keep the dtype conversion, as ``x.to(dtype)``."""
    dtype = node.kwargs.get("dtype")
    for a in node.args[1:]:
        if isinstance(a, torch.dtype):
            dtype = a
    return "call_method", "to", (node.args[0],) + ((dtype,) if dtype is not None else ()), {}


_reg(_dropout, *_ov("dropout", "default"))
_reg(_first(F.layer_norm, 5), *_ov("layer_norm", "default"))


def _meshgrid(node: torch.fx.Node) -> Converted:
    tensors = node.args[0]
    indexing = node.args[1] if len(node.args) > 1 else node.kwargs.get("indexing", "ij")
    return "call_function", torch.meshgrid, tuple(tensors), {"indexing": indexing}


_reg(_meshgrid, *_ov("meshgrid", "indexing", "default"))  # drops aten's cudnn_enable flag
_reg(_same(torch.full_like), *_ov("full_like", "default"))
for _name in ("add_", "sub_", "mul_", "div_", "clamp_", "masked_fill_"):
    _reg(_method(_name), *_ov(_name, "Tensor", "Scalar", "default"))
_reg(_instance_norm, *_ov("instance_norm", "default"))
_reg(_grid_sampler, *_ov("grid_sampler", "default"))
_reg(_upsample("bilinear"), *_ov("upsample_bilinear2d", "vec"))
_reg(_upsample("nearest"), *_ov("upsample_nearest2d", "vec"))
_reg(_upsample("bicubic"), *_ov("upsample_bicubic2d", "vec"))
# 1-d and 3-d forms (NaFlexViT resizes its position table with linear 1-d interpolation)
_reg(_upsample("linear"), *_ov("upsample_linear1d", "vec"))
_reg(_upsample("trilinear"), *_ov("upsample_trilinear3d", "vec"))
_reg(_upsample("nearest"), *_ov("upsample_nearest1d", "vec"), *_ov("upsample_nearest3d", "vec"))
_reg(_same(operator.and_), *_ov("__and__", "Tensor", "Scalar"))
_reg(_same(operator.or_), *_ov("__or__", "Tensor", "Scalar"))
for _name in ("new_ones", "new_zeros", "new_full", "new_empty"):
    _reg(_method(_name), *_ov(_name, "default"))

# Families whose torch-level namesake (``torch.<op>``) takes the aten positional arguments unchanged.
_NAMESAKE_RULES = ("elementwise", "reduction", "softmax-like")


def _namesake(node: torch.fx.Node) -> Converted:
    """``aten.<op>.<overload>`` -> ``torch.<op>`` when that is an element-wise op or a reduction with a
    rule (``relu_``, ``eq``, ``rsub``, ``amax``...); anything else stays an aten node."""
    from ..registry import lookup
    fn = getattr(torch, getattr(node.target, "_opname", ""), None)
    rule = lookup("call_function", fn) if callable(fn) else None
    if rule is None or rule.name not in _NAMESAKE_RULES:
        return None
    return "call_function", fn, tuple(node.args), dict(node.kwargs)
_reg(_embedding, *_ov("embedding", "default"))
_reg(_batch_norm, *_ov("batch_norm", "default"))
_reg(_slice, *_ov("slice", "Tensor"))
_reg(_select, *_ov("select", "int"))
_reg(_to, *_ov("to", "dtype", "dtype_layout", "device"), *_ov("_to_copy", "default"))


# -- what a dispatch-level recording adds (the autograd frontend): ops after autograd's decompositions ----


def _convolution(node: torch.fx.Node) -> Converted:
    # aten: (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, w, b, stride, padding, dilation, transposed, out_pad, groups = node.args[:9]
    rank = len(stride)
    if rank not in (1, 2, 3):
        return None
    if transposed:
        fn = (torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)[rank - 1]
        return "call_function", fn, (x, w, b, stride, padding, out_pad, groups, dilation), {}
    fn = (torch.conv1d, torch.conv2d, torch.conv3d)[rank - 1]
    return "call_function", fn, (x, w, b, stride, padding, dilation, groups), {}


def _native_batch_norm(node: torch.fx.Node) -> Converted:
    # aten: (input, weight, bias, running_mean, running_var, training, momentum, eps) -> (out, mean, invstd)
    x, w, b, rm, rv, training, momentum, eps = node.args[:8]
    return "call_function", F.batch_norm, (x, rm, rv, w, b, bool(training), momentum, eps), {}


def _batch_norm_no_training(node: torch.fx.Node) -> Converted:
    # aten: (input, weight, bias, running_mean, running_var, momentum, eps) -> (out, mean, invstd)
    x, w, b, rm, rv, momentum, eps = node.args[:7]
    return "call_function", F.batch_norm, (x, rm, rv, w, b, False, momentum, eps), {}


def _native_layer_norm(node: torch.fx.Node) -> Converted:
    x, shape, w, b, eps = node.args[:5]  # -> (out, mean, rstd)
    return "call_function", F.layer_norm, (x, shape, w, b, eps), {}


def _native_group_norm(node: torch.fx.Node) -> Converted:
    x, w, b, _n, _c, _hw, groups, eps = node.args[:8]  # N, C, HxW are the input's sizes: F reads them itself
    return "call_function", F.group_norm, (x, groups, w, b, eps), {}


def _max_pool_with_indices(fn: Callable) -> Callable[[torch.fx.Node], Converted]:
    def conv(node: torch.fx.Node) -> Converted:
        return "call_function", fn, tuple(node.args), {}  # same arguments; the indices are not read
    conv.__name__ = f"values_of_{fn.__name__}"
    return conv


def _softmax(fn: Callable) -> Callable[[torch.fx.Node], Converted]:
    def conv(node: torch.fx.Node) -> Converted:
        return "call_function", fn, tuple(node.args[:2]), {}  # drops half_to_float
    conv.__name__ = f"{fn.__name__}_of_aten"
    return conv


# Converters of ops that return a tuple whose first element is the result (the rest are saved statistics
# or pooling indices): raised only when nothing but ``getitem(node, 0)`` reads the node.
FIRST_OF_TUPLE: Dict[Any, Callable[[torch.fx.Node], Converted]] = {}
for _fn, _ovs in {_native_batch_norm: _ov("native_batch_norm", "default")
                  + _ov("_native_batch_norm_legit", "default"),
                  _batch_norm_no_training: _ov("_native_batch_norm_legit_no_training", "default"),
                  _native_layer_norm: _ov("native_layer_norm", "default"),
                  _native_group_norm: _ov("native_group_norm", "default"),
                  _max_pool_with_indices(F.max_pool2d): _ov("max_pool2d_with_indices", "default"),
                  _max_pool_with_indices(F.max_pool3d): _ov("max_pool3d_with_indices", "default")}.items():
    for _o in _ovs:
        FIRST_OF_TUPLE[_o] = _fn
_reg(_convolution, *_ov("convolution", "default"))
_reg(_method("view"), *_ov("_unsafe_view", "default"))
_reg(_softmax(torch.softmax), *_ov("_softmax", "default"))
_reg(_softmax(torch.log_softmax), *_ov("_log_softmax", "default"))
_reg(_same(F.adaptive_avg_pool2d), *_ov("_adaptive_avg_pool2d", "default"))
_reg(_same(F.adaptive_avg_pool3d), *_ov("_adaptive_avg_pool3d", "default"))
DROP_NOOPS = DROP_NOOPS + _ov("lift_fresh", "default")


def _raise_first_of_tuple(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    """Replace ``node`` (a tuple-returning op read only through ``getitem(node, 0)``) by its torch-level
    form."""
    users = list(node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0 for u in users):
        return False
    op, target, args, kwargs = FIRST_OF_TUPLE[node.target](node)  # type: ignore[misc]
    with graph.inserting_before(node):
        repl = graph.create_node(op, target, args, kwargs, name=node.name + "_t")
    repl.meta = dict(node.meta)
    val = node.meta.get("val")
    repl.meta["val"] = val[0] if isinstance(val, (tuple, list)) else val
    for u in users:
        u.replace_all_uses_with(repl)
        graph.erase_node(u)
    graph.erase_node(node)
    return True


def raise_graph(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``gm``'s aten nodes to their torch-level forms in place; return how many changed.

    ``meta["val"]`` (shapes) and ``meta["stack_trace"]`` of every node are kept.
    """
    graph, changed = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in DROP_CHECKS and not node.users:
            graph.erase_node(node)
            changed += 1
            continue
        if node.target in DROP_NOOPS and node.args and isinstance(node.args[0], torch.fx.Node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed += 1
            continue
        if node.target in FIRST_OF_TUPLE:
            changed += _raise_first_of_tuple(graph, node)
            continue
        conv = RAISE.get(node.target)
        if conv is None and isinstance(node.target, torch._ops.OpOverload):
            conv = _namesake
        new = conv(node) if conv is not None else None
        if new is None:
            continue
        op, target, args, kwargs = new
        with graph.inserting_before(node):
            repl = graph.create_node(op, target, args, kwargs, name=node.name + "_t")
        repl.meta = dict(node.meta)
        node.replace_all_uses_with(repl)
        graph.erase_node(node)
        changed += 1
    graph.lint()
    return changed
