"""The partial-tracing frontend: when ``symbolic_trace`` fails on a model, trace what can be traced.

One real forward (eval mode, ``no_grad``) records the arguments and outputs of every
submodule call. Starting from the root, a module whose ``forward`` symbolic-traces with its first call's
arguments (``*args``/``**kwargs`` as they were passed; a lone ``torch.nn`` layer as one ``call_module``)
and whose graph propagates shapes becomes one *part*; otherwise its children are tried (also those of a
container that is never called itself, such as a ``ModuleList`` looped over). Only maximal traceable
subtrees become parts; parameterless modules (activations, reshapes) become parts too when they trace.
A module that does not trace, with no untraced module inside and only lone layers traced in it (torchvision's
``FastRCNNPredictor`` asserts on ``list(x.shape[2:])``), is *recorded* instead: one real forward below Python
(:mod:`fxprune.frontend.autograd`) is its part, with the dims that a size literal of the recording fixes
pinned; ``graph.recorded`` lists these regions. Its own forward stays and prunes as the module target.

An input or output dim of a part is pinned, so the Python code around the parts, which fxprune cannot
rewrite, sees tensors of the original shapes, unless that code only hands the tensor on from one part to
another (same object in the recorded forward, no value read outside the parts): then the two interfaces are
*stitched* with identity couplings (:mod:`fxprune.frontend.stitch`) and their channels prune together.
A parameter that is also used outside its part's calls (tied weights, a parent reading
``self.child.weight``) is pinned.

:func:`analyze_partial` returns the same :class:`~fxprune.analyze.ChannelGraph` as every frontend, over
one IR that combines the parts (``groups`` with full model qualnames as keys and members, ``group_of``,
``expand``, ``sol.labels`` / ``ir.dims`` over one index space; ``gm`` is the model itself, for parameters by
full name). What is particular to parts lives in its :class:`PartsSource` (``graph.source``), which the
graph delegates to: plan keys by any full name, ``graph.parts`` / ``untraced`` / ``recorded`` /
``stitched``, and the two operations below.

``graph.apply`` prunes a deep copy of the model (never the input unless ``inplace=True``): each
pruned part's modules are edited in place (parameters sliced, attributes such as ``out_channels``
updated). A part whose graph constants had to change (``view`` sizes, split sizes, ...) is replaced by its
pruned GraphModule, which keeps the part's call signature and public attributes. The result is the
model's own class, not a GraphModule. ``graph.verify`` runs the model with every pruned part masked
(removed channels zeroed) and, when the outputs differ, names the first pruned part whose own output does.

Example:
    >>> import warnings, torch, fxprune
    >>> class Gate(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.block = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    ...     def forward(self, x):
    ...         return self.block(x) if x.sum() > 0 else -self.block(x)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> with warnings.catch_warnings(record=True):
    ...     graph = fxprune.analyze(Gate(), x)
    >>> graph.group_of("block.0.weight", 0).key
    'block.0.weight:0'
    >>> graph.frontend, [p.path for p in graph.parts], graph.untraced
    ('parts', ['block'], [('', 'symbolically traced variables cannot be used as inputs to control flow')])
    >>> small = graph.apply({"block.0.weight:0": [0, 1]}, None)
    >>> type(small).__name__, small.block[0].out_channels
    ('Gate', 6)
"""
from __future__ import annotations

import copy
import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
from torch.fx.graph import CodeGen
from torch.utils import _pytree as pytree

from ..errors import FallbackWarning, FxpruneError, PlanError, ShapeInfoError, TraceError
from ..plan import PrunePlan, make_key
from .recording import _Call, _Recording, _record
from .fx import propagate_shapes
from .source import GraphSource

if TYPE_CHECKING:
    from ..analyze import ChannelGraph

__all__ = ["Part", "PartsSource", "analyze_partial"]

# ------------------------------------------------------------------------------------------- tracing

_LITERALS = (type(None), bool, int, float, str)


def _literal(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_literal(x) for x in v)
    return type(v) in _LITERALS and (not isinstance(v, float) or np.isfinite(v))


def _holds_tensor(v: Any, depth: int = 0) -> bool:
    """A non-container object that carries tensors (e.g. an ImageList): tracing would bake them in."""
    if isinstance(v, torch.Tensor):
        return True
    if depth > 2 or isinstance(v, (*_LITERALS, torch.nn.Module)):
        return False
    attrs = getattr(v, "__dict__", None)
    return isinstance(attrs, dict) and any(_holds_tensor(x, depth + 1) for x in attrs.values())


class _CallCodeGen(CodeGen):
    """``forward`` keeps the traced module's own parameters (names, defaults) and picks the tensor
    leaves out of them, so the GraphModule is called exactly like the module it replaces."""

    def __init__(self, params: list[tuple[str, Any, str | None]], leaves: list[tuple[int, Any]],
                 out_spec: Any = None):
        super().__init__()
        self.out_spec = _spec_text(out_spec)  # the output's containers (OrderedDict, ...) as FX loses them
        self.params = params  # (name, inspect kind, default source or None)
        self.leaves = leaves  # (parameter index, pytree key path) per placeholder, in order

    def gen_fn_def(self, free_vars: list[str], maybe_return_annotation: str, *, expanded_def: bool = False) -> str:
        parts, star, slash = ["self"], False, False
        for name, kind, default in self.params:
            if kind == inspect.Parameter.VAR_POSITIONAL:
                parts.append(f"*{name}")
                star = True
                continue
            if kind == inspect.Parameter.VAR_KEYWORD:
                parts.append(f"**{name}")
                continue
            if kind != inspect.Parameter.POSITIONAL_ONLY and not slash and any(
                    k == inspect.Parameter.POSITIONAL_ONLY for _, k, _ in self.params):
                parts.append("/")
                slash = True
            if kind == inspect.Parameter.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(name if default is None else f"{name}={default}")
        lines = [f"def {self._func_name}({', '.join(parts)}){maybe_return_annotation}:"]
        names = [v.split(":")[0].split("=")[0].strip() for v in free_vars if v != "self"]
        for var, (i, path) in zip(names, self.leaves):
            lines.append(f"    {var} = {self.params[i][0]}{pytree.keystr(path)}")
        return "\n".join(lines)

    def generate_output(self, output_args: Any, *args: Any, **kwargs: Any) -> str:
        ret = super().generate_output(output_args, *args, **kwargs)
        if self.out_spec is None or not ret.startswith("return "):
            return ret
        return (f"return pytree.tree_unflatten(pytree.tree_leaves({ret[len('return '):]}), "
                f"pytree.treespec_loads({self.out_spec!r}))")

    def process_inputs(self, *inputs: Any) -> Any:
        out = []
        for i, path in self.leaves:
            v = inputs[i]
            for k in path:
                v = k.get(v)
            out.append(v)
        return out


class _PartTracer(torch.fx.Tracer):
    """Placeholders for the tensor leaves of the recorded arguments only; every other value is a constant."""

    def __init__(self, values: list[Any], names: list[str], kinds: list[Any] | None = None):
        super().__init__()
        self.record_stack_traces = True
        self.values, self.names = values, names
        self.kinds = kinds or [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(values)
        self.leaves: list[tuple[int, Any]] = []

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        flat, spec = pytree.tree_flatten_with_path(tuple(self.values))
        new, used = [], set(self.names)
        for path, leaf in flat:
            if isinstance(leaf, torch.Tensor):
                i, rest = path[0].idx, path[1:]
                label = "_".join(str(getattr(k, "idx", getattr(k, "key", getattr(k, "name", "")))) for k in rest)
                name = _ident(self.names[i] + (f"_{label}" if label else ""))
                if label:  # a leaf of a container argument: a fresh name
                    base, k = name, 0
                    while name in used:
                        k += 1
                        name = f"{base}_{k}"
                    used.add(name)
                new.append(self.create_proxy("placeholder", name, (), {}))
                self.leaves.append((i, tuple(rest)))
            else:
                new.append(leaf)
        values = pytree.tree_unflatten(new, spec)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, kind, v in zip(self.names, self.kinds, values):  # called the way it was recorded
            if kind == inspect.Parameter.VAR_POSITIONAL:
                args.extend(v)
            elif kind == inspect.Parameter.VAR_KEYWORD:
                kwargs.update(v)
            elif kind == inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = v
            else:
                args.append(v)

        def fn(root):
            return root_fn(root, *args, **kwargs)
        return fn, [self.root]


def _spec_text(spec: Any) -> str | None:
    """A pytree spec as text for generated code, or None for a plain tensor or an unserialisable spec."""
    if spec is None or spec.is_leaf():
        return None
    try:
        text = pytree.treespec_dumps(spec)
        pytree.treespec_loads(text)
    except Exception:  # noqa: BLE001 - e.g. a namedtuple without a serialized name: keep FX's containers
        return None
    return text


def _restore(out: Any, spec: Any) -> Any:
    """The masked interpreter's (immutable, plain-dict) output in the containers the module returned."""
    from ..verify import _plain

    if spec is None:
        return _plain(out)
    leaves = pytree.tree_leaves(out)
    return pytree.tree_unflatten(leaves, spec) if len(leaves) == spec.num_leaves else _plain(out)


def _ident(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s if s and not s[0].isdigit() else f"x_{s}"


def _bind(module: torch.nn.Module, call: _Call) -> tuple[list[Any], list[tuple[str, Any, str | None]]]:
    """Values of ``forward``'s parameters in order, and their (name, kind, default source)."""
    sig = inspect.signature(module.forward)
    bound = sig.bind(*call.args, **call.kwargs)
    given = set(bound.arguments)
    bound.apply_defaults()
    values, params = [], []
    for name, p in sig.parameters.items():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            # traced with the extra arguments it was called with (``varies`` refuses other structures)
            v = bound.arguments[name]
            if any(_holds_tensor(x) for x in pytree.tree_leaves(v) if not isinstance(x, torch.Tensor)):
                raise TraceError(f"argument *{name} holds a {type(v).__name__} holding tensors")
            values.append(v)
            params.append((name, p.kind, None))
            continue
        default = None
        if p.default is not inspect.Parameter.empty:
            if not _literal(p.default):
                if name not in given:
                    raise TraceError(f"parameter {name!r} has a default that cannot be written as a literal")
            else:
                default = repr(p.default)
        v = bound.arguments[name]
        if any(_holds_tensor(x) for x in pytree.tree_leaves(v) if not isinstance(x, torch.Tensor)):
            raise TraceError(f"argument {name!r} is a {type(v).__name__} holding tensors")
        values.append(v)
        params.append((name, p.kind, default))
    return values, params


@dataclass
class Part:
    """One traced submodule: its path in the model, module, analysed graph and example arguments."""

    path: str
    module: torch.nn.Module
    graph: Any  # ChannelGraph of this part alone (its IR, with the interface pins in ``boundary``)
    values: list[Any] = field(repr=False)
    out_spec: Any = field(repr=False, default=None)
    in_leaves: list[tuple[int, Any]] = field(repr=False, default_factory=list)  # placeholder -> argument path
    boundary: list[tuple[int, str]] = field(repr=False, default_factory=list)  # (dim id, reason) pins
    rel: str = ""  # a lone torch.nn layer is traced as the child ``rel`` of a holder: names start with it
    dim_offset: int = 0
    index_offset: int = 0
    recorded: bool = False  # recorded by the autograd frontend (a graph of one forward, not of the code)

    @property
    def prefix(self) -> str:
        """What turns a name in the part's graph into the full model name."""
        if not self.path:
            return ""
        return self.path[:len(self.path) - len(self.rel) + 1] if self.rel else self.path + "."

    @property
    def scope(self) -> str:
        """What makes a node name of the part's graph unique in the model (two lone layers of one parent
        share a prefix, not a scope)."""
        return self.path + "." if self.path else ""


class _Holder(torch.nn.Module):
    """Holds one torch.nn layer as its only child, so tracing records it as one ``call_module`` (whose rule
    updates the layer's own size attributes) instead of tracing into its forward (BatchNorm's input checks)."""

    def __init__(self, name: str, layer: torch.nn.Module):
        super().__init__()
        self.add_module(name, layer)
        self._child = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self._child)(*args, **kwargs)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def _shadow(layer: torch.nn.Module) -> torch.nn.Module:
    """The layer's parameters and attributes under a second object without hooks: verification replaces
    the layer's forward by the masked graph, which calls this one."""
    twin = copy.copy(layer)
    for name in _HOOK_DICTS:
        if hasattr(twin, name):
            setattr(twin, name, type(getattr(layer, name))())
    twin.__dict__.pop("forward", None)
    return twin


def _is_lone(path: str, module: torch.nn.Module) -> bool:
    return bool(path) and not module._modules and type(module).__module__.startswith("torch.nn.")


def _trace_part(path: str, module: torch.nn.Module, call: _Call, rec: _Recording, strict: bool) -> Part:
    from ..analyze import ChannelGraph
    from ..lower import lower_graph

    if call.varies:
        raise TraceError("it is called with differently structured arguments or other constants")
    if isinstance(module, torch.jit.ScriptModule):
        raise TraceError("it is a ScriptModule")
    values, params = _bind(module, call)
    tracer = _PartTracer(values, [p[0] for p in params], [p[1] for p in params])
    rel, root = "", module
    if _is_lone(path, module):
        child = path.rpartition(".")[2]
        rel, root = child + ".", _Holder(child, _shadow(module))
    try:
        graph = tracer.trace(root)
    except Exception as e:
        raise TraceError(f"{type(e).__name__}: {e}") from e
    graph.set_codegen(_CallCodeGen(params, tracer.leaves, call.out_spec))
    graph._tracer_cls = torch.fx.Tracer  # unpickling re-traces the generated code with a plain tracer
    gm = torch.fx.GraphModule(tracer.root, graph, type(module).__name__)
    propagate_shapes(gm, tuple(values))
    ctx, sol = lower_graph(gm, strict=strict)
    return Part(path, module, ChannelGraph(gm, ctx, sol), values, call.out_spec, list(tracer.leaves),
                _boundary_pins(gm, ctx, module, rec, rel), rel)


def _record_part(path: str, module: torch.nn.Module, call: _Call, rec: _Recording, strict: bool) -> Part:
    """A region no tracer takes, recorded below Python (:mod:`fxprune.frontend.autograd`) from its one call:
    its interface is pinned like a traced part's, and every dim whose pruning would change a size literal of
    the recording is pinned for good."""
    from ..analyze import ChannelGraph
    from ..lower import lower_graph
    from .autograd import literal_pins, record
    from .stitch import BOUNDARY_REASONS

    if len(call.every) != 1:
        raise TraceError(f"it is called {len(call.every)} times; one recorded forward stands for one call "
                         "only")
    values, params = _bind(module, call)
    gm = record(module, call.args, call.kwargs, path or f"the root {type(module).__name__}")
    ctx, sol = lower_graph(gm, strict=strict)
    leaves = gm.graph._codegen.leaves
    pins = _boundary_pins(gm, ctx, module, rec) + literal_pins(gm, ctx, BOUNDARY_REASONS)
    return Part(path, module, ChannelGraph(gm, ctx, sol), values, call.out_spec, list(leaves), pins, "",
                recorded=True)


def _recordable(path: str, untraced: list[tuple[str, str]], parts: list[Part]) -> bool:
    """An untraced module with no untraced module inside, whose traced parts are all lone ``torch.nn``
    layers or hold no state (``FastRCNNPredictor``: two Linear): recording it whole loses no code that a
    traced part could rewrite."""
    inner = path + "." if path else ""
    if any(p != path and p.startswith(inner) for p, _ in untraced):
        return False
    return all(p.rel or not (p.module._parameters or p.module._buffers or p.module._modules)
               for p in parts if p.path.startswith(inner))


def _boundary_pins(gm, ctx, module: torch.nn.Module, rec: _Recording, rel: str = "") -> list[tuple[int, str]]:
    """Pins of every dim of the part's interface (inputs, outputs, also tuples returned whole: the lowering
    pins most of them already, this makes it hold by construction; stitching may drop them) and of the
    parameters that are used outside this module's calls (tied weights, a parent reading
    ``self.child.weight``; these stay)."""
    from .stitch import IN_REASON, OUT_REASON

    dims: list[tuple[int, str]] = []

    def add(key: Any, ndim: int, why: str) -> None:
        for d in range(ndim):
            i = ctx.ir.index.get((key, d))
            if i is not None:
                dims.append((i, why))

    def visit(a, why):
        if isinstance(a, torch.fx.Node):
            val = a.meta.get("val")
            if a.op == "get_attr" and a.target in ctx.canonical and isinstance(val, torch.Tensor):
                add(("param", ctx.canonical[a.target]), val.ndim, why)
            for path, shape in _elem_paths(val):
                add(("value", a.name, path), len(shape), why)
        return a
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            visit(n, IN_REASON)
        elif n.op == "output":
            torch.fx.node.map_aggregate(n.args, lambda a: visit(a, OUT_REASON))
    used_outside = {i for i, mods in rec.inside.items() if id(module) not in mods}
    for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)):
        if id(t) in used_outside:
            add(("param", ctx.canonical.get(rel + name, rel + name)), t.ndim,
                f"{name} is also used outside this submodule's forward")
    return dims


def _elem_paths(val: Any, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    if isinstance(val, torch.Tensor):
        return [(path, tuple(val.shape))]
    if isinstance(val, (tuple, list)):
        return [r for i, v in enumerate(val) for r in _elem_paths(v, path + (i,))]
    return []


def analyze_partial(model: torch.nn.Module, example_inputs: Any, strict: bool = False,
                    cause: BaseException | None = None, frontend: str = "parts") -> ChannelGraph:
    """Analyse the maximal traceable submodules of ``model`` (see the module docstring).

    The work is bounded by construction, not by a clock: one forward pass, then every submodule is traced
    at most once (a module and its descendants are tried top-down, and a traced module's descendants never
    are), so the result never depends on how fast or loaded the machine is.

    An untraced module that :func:`_recordable` accepts is recorded by the autograd frontend instead
    (its traced layers are dropped for the recording: ``graph.recorded`` lists them). ``frontend="autograd"``
    records the whole model as one such part.

    Warns once (:class:`~fxprune.errors.FallbackWarning`) naming the modules whose Python ``forward``
    stays as it is. ``strict=True`` raises on ops without a rule, as :func:`fxprune.analyze` does.
    """
    rec = _record(model, example_inputs)
    if frontend == "autograd":
        call = rec.calls.get(id(model))
        if call is None:
            raise TraceError(f"{type(model).__name__} was not called by its own forward hooks")
        graph = _parts_graph(model, [_record_part("", model, call, rec, strict)], [], strict, rec)
        graph.frontend = "autograd"
        return graph
    parts: list[Part] = []
    untraced: list[tuple[str, str]] = []
    seen: set[int] = set()
    lower_warnings: list[str] = []

    def visit(path: str, m: torch.nn.Module) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        call = rec.calls.get(id(m))
        if next(m.parameters(), None) is None and next(m.buffers(), None) is None:
            # nothing to prune in it, but a traced activation or reshape between two parts lets
            # stitching carry their channels through it
            if path and call is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        parts.append(_trace_part(path, m, call, rec, False))
                except Exception:  # noqa: BLE001 - it stays Python, which is no loss here
                    pass
            return
        if call is None:  # never called itself, but its children may be (``for blk in self.blocks``)
            for name, c in m.named_children():
                visit(f"{path}.{name}" if path else name, c)
            return
        if path:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    parts.append(_trace_part(path, m, call, rec, strict))
                # rule warnings are summed up in the one fallback warning; tracer chatter is dropped
                lower_warnings.extend(f"{path}: {w.message}" for w in caught
                                      if str(w.message).startswith("fxprune"))
                return
            except FxpruneError as e:
                if strict and not isinstance(e, (TraceError, ShapeInfoError)):
                    raise
                untraced.append((path, _reason(e)))
            except Exception as e:  # noqa: BLE001 - an op or a rule failing on this submodule alone
                untraced.append((path, f"{type(e).__name__}: {e}"))
        else:
            untraced.append(("", _reason(cause) if cause is not None else "symbolic tracing failed"))
        for name, c in m.named_children():
            visit(f"{path}.{name}" if path else name, c)

    visit("", model)
    recorded: list[str] = []
    for path, why in list(untraced):
        m = model.get_submodule(path)
        call = rec.calls.get(id(m))
        if call is None or call.varies or not _recordable(path, untraced, parts):
            continue
        inner = path + "." if path else ""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                part = _record_part(path, m, call, rec, strict)
            lower_warnings.extend(f"{path or '<root>'}: {w.message}" for w in caught
                                  if str(w.message).startswith("fxprune"))
        except FxpruneError as e:
            if strict and not isinstance(e, (TraceError, ShapeInfoError)):
                raise
            untraced[untraced.index((path, why))] = (path, f"{why}; not recorded either: {_reason(e)}")
            continue
        parts[:] = [p for p in parts if not (p.path == path or p.path.startswith(inner))] + [part]
        untraced.remove((path, why))
        recorded.append(path)
    if recorded:  # parts in module order: their parameters keep that order
        order = _module_order(model)
        parts.sort(key=lambda p: order.get(p.path, 0))
    graph = _parts_graph(model, parts, untraced, strict, rec)
    graph.frontend = "parts"
    _warn(model, graph, lower_warnings)
    return graph


def _module_order(model: torch.nn.Module) -> dict[str, int]:
    return {p: i for i, (p, _) in enumerate(model.named_modules(remove_duplicate=False))}


def _reason(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e, TraceError) and e.__cause__ is not None else e
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text if len(text) < 120 else text[:117] + "..."


def _warn(model: torch.nn.Module, graph: ChannelGraph, lower_warnings: list[str]) -> None:
    def name(p: str) -> str:
        return p or f"<root {type(model).__name__}>"
    shown = "; ".join(f"{name(p)} ({why})" for p, why in graph.untraced[:8])
    more = f"; and {len(graph.untraced) - 8} more" if len(graph.untraced) > 8 else ""
    text = (f"fxprune: symbolic_trace failed on {type(model).__name__}; falling back to tracing its "
            "submodules. ")
    if graph.untraced:
        text += (f"Not traced: {shown}{more}. Constants in the Python forward code of these modules (sizes "
                 "in view/reshape, split sizes, channel counts) cannot be rewritten, so every input and "
                 "output of a traced submodule keeps its size, unless the code between two traced submodules "
                 f"only hands the tensor on ({graph.stitched} such interfaces stitched). ")
    if graph.recorded:
        text += ("Recorded below Python from one forward (the branches its values took; sizes that are "
                 f"literals there stay): {', '.join(name(p) for p in graph.recorded)}. ")
    traced = [p.path for p in graph.parts if not p.recorded and (p.module._parameters or p.module._modules)]
    lines = [text + f"Traced: {', '.join(traced) or 'nothing'}."]
    if lower_warnings:
        lines.append("Within the traced submodules: " + " | ".join(lower_warnings[:4]))
    warnings.warn(" ".join(lines), FallbackWarning, stacklevel=_user_level())


def _user_level() -> int:
    """``stacklevel`` of the first frame outside fxprune, so the warning points at the user's call."""
    from ..errors import user_stacklevel
    return user_stacklevel() + 1


# ------------------------------------------------------------------------------------------- graph

_KEEP_ATTRS = ("training", "forward")  # a pruned part's GraphModule keeps its own of these


class _Ctx:
    """What :class:`~fxprune.analyze.ChannelGraph` reads from a lowering context, over all parts."""

    def __init__(self, parts: list[Part], strict: bool = False):
        self.strict = strict
        self.stat_nodes: dict[str, str] = {}
        self.unknown: dict[str, list[str]] = {}
        self.canonical: dict[str, str] = {}
        self.first_use: dict[str, int] = {}
        self.param_rank: dict[str, int] = {}
        for i, part in enumerate(parts):  # parts in module order: their parameters keep that order
            ctx, pre, scope = part.graph.ctx, part.prefix, part.scope
            for k, v in ctx.canonical.items():
                self.canonical.setdefault(pre + k, pre + v)
            self.first_use.update({pre + k: (i << 16) + v for k, v in ctx.first_use.items()})
            self.param_rank.update({pre + k: (i << 16) + v for k, v in ctx.param_rank.items()})
            self.stat_nodes.update({scope + k: v for k, v in ctx.stat_nodes.items()})
            for k, v in ctx.unknown.items():
                self.unknown.setdefault(k, []).extend(scope + n for n in v)


class PartsSource(GraphSource):
    """The source (:mod:`fxprune.frontend.source`) of a :class:`~fxprune.analyze.ChannelGraph` over a model
    that only traces in parts: the graph's ``gm`` is the model itself (parameters by their full names),
    its IR combines every part's.

    ``parts`` are the traced submodules; ``untraced`` the modules whose Python forward could not be traced,
    with the reason; ``recorded`` the regions recorded below Python; ``stitched`` how many part interfaces
    were coupled across the Python between them (:mod:`fxprune.frontend.stitch`). Plan keys name a
    parameter by any of its full model names; :meth:`apply` prunes part by part, :meth:`verify` runs the
    model with every pruned part masked.
    """

    #: probes of a budget search build a pruned copy each (the parts' IR does not count the Python between)
    counts_from_ir = False

    def __init__(self, model: torch.nn.Module, parts: list[Part], untraced: list[tuple[str, str]],
                 stitched_pairs: list[Any]):
        super().__init__()
        self.model = model
        self.parts, self.untraced = parts, untraced
        self.recorded = [p.path for p in parts if p.recorded]  # regions recorded below Python
        self.stitched = len(stitched_pairs)
        # parts with a stitched interface: the Python between them sees the pruned widths
        self.stitched_paths = {parts[i].path for pa, _, pb, _, dims in stitched_pairs if dims
                               for i in (pa, pb)}
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(model.named_buffers(remove_duplicate=False))
        self._tensors = tensors
        self._owner: dict[int, tuple[Part, str]] = {}
        for part in parts:
            for name, t in list(part.module.named_parameters(remove_duplicate=False)) + list(
                    part.module.named_buffers(remove_duplicate=False)):
                self._owner.setdefault(id(t), (part, part.rel + name))

    def reasons(self, part: Part) -> dict[str, str]:
        """Interface pins named after the untraced forward that reads them (the nearest untraced ancestor)."""
        from .stitch import IN_REASON, OUT_REASON

        if not part.path:  # the whole model recorded: its interface is the model's
            return {}
        untraced, where = dict(self.untraced), part.path.rpartition(".")[0]
        while where not in untraced and where:
            where = where.rpartition(".")[0]
        why = untraced.get(where)
        owner = f"{where}'s" if where else f"the root {type(self.model).__name__}'s"
        tail = f"{owner} forward, which is not traced" + (f" ({why})" if why else "")
        given = f"input of traced submodule {part.path}, made by {tail}"
        read = f"output of traced submodule {part.path}, read by {tail}"
        return {"model input": given, IN_REASON: given, "model output": read, OUT_REASON: read}

    def resolve(self, name: str, dim: int) -> str:
        """The full name, in the IR, of parameter/buffer ``name`` (any of its names in the model): its
        owning part's; PlanError when the model has no such tensor or no traced part uses it."""
        key = make_key(name, dim)
        t = self._tensors.get(name)
        if t is None:
            close = difflib.get_close_matches(name, list(self._tensors), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PlanError(f"unknown key {key!r}: the model has no parameter or buffer {name!r}{hint}")
        hit = self._owner.get(id(t))
        if hit is None:
            untraced, where = dict(self.untraced), name.rpartition(".")[0]
            while where not in untraced and where:  # the nearest module whose forward stays Python
                where = where.rpartition(".")[0]
            why = untraced.get(where)
            what = where or f"the root {type(self.model).__name__}"
            raise PlanError(f"key {key!r}: {name} is not in a traced submodule"
                            + (f" ({what} could not be traced: {why})" if why else "")
                            + "; it cannot be pruned")
        part, rel = hit
        return part.prefix + rel

    def split(self, exp: Any) -> dict[str, Any]:
        """An expansion over the combined IR, per part: path -> that part's
        :class:`~fxprune.analyze.Expansion` in its own names (parts that lose nothing are left out)."""
        from ..analyze import Expansion

        out: dict[str, Any] = {}
        for part in self.parts:
            lo, n = part.index_offset, part.graph.ir.total
            mask = exp.mask[lo:lo + n]
            if not mask.any():
                continue
            pre = part.prefix
            sub = {k[len(pre):]: v for k, v in exp.plan.items() if k.startswith(pre)}
            out[part.path] = Expansion(exp.removed_labels, mask, sub)
        return out

    def apply(self, graph: Any, plan: Any, model: torch.nn.Module | None = None, example_inputs: Any = None,
              inplace: bool = False, output: str = "auto") -> torch.nn.Module:
        """Prune ``model`` (the analysed model when None; a deep copy unless ``inplace``) part by part; the
        result is the model's own class (see the module docstring): ``output="graph"`` is a PlanError."""
        from ..rewrite import apply_plan

        if output == "graph":
            what = type(self.model).__name__
            why = (f"was traced in parts ({len(self.untraced)} module(s) stay Python, e.g. "
                   f"{self.untraced[0][0] or '<root>'!r}: {self.untraced[0][1]})" if self.untraced
                   else "was recorded below Python")
            raise PlanError(f"output='graph' needs one graph of the whole model, but {what} {why}; "
                            "use output='auto' (its own class, pruned)")
        exp = graph.expand(plan)  # every entry is checked before anything changes
        per_part = self.split(exp)
        model = self.model if model is None else model
        target = model if inplace else copy.deepcopy(model)
        for part in self.parts:
            e = per_part.get(part.path)
            if e is None:  # nothing of this part is removed
                continue
            root = target.get_submodule(part.path)
            if part.recorded:  # the module target: its own forward stays, its tensors and attributes change
                from ..targets.module import apply_recorded
                apply_recorded(part.graph, e, root)
                continue
            if part.rel:  # a lone torch.nn layer: its call_module rule edits it in place, in its own class
                holder = _Holder(part.rel[:-1], root)
                apply_plan(part.graph, PrunePlan(e.plan), holder, inplace=True, exp=e)
                new = getattr(holder, part.rel[:-1])
                if new is not root:  # a rule replaced the layer (PrunedMultiheadAttention)
                    parent, _, child = part.path.rpartition(".")
                    setattr(target.get_submodule(parent) if parent else target, child, new)
                continue
            small = apply_plan(part.graph, PrunePlan(e.plan), root, inplace=True, exp=e)
            if small.code != part.graph.gm.code:  # graph constants changed: the Python forward is stale
                for k, v in root.__dict__.items():
                    if not k.startswith("_") and k not in _KEEP_ATTRS and k not in small.__dict__ \
                            and not callable(v):
                        setattr(small, k, v)
                small.training = root.training
                parent, _, child = part.path.rpartition(".")
                setattr(target.get_submodule(parent) if parent else target, child, small)
        target._fxprune_expanded = dict(exp.plan)
        return target

    def verify(self, graph: Any, small: torch.nn.Module, plan: Any, args: Any, atol: float, rtol: float,
               comps: Any = None) -> Any:
        """``small`` against the model run with every pruned part masked (removed channels zeroed; the
        inputs of compensated layers, ``comps``, filled with their means)."""
        from .parts_verify import _verify_parts

        return _verify_parts(self, graph, small, plan, args, atol, rtol, self._fills(comps or []))

    def _fills(self, comps: list[Any]) -> dict[str, dict[str, tuple]]:
        """Per part path, the mean fills (:func:`fxprune.compensate.input_fills`) of the compensated
        layers in it, named as in the part's graph."""
        import dataclasses

        from ..compensate import input_fills

        by_part: dict[str, list[Any]] = {}
        for c in comps:
            hit = self._owner.get(id(self._tensors.get(f"{c.name}.weight" if c.name else "weight")))
            if hit is None:
                raise PlanError(f"compensate: layer {c.name!r} is not in a traced submodule")
            part, rel = hit
            by_part.setdefault(part.path, []).append(dataclasses.replace(c, name=rel.rpartition(".")[0]))
        return {path: input_fills(next(p for p in self.parts if p.path == path).graph, cs)
                for path, cs in by_part.items()}

    def describe(self) -> str:
        """The parts story for ``repr(graph)``."""
        def n(k: int, what: str) -> str:
            return f"{k} {what}" + ("" if k == 1 else "s")
        recorded = f", {len(self.recorded)} recorded below Python" if self.recorded else ""
        parts, untraced = n(len(self.parts), "traced part"), n(len(self.untraced), "untraced module")
        return f"; {parts}{recorded}, {untraced}, {n(self.stitched, 'stitched interface')}"


def _parts_graph(model: torch.nn.Module, parts: list[Part], untraced: list[tuple[str, str]], strict: bool,
                 rec: _Recording | None) -> Any:
    """One :class:`~fxprune.analyze.ChannelGraph` over every part: their IRs combined and stitched."""
    from ..analyze import ChannelGraph
    from .stitch import Stitching, combine, stitch

    stitching = stitch(parts, rec) if rec is not None else Stitching()
    source = PartsSource(model, parts, untraced, stitching.pairs)
    ir, sol = combine(parts, stitching, [p.boundary for p in parts], [source.reasons(p) for p in parts])
    ctx = _Ctx(parts, strict)
    ctx.ir = ir
    return ChannelGraph(model, ctx, sol, source=source)
