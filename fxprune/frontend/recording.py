"""The recorded forward of the parts frontend: every submodule call's arguments and outputs, and who reads them.

:func:`_record` runs the model once (eval mode, ``no_grad``) and keeps, per module, the arguments and outputs of
its calls (:class:`_Call`, by object identity) and, through a ``TorchFunctionMode``, the module stack of every
*value* use of those tensors (shape reads do not count). :mod:`fxprune.frontend.partial` traces parts from these
calls; :mod:`fxprune.frontend.stitch` couples part interfaces from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..errors import FxpruneError, ShapeInfoError
from .export import call_model, split_inputs

@dataclass
class _Call:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spec: Any
    consts: list[Any]
    varies: bool = False
    out_spec: Any = None  # pytree spec of the first call's output
    # (args, kwargs, output) of every call: stitching parts needs which tensor objects went in and out
    every: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = field(default_factory=list)


def _split_leaves(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Any]]:
    leaves, spec = pytree.tree_flatten((args, kwargs))
    return spec, [(type(v), v.dtype, v.ndim) if isinstance(v, torch.Tensor) else v for v in leaves]


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


# Reading these says nothing about a tensor's values: a part boundary read only this way can be stitched.
_SHAPE_QUERIES = frozenset({"size", "dim", "ndimension", "numel", "__len__", "is_floating_point", "is_complex",
                            "element_size", "get_device", "is_contiguous", "data_ptr", "nelement"})
_SHAPE_ATTRS = frozenset({"shape", "ndim", "device", "dtype", "layout", "is_cuda", "requires_grad", "is_meta",
                          "is_sparse", "is_quantized", "names"})


def _shape_query(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _SHAPE_ATTRS
    return name in _SHAPE_QUERIES


class _UseTracker(TorchFunctionMode):
    """Records, for every parameter/buffer, the modules that were running at each of its uses; and for
    every watched tensor (a module call's input or output), the module stacks of its value uses."""

    def __init__(self, ids: set[int], stack: list[int], inside: dict[int, set[int]],
                 watch: dict[int, torch.Tensor], uses: dict[int, set[tuple[int, ...]]]):
        super().__init__()
        self.ids, self.stack, self.inside = ids, stack, inside
        self.watch, self.uses = watch, uses

    def _note(self, t: Any, value_use: bool) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if id(t) in self.ids:
            cur = set(self.stack)
            prev = self.inside.get(id(t))
            self.inside[id(t)] = cur if prev is None else prev & cur
        elif value_use and id(t) in self.watch:
            self.uses.setdefault(id(t), set()).add(tuple(self.stack))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        value_use = not _shape_query(func)
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, (list, tuple)):
                for b in a:
                    self._note(b, value_use)
            else:
                self._note(a, value_use)
        return func(*args, **kwargs)


@dataclass
class _Recording:
    calls: dict[int, _Call]
    inside: dict[int, set[int]]  # tensor id -> ids of modules running at every use of it
    # watched tensors (module call inputs and outputs, kept alive so ids stay unique) -> module stacks of
    # their value uses; ids of the model's own input and output tensors
    watch: dict[int, torch.Tensor] = field(default_factory=dict)
    uses: dict[int, set[tuple[int, ...]]] = field(default_factory=dict)
    model_io: set[int] = field(default_factory=set)


def _record(model: torch.nn.Module, example_inputs: Any) -> _Recording:
    """One real forward in eval mode: first-call arguments of every module, and where tensors are used."""
    calls: dict[int, _Call] = {}
    stack: list[int] = []
    inside: dict[int, set[int]] = {}
    watch: dict[int, torch.Tensor] = {}
    uses: dict[int, set[tuple[int, ...]]] = {}
    ids = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}

    def keep(tree: Any) -> None:
        for t in pytree.tree_leaves(tree):
            if isinstance(t, torch.Tensor) and id(t) not in ids:
                watch[id(t)] = t

    def pre(m, a, kw):
        stack.append(id(m))
        spec, consts = _split_leaves(a, kw)
        c = calls.get(id(m))
        if c is None:
            calls[id(m)] = _Call(a, dict(kw), spec, consts)
        elif not c.varies and (spec != c.spec or not all(_same(x, y) for x, y in zip(consts, c.consts))):
            c.varies = True
        keep((a, kw))

    def post(m, a, kw, out):
        c = calls.get(id(m))
        if c is not None:
            if c.out_spec is None:
                c.out_spec = pytree.tree_flatten(out)[1]
            c.every.append((a, dict(kw), out))
            keep(out)
        if stack and stack[-1] == id(m):
            stack.pop()

    handles = []
    flags = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            if isinstance(m, torch.jit.ScriptModule):
                continue  # scripted code takes no hooks; it is never traced either (see _trace_part)
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
        model.eval()
        with torch.no_grad(), _UseTracker(ids, stack, inside, watch, uses):
            out = call_model(model, example_inputs)  # positional and keyword inputs (fxprune.Inputs)
    except FxpruneError:
        raise
    except Exception as e:
        raise ShapeInfoError(f"the fallback's forward pass of {type(model).__name__} failed with the given "
                             f"example inputs: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        for m, t in flags.items():
            m.training = t
    leaves = pytree.tree_leaves((split_inputs(example_inputs), out))
    model_io = {id(t) for t in leaves if isinstance(t, torch.Tensor)}
    return _Recording(calls, inside, watch, uses, model_io)
