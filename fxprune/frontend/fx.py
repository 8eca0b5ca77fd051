"""The torch.fx frontend: ``symbolic_trace`` plus shape propagation on meta tensors.

Shapes come from running the graph on meta tensors (milliseconds, no real forward pass). Only when an op
has no meta kernel does it fall back to one real forward in eval mode under ``no_grad``.

Example:
    >>> import torch, fxprune
    >>> gm = fxprune.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))
    >>> [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "call_module"]
    [(1, 4, 6, 6)]
"""
from __future__ import annotations

import collections
import linecache
import logging
import operator
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils._pytree import tree_map

from ..errors import ShapeInfoError, TraceError, user_stacklevel
from ..record import record_of
from .shapes import function_shape, module_shape

__all__ = ["trace", "propagate_shapes", "normalize_inputs"]

log = logging.getLogger(__name__)


def normalize_inputs(example_inputs: Any) -> Tuple[Any, ...]:
    """A tuple of positional arguments: a tuple is taken as is, anything else is one argument."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    return (example_inputs,)


_UNINTERESTING: Optional[frozenset] = None


def _user_stack(frame: Any) -> Optional[str]:
    """The stack of ``frame`` from the outermost ``forward`` on, in FX's ``stack_trace`` format.

    FX's own recording (``record_stack_traces``) symbolizes and formats every frame of the interpreter
    stack for every node, a third of tracing time; here only the frames kept are formatted.
    """
    global _UNINTERESTING
    if _UNINTERESTING is None:
        from torch.fx.experimental.symbolic_shapes import uninteresting_files
        _UNINTERESTING = frozenset(uninteresting_files())
    frames: List[Any] = []
    keys: List[Tuple[Any, int]] = []
    first = -1
    while frame is not None:
        code = frame.f_code
        if code.co_name == "forward":
            first = len(keys)  # the outermost one wins
        frames.append(frame)
        keys.append((code, frame.f_lasti))  # the instruction: cheaper than f_lineno (a line-table scan)
        frame = frame.f_back
    if first < 0:  # no forward on the stack: the trace would not point at model code
        return None
    chain = tuple(keys[first::-1])
    text = _STACK_TEXT.get(chain)
    if text is None:  # blocks of one class repeat the same lines: each stack is formatted once
        if len(_STACK_TEXT) > 20000:  # bounded: a long session traces many models
            _STACK_TEXT.clear()
        text = "".join(_frame_text(f.f_code, f.f_lineno) for f in frames[first::-1]).strip()
        _STACK_TEXT[chain] = text
    return text or None


# (code, instruction) of every frame from the outermost forward in -> the stack trace ("": nothing to show)
_STACK_TEXT: Dict[Tuple[Tuple[Any, int], ...], str] = {}


def _frame_text(code: Any, lineno: int) -> str:
    if code.co_filename in _UNINTERESTING:
        return ""
    line = linecache.getline(code.co_filename, lineno).strip()
    return (f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n'
            + (f"    {line}\n" if line else ""))


class _PathDiverged(Exception):
    """The second-mode trace left the first trace's path (see :func:`_bind_training`)."""


class _Flag:
    """A module's ``training`` flag while it is traced: passed along as an argument it is recorded where it
    lands (:func:`_bind_training` binds those arguments without a second trace); any other use (``if``,
    ``not``, arithmetic, comparison) marks the trace as having computed with the flag, and the flag then
    acts as its bool."""

    __slots__ = ("value", "used")

    def __init__(self, value: bool, used: List[bool]) -> None:
        self.value, self.used = value, used

    def _use(self) -> bool:
        self.used[0] = True
        return self.value


def _flag_dunder(name: str) -> Any:
    def op(self: _Flag, *args: Any) -> Any:
        return getattr(self._use(), name)(*args)
    op.__name__ = name
    return op


for _name in ("__bool__", "__int__", "__index__", "__float__", "__eq__", "__ne__", "__lt__", "__le__",
              "__gt__", "__ge__", "__hash__", "__and__", "__rand__", "__or__", "__ror__", "__xor__",
              "__rxor__", "__invert__", "__neg__", "__pos__", "__abs__", "__add__", "__radd__", "__sub__",
              "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__floordiv__",
              "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__", "__repr__", "__str__",
              "__format__"):
    setattr(_Flag, _name, _flag_dunder(_name))


class _Tracer(torch.fx.Tracer):
    def __init__(self, stack_traces: bool = True, follow: Optional[List[torch.fx.Node]] = None) -> None:
        super().__init__()
        self.stack_traces = stack_traces  # the user's source line for error messages (see _user_stack)
        # Buffers read in a traced forward stay get_attr nodes (torchvision's FrozenBatchNorm2d computes its
        # scale from them): otherwise FX folds that arithmetic into constants that pruning cannot slice.
        self.proxy_buffer_attributes = True
        self._depth = 0
        self.returned: type = type(None)
        self._follow = follow  # nodes the trace must reproduce in order (op, target); stop at the first other

    def create_node(self, kind: str, target: Any, *args: Any, **kwargs: Any) -> torch.fx.Node:
        if self._follow is not None:
            i = len(self.graph.nodes)
            if i >= len(self._follow) or (self._follow[i].op, self._follow[i].target) != (kind, target):
                raise _PathDiverged(i)
        node = super().create_node(kind, target, *args, **kwargs)
        if self.stack_traces and not node.stack_trace:
            node.stack_trace = _user_stack(sys._getframe(1))
        return node

    def create_arg(self, a: Any) -> Any:
        # The last top-level argument FX converts is what forward returned: remember its type, since FX
        # turns an OrderedDict (torchvision segmentation models) into a plain dict.
        self._depth += 1
        try:
            if type(a) is _Flag:
                return a  # kept in the arguments: _bind_training turns it into a read of ``self.training``
            return super().create_arg(a)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.returned = type(a)


def _keep_ordered_output(graph: torch.fx.Graph, returned: type) -> None:
    """Return an OrderedDict again where forward did (one ``OrderedDict(...)`` node before the output)."""
    out = next(iter(reversed(graph.nodes)))
    if returned is collections.OrderedDict and out.op == "output" and isinstance(out.args[0], dict):
        with graph.inserting_before(out):
            od = graph.call_function(collections.OrderedDict, (out.args[0],))
        out.args = (od,)


def _dict_attrs(model: torch.nn.Module) -> Dict[int, Tuple[torch.nn.Module, Dict[str, Any]]]:
    return {id(m): (m, {k: dict(v) for k, v in vars(m).items() if type(v) is dict and not k.startswith("_")})
            for m in model.modules()}


def _drop_proxies(snapshot: Dict[int, Tuple[torch.nn.Module, Dict[str, Any]]]) -> None:
    """Undo what tracing cached in modules: a cache dict filled during tracing holds Proxies of a dead
    graph (timm's LeViT/EfficientFormer attention-bias cache), which the next trace would reuse."""
    for m, dicts in snapshot.values():
        for k, old in dicts.items():
            v = getattr(m, k, None)
            if type(v) is dict and any(isinstance(x, torch.fx.Proxy) for x in v.values()):
                v.clear()
                v.update(old)


def _trace_flagged(model: torch.nn.Module, snapshot: Dict[int, Tuple[torch.nn.Module, Dict[str, Any]]]
                   ) -> Tuple[_Tracer, torch.fx.Graph, Optional[List[bool]]]:
    """Trace ``model``; when a traced forward names ``training``, with every module's flag a :class:`_Flag`
    (the flags as they were afterwards). ``used`` (third) says whether the trace computed with a flag (it is
    ``[True]`` when the flagged trace failed and a plain one was made); None: no forward names
    ``training``."""
    if _reads_training(model):
        used = [False]
        flags = {m: m.training for m in model.modules()}
        try:
            for m, t in flags.items():
                m.__dict__["training"] = _Flag(t, used)
            tracer = _Tracer()
            return tracer, tracer.trace(model), used
        except Exception as e:  # e.g. a C function given the flag: trace again plainly, which decides
            log.debug("tracing with training flags failed (%s); tracing plainly", e)
        finally:
            for m, t in flags.items():
                m.__dict__["training"] = t
        _drop_proxies(snapshot)
        tracer = _Tracer()
        return tracer, tracer.trace(model), [True]  # bound by a second trace
    tracer = _Tracer()
    return tracer, tracer.trace(model), None


def _symbolic_trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    snapshot = _dict_attrs(model)
    try:
        tracer, graph, used = _trace_flagged(model, snapshot)
        _keep_ordered_output(graph, tracer.returned)
    except Exception as e:  # anything symbolic tracing raises: control flow, unsupported Python
        raise TraceError(
            f"torch.fx.symbolic_trace failed on {type(model).__name__}: {type(e).__name__}: {e}. "
            "Data-dependent control flow or Python built-ins on tensors cannot be traced symbolically; "
            "wrap the offending code in a leaf module or torch.fx.wrap it.") from e
    finally:
        _drop_proxies(snapshot)
    _bind_training(model, graph, used)
    gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    record_of(gm).constants = set(tracer.tensor_attrs.values())
    return gm


def _reads_training(model: torch.nn.Module) -> bool:
    """Whether a method of a module that tracing goes through (not a torch.nn leaf) names ``training``."""
    leaf = _Tracer().is_leaf_module
    classes = {type(m) for m in model.modules() if m is model or not leaf(m, "")}
    codes = {getattr(f, "__code__", None) for c in classes for k in c.__mro__
             if k.__module__ != "torch.nn.modules.module" for f in vars(k).values()}
    codes.discard(None)
    return any(_names_training(c) for c in codes)


_NAMES_TRAINING: Dict[Any, bool] = {}  # code object -> it or a function nested in it names ``training``


def _names_training(code: Any) -> bool:
    out = _NAMES_TRAINING.get(code)
    if out is None:
        out = "training" in code.co_names or any(
            _names_training(c) for c in code.co_consts if hasattr(c, "co_names"))  # nested functions, lambdas
        if len(_NAMES_TRAINING) > 50000:
            _NAMES_TRAINING.clear()
        _NAMES_TRAINING[code] = out
    return out


def _unflag(a: Any, bind: Any) -> Any:
    """``a`` (node arguments) with every :class:`_Flag` replaced by ``bind(flag)``, in argument order."""
    if type(a) is _Flag:
        return bind(a)
    if isinstance(a, (tuple, list)) and not hasattr(a, "_fields"):
        return type(a)(_unflag(x, bind) for x in a)
    if isinstance(a, dict):
        return type(a)((k, _unflag(v, bind)) for k, v in a.items())
    return a


def _has_flag(a: Any) -> bool:
    if type(a) is _Flag:
        return True
    if isinstance(a, (tuple, list)):
        return any(_has_flag(x) for x in a)
    if isinstance(a, dict):
        return any(_has_flag(x) for x in a.values())
    return False


def _bind_training(model: torch.nn.Module, graph: torch.fx.Graph, used: Optional[List[bool]]) -> None:
    """Arguments that read ``self.training`` read it at run time again (``F.dropout(x, p, self.training)``).

    Tracing turns ``self.training`` into the bool of the moment, so a model pruned in train mode would
    drop out forever. The flags were traced as :class:`_Flag` objects (``used``, see :func:`_trace_flagged`;
    None: no traced forward names ``training``): where they only landed in arguments, those arguments become
    ``self.training`` (or ``not self.training``) with no second trace. A trace that computed with a flag
    (``if self.training``) is traced once more with every flag flipped (set directly, no ``train()``
    override runs): bool arguments that flip with it are bound the same way, and a forward whose graph
    changes with the mode is reported once.
    """
    if used is None:
        return  # no traced forward mentions ``training``: nothing to bind (and no second trace to pay)
    flagged = [n for n in graph.nodes if _has_flag(n.args) or _has_flag(n.kwargs)]
    reads: Dict[bool, torch.fx.Node] = {}

    def flag(value: bool) -> torch.fx.Node:  # the node reading self.training (negated when value differs)
        if model.training not in reads:
            with graph.inserting_before(next(n for n in graph.nodes if n.op != "placeholder")):
                reads[model.training] = graph.get_attr("training")
        if value not in reads:
            with graph.inserting_after(reads[model.training]):
                # ``training == False``: TorchScript has no ``operator.not_``
                reads[value] = graph.call_function(operator.eq, (reads[model.training], False))
        return reads[value]

    if not used[0]:  # every flag went into arguments unchanged: bind them there, in graph order
        for n in flagged:
            n.args = _unflag(n.args, lambda f: flag(f.value))
            n.kwargs = _unflag(n.kwargs, lambda f: flag(f.value))
        return
    for n in flagged:
        n.args = _unflag(n.args, lambda f: f.value)
        n.kwargs = _unflag(n.kwargs, lambda f: f.value)
    flags = {m: m.training for m in model.modules()}
    nodes = list(graph.nodes)
    try:
        for m in flags:
            m.training = not flags[m]
        # no stack traces, and stopped where it leaves the first trace's path: only ops and arguments matter
        other = _Tracer(stack_traces=False, follow=nodes).trace(model)
    except Exception:  # the other mode does not trace, or takes another path: keep the graph, but say so
        other = None
    finally:
        for m, t in flags.items():
            m.training = t
    mode = "train" if model.training else "eval"
    others = list(other.nodes) if other is not None else []
    if len(nodes) != len(others) or any((a.op, a.target) != (b.op, b.target) for a, b in zip(nodes, others)):
        warnings.warn(f"fxprune: {type(model).__name__}.forward takes another path in train and eval mode; "
                      f"the traced graph, and a model pruned from it, follow {mode} mode",
                      stacklevel=user_stacklevel())
        return

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, bool) and isinstance(b, bool) and a != b:
            return flag(a)
        if isinstance(a, (tuple, list)) and type(a) is type(b) and len(a) == len(b):
            return type(a)(merge(x, y) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            return {k: merge(a[k], b[k]) for k in a}
        return a

    for a, b in zip(nodes, others):
        args, kwargs = merge(a.args, b.args), merge(a.kwargs, b.kwargs)
        if args != a.args or kwargs != a.kwargs:
            a.args, a.kwargs = args, kwargs


# Modules whose output has the input's shape: on meta tensors their kernels (decompositions) are the
# slowest part of shape propagation, and nothing is learned by running them.
_SAME_SHAPE = (
    torch.nn.modules.batchnorm._NormBase, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU, torch.nn.GELU,
    torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.Dropout,
    torch.nn.Identity, torch.nn.LeakyReLU,
)
# The same, matched by exact type (a subclass may reshape), with the checks their kernels would make.
_SAME_SHAPE_EXACT = {
    torch.nn.LayerNorm: lambda m, x: tuple(x.shape[x.ndim - len(m.normalized_shape):])
    == tuple(m.normalized_shape),
    torch.nn.GroupNorm: lambda m, x: x.ndim >= 2 and x.shape[1] == m.num_channels,
    **{t: lambda m, x: True for t in (
        torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout, torch.nn.ELU,
        torch.nn.SELU, torch.nn.CELU, torch.nn.Mish, torch.nn.Hardtanh, torch.nn.Softplus,
        torch.nn.LogSigmoid, torch.nn.Softsign, torch.nn.Tanhshrink)},
}


def _plain(v: Any) -> Any:
    """FX's immutable argument containers as plain ones (a wrapped helper may mutate a list argument)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if type(v) is tuple:
        return tuple(_plain(x) for x in v)
    return v


class _ShapeInterpreter(torch.fx.Interpreter):
    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.meta_mode:
            out = function_shape(target, args, kwargs)
            if out is not None:
                return out
        return super().call_function(target, _plain(args), _plain(kwargs))

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.meta_mode and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            m = self.submodule_cache.get(target)
            check = _SAME_SHAPE_EXACT.get(type(m))
            if isinstance(m, _SAME_SHAPE) or (check is not None and check(m, args[0])):
                return _to_meta(args[0])
            out = module_shape(m, args[0])
            if out is not None:
                return out
        return super().call_module(target, args, kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            self.failed_node = n
            raise e
        n.meta["val"] = result
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _tensor_meta(result)
        return result


_TENSOR_META: Dict[Tuple[Any, ...], Any] = {}


def _tensor_meta(t: torch.Tensor) -> Any:
    """``_extract_tensor_metadata(t)``, shared between plain meta tensors of the same shape, strides and
    dtype (an immutable record whose contiguity checks cost more than the op's shape)."""
    if type(t) is not torch.Tensor or not t.is_meta or t.requires_grad:
        return _extract_tensor_metadata(t)
    key = (tuple(t.shape), t.stride(), t.dtype)
    out = _TENSOR_META.get(key)
    if out is None:
        if len(_TENSOR_META) > 20000:
            _TENSOR_META.clear()
        out = _TENSOR_META[key] = _extract_tensor_metadata(t)
    return out


def _to_meta(x: Any) -> Any:
    """A fresh meta tensor like ``x`` (``torch.empty_like(x, device="meta")``)."""
    if isinstance(x, torch.Tensor):
        if x.is_meta and x.is_contiguous() and type(x) is torch.Tensor:
            # what empty_like gives a dense tensor, without its meta kernel (Python refs, ~100x slower)
            return torch.empty(x.shape, dtype=x.dtype, device="meta")
        return torch.empty_like(x, device="meta")
    return x


def propagate_shapes(gm: torch.fx.GraphModule, args: Tuple[Any, ...]) -> None:
    """Write ``meta["val"]`` (meta tensors) and ``meta["tensor_meta"]`` on every node of ``gm``.

    Raises ShapeInfoError naming the node that failed, e.g. for example inputs of the wrong shape.
    """
    state = {k: _to_meta(v) for k, v in gm.named_parameters(remove_duplicate=False)}
    state.update({k: _to_meta(v) for k, v in gm.named_buffers(remove_duplicate=False)})
    meta_args = tree_map(_to_meta, args)
    interp = _ShapeInterpreter(gm)
    interp.meta_mode = True
    interp.submodule_cache = dict(gm.named_modules())
    try:
        with torch.nn.utils.stateless._reparametrize_module(gm, state), torch.no_grad():
            interp.run(*meta_args)
        _materialize_meta(gm)
        return
    except Exception as e:  # no meta kernel, or a genuine shape error: retry for real to tell which
        log.debug("meta shape propagation failed (%s); retrying with one real forward", e)
    was_training = {m: m.training for m in gm.modules()}
    interp = _ShapeInterpreter(gm)
    interp.meta_mode = False
    try:
        gm.eval()
        with torch.no_grad():
            interp.run(*args)
    except Exception as e:
        node = getattr(interp, "failed_node", None)
        raise ShapeInfoError(
            f"shape propagation failed with the given example inputs: {type(e).__name__}: {e}", node) from e
    finally:
        for m, t in was_training.items():
            m.training = t
    _materialize_meta(gm)


def _materialize_meta(gm: torch.fx.GraphModule) -> None:
    # Real tensors from the fallback path are replaced by meta tensors so analysis never holds activations.
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        if v is not None and not (type(v) is torch.Tensor and v.is_meta):
            n.meta["val"] = tree_map(_to_meta, v)


def _specialise_defaults(gm: torch.fx.GraphModule, given: int) -> None:
    """Forward arguments past the ``given`` example inputs whose default is not a tensor (``attn_mask=None``,
    ``is_causal=False``) become that constant: a bool left as a graph input reaches TorchScript and the
    ONNX exporters as a tensor input (timm's ViT: ``sdpa(): argument 'is_causal' must be bool``)."""
    done = []
    for i, ph in enumerate(gm.graph.find_nodes(op="placeholder")):
        if i < given or not ph.args or isinstance(ph.args[0], torch.Tensor) or ph.target.startswith("*"):
            continue
        value = ph.args[0]
        for user in list(ph.users):
            user.args = torch.fx.node.map_arg(user.args, lambda a: value if a is ph else a)
            user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: value if a is ph else a)
        gm.graph.erase_node(ph)
        done.append(f"{ph.target}={value!r}")
    if done:
        gm.recompile()
        log.info("fxprune: %s.forward traced with %s (defaults specialised to constants)",
                 gm.__class__.__name__, ", ".join(done))


def trace(model: torch.nn.Module, example_inputs: Any) -> torch.fx.GraphModule:
    """Trace ``model`` into a GraphModule with shapes in ``node.meta["val"]`` / ``["tensor_meta"]``.

    A GraphModule is used as it is (not re-traced). Parameters are shared with ``model``.

    Example:
        >>> import torch, torchvision, fxprune
        >>> gm = fxprune.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> gm.graph.find_nodes(op="output")[0].args[0].meta["val"].shape
        torch.Size([1, 1000])
    """
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    args = normalize_inputs(example_inputs)
    gm = model if isinstance(model, torch.fx.GraphModule) else _symbolic_trace(model)
    if gm is not model:
        _specialise_defaults(gm, len(args))
    from ..lower import share_warnings  # rule-less ops are named once per user model
    share_warnings(gm, model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]  # placeholders without default values
    if len(args) < len(required) or len(args) > len(placeholders):
        raise ShapeInfoError(
            f"{type(model).__name__}.forward takes {len(required)}..{len(placeholders)} positional inputs "
            f"({', '.join(n.name for n in placeholders)}), example_inputs has {len(args)}")
    propagate_shapes(gm, args)
    return gm
