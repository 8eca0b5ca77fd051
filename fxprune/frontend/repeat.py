"""Export a model of many identical layers once with three of them, and repeat the last one's graph.

A 7B decoder has 28-32 layers that differ only in their parameters' names: ``torch.export`` spends most of
its time running each layer's Python under proxy tracing. When the model holds a ``ModuleList`` of at least
four layers that are provably alike, the export frontend exports the model with the list cut to its first
three layers, checks that layer 2's nodes match layer 1's one for one (same ops, same constants, same
shapes, inputs read from the layer before at the same positions, the shared inputs the same nodes), and
writes layer 2's nodes again for every later layer, reading that layer's own parameters. The result is the
graph the full export gives: the same nodes in the same order with the same names, targets, shapes and
``nn_module_stack`` (tests/test_repeat.py compares the two node by node, and their analyses).

"Alike" means, for every layer in the list: the same classes and submodule tree, parameters and buffers of
the same names, shapes and dtypes (each its own tensor, not shared with another layer or the rest of the
model), the same plain attributes except an index (``layer_idx``, ``layer_id``... equal to the layer's
position plus one constant), no hooks, and, for a model with a ``config``, no per-layer list in it
(``layer_types``) with different entries and a ``num_hidden_layers`` equal to the list's length. What these
checks cannot see: a forward that branches on a layer's position some other way than through the layers'
attributes or the config (the cut list is three long: a branch on "the last layer" is seen, as layer 2 is
then last), or whose arithmetic reads the list's length. Anything else (sliding-window layers, per-layer
widths of a pruned model, a layer of another class, a failing cut export, a layer graph that does not
repeat) exports the whole model, with one ``logging`` message saying why. Set :data:`ENABLED` to ``False``
to always export the whole model.

Example:
    >>> import torch
    >>> from fxprune.frontend.repeat import repeated_layers
    >>> class Stack(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(5))
    ...     def forward(self, x):
    ...         for b in self.blocks:
    ...             x = torch.relu(b(x))
    ...         return x
    >>> repeated_layers(Stack())[0]
    'blocks'
    >>> import fxprune
    >>> gm = fxprune.trace(Stack(), fxprune.Inputs(torch.randn(2, 8)), frontend="export")
    >>> [n.name for n in gm.graph.nodes if n.op == "call_function"][-2:]
    ['linear_4_t', 'relu_4_t']
"""
from __future__ import annotations

import functools
import logging
import math
import re
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.fx

from ..errors import user_stacklevel

__all__ = ["ENABLED", "KEEP", "repeated_layers", "export_repeated"]

log = logging.getLogger(__name__)

#: ``False``: the export frontend always exports the whole model
ENABLED = True
#: layers exported (the first ``KEEP``); the last of them is the one repeated
KEEP = 3
#: plain int attributes that may differ between layers when they hold the layer's position (plus a constant)
INDEX_ATTRS = frozenset({"layer_idx", "layer_id", "layer_index", "layer_number", "block_idx", "idx"})

# nn.Module's own bookkeeping, compared (hooks) or skipped (the rest) apart from plain attributes
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")
_SKIP = frozenset(("_parameters", "_buffers", "_modules", "training") + _HOOKS)
_SUFFIX = re.compile(r"^(.*)_(\d+)$")


class _NotRepeated(Exception):
    """Why the fast path does not apply (logged; the whole model is exported)."""


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or type(a) is not type(b):
        return False
    if isinstance(a, functools.partial):  # an activation made per layer: gelu(approximate="tanh")
        return (a.func is b.func and _same_value(a.args, b.args) and list(a.keywords) == list(b.keywords)
                and all(_same_value(a.keywords[k], b.keywords[k]) for k in a.keywords))
    try:
        return bool(a == b)
    except Exception:  # a value whose == is not a plain truth value: treat as different
        return False


def _layer_signature(layer: torch.nn.Module, k: int) -> Tuple[list, Dict[str, int]]:
    """What must be equal between layers, and the index attributes' offsets from ``k``."""
    sig: list = []
    offsets: Dict[str, int] = {}
    for qual, mod in layer.named_modules(remove_duplicate=False):
        if any(getattr(mod, h, None) for h in _HOOKS):
            raise _NotRepeated(f"layer {k} has hooks on {qual or 'itself'}")
        attrs = []
        for name, v in mod.__dict__.items():
            if name in _SKIP:
                continue
            if name in INDEX_ATTRS and type(v) is int:
                offsets[f"{qual}.{name}"] = v - k
                continue
            if isinstance(v, torch.Tensor):
                raise _NotRepeated(f"layer {k} holds a plain tensor attribute {qual}.{name}")
            attrs.append((name, v))
        sig.append((qual, type(mod), attrs, sorted(mod._non_persistent_buffers_set),
                    [(n, tuple(p.shape), p.dtype, p.requires_grad, p.device.type, type(p))
                     for n, p in mod._parameters.items() if p is not None],
                    [(n, tuple(b.shape), b.dtype, b.device.type)
                     for n, b in mod._buffers.items() if b is not None]))
    return sig, offsets


def _same_signature(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (qa, ta, aa, na, pa, ba), (qb, tb, ab, nb, pb, bb) in zip(a, b):
        if (qa, ta, na, pa, ba) != (qb, tb, nb, pb, bb) or [n for n, _ in aa] != [n for n, _ in ab]:
            return False
        if not all(_same_value(x, y) for (_, x), (_, y) in zip(aa, ab)):
            return False
    return True


def _tensors(m: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    return (list(m.named_parameters(remove_duplicate=False))
            + list(m.named_buffers(remove_duplicate=False)))  # type: ignore[call-arg]


def _check_layers(model: torch.nn.Module, path: str, layers: torch.nn.ModuleList) -> None:
    """Raise :class:`_NotRepeated` unless every layer of ``layers`` is alike (see the module docstring)."""
    children = list(layers)
    if len({id(c) for c in children}) != len(children):
        raise _NotRepeated(f"{path} holds one module more than once")
    first, offsets = _layer_signature(children[0], 0)
    for k, c in enumerate(children[1:], 1):
        sig, off = _layer_signature(c, k)
        if type(c) is not type(children[0]) or not _same_signature(first, sig):
            raise _NotRepeated(f"{path}.{k} differs from {path}.0 (class, parameters, buffers or attributes)")
        if off != offsets:
            raise _NotRepeated(f"{path}.{k}'s index attributes are not its position plus a constant")
    owners: Dict[int, int] = {}
    for _, t in _tensors(model):
        owners[id(t)] = owners.get(id(t), 0) + 1
    for c in children:
        for _, t in _tensors(c):
            if owners[id(t)] != 1:
                raise _NotRepeated(f"a tensor of {path} is shared (tied) with another module")
    cfg = getattr(model, "config", None)
    for name, v in (vars(cfg).items() if cfg is not None and hasattr(cfg, "__dict__") else ()):
        if isinstance(v, (list, tuple)) and len(v) == len(children) and any(x != v[0] for x in v):
            raise _NotRepeated(f"the config's {name} differs between layers")
    depth = getattr(cfg, "num_hidden_layers", None)
    if isinstance(depth, int) and depth != len(children):  # a forward may run config-many layers, not all
        raise _NotRepeated(f"the config says {depth} layers, {path} holds {len(children)}")


def repeated_layers(model: torch.nn.Module) -> Optional[Tuple[str, torch.nn.ModuleList]]:
    """``(path, list)``: the ``ModuleList`` of at least ``KEEP + 1`` alike layers holding the most
    parameters, or ``None`` (logged when a list was long enough but its layers are not alike)."""
    best: Optional[Tuple[int, str, torch.nn.ModuleList]] = None
    for path, mod in model.named_modules():
        if not path or not isinstance(mod, torch.nn.ModuleList) or len(mod) <= KEEP:
            continue
        try:
            _check_layers(model, path, mod)
        except _NotRepeated as e:
            log.info("fxprune: exporting the whole of %s: %s", type(model).__name__, e)
            continue
        size = sum(p.numel() for p in mod.parameters())
        if best is None or size > best[0]:
            best = (size, path, mod)
    return None if best is None else (best[1], best[2])


# -- the cut graph --------------------------------------------------------------------------------


def _tagger(path: str) -> Callable[[torch.fx.Node], Optional[int]]:
    head = path + "."

    def layer_of(node: torch.fx.Node) -> Optional[int]:
        if node.op == "get_attr":
            if isinstance(node.target, str) and node.target.startswith(head):
                seg = node.target[len(head):].split(".", 1)[0]
                return int(seg) if seg.isdigit() else None
            return None
        if node.op == "call_module" and node.target == "_guards_fn":  # the exporter's input check: dropped
            return None
        for p, _ in (node.meta.get("nn_module_stack") or {}).values():
            if p.startswith(head):
                seg = p[len(head):].split(".", 1)[0]
                return int(seg) if seg.isdigit() else None
        return None
    return layer_of


def _renamer(path: str, old: int, new: int) -> Callable[[str], str]:
    pat = re.compile(rf"(^|\.|L__self__){re.escape(path)}\.{old}(?=\.|$)")
    return lambda s: pat.sub(lambda m: f"{m.group(1)}{path}.{new}", s)


def _attr_name(target: str) -> str:
    """The name fx gives a ``get_attr`` of ``target`` (snake case, illegal characters as ``_``); checked on
    the exported layers before it is used for the repeated ones."""
    return re.sub(r"[^0-9a-zA-Z_]+", "_", re.sub(r"(?<=[a-z])([A-Z])", r"_\1", target).lower())


def _val_sig(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return (tuple(v.shape), v.dtype, tuple(v.stride()), v.device.type)
    if isinstance(v, (list, tuple)):
        return tuple(_val_sig(x) for x in v)
    return v


class _Cut:
    """The three-layer graph, split into layers and checked to repeat."""

    def __init__(self, graph: torch.fx.Graph, path: str):
        self.graph, self.path = graph, path
        layer_of = _tagger(path)
        self.nodes = list(graph.nodes)
        self.tag = {n: layer_of(n) for n in self.nodes}
        bad = {t for t in self.tag.values() if t is not None and not 0 <= t < KEEP}
        if bad:
            raise _NotRepeated(f"the graph reads {path}.{min(bad)}, outside the layers exported")
        self.layers: List[List[torch.fx.Node]] = [[n for n in self.nodes if self.tag[n] == k]
                                                  for k in range(KEEP)]
        if len({len(x) for x in self.layers}) != 1 or not self.layers[0]:
            raise _NotRepeated(f"the exported layers of {path} have different node counts "
                               f"({', '.join(str(len(x)) for x in self.layers)})")
        self.pos = {n: (k, p) for k, layer in enumerate(self.layers) for p, n in enumerate(layer)}
        self._check_runs()
        self._check_repeats()

    def _check_runs(self) -> None:
        """Each layer's nodes come in runs (its parameters, then its ops); every run of layer k is followed
        directly by the same-length run of layer k + 1 (nothing of the parent between two layers)."""
        runs: List[Tuple[Optional[int], int, int]] = []  # (tag, start, length)
        for i, n in enumerate(self.nodes):
            t = self.tag[n]
            if runs and runs[-1][0] == t:
                runs[-1] = (t, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((t, i, 1))
        # index in self.nodes of the last node of each last-layer run -> (run start in the layer, length)
        self.ends: Dict[int, Tuple[int, int]] = {}
        seen = 0
        for j, (t, _, length) in enumerate(runs):
            if t is None:
                continue
            prev = runs[j - 1] if j else (None, 0, 0)
            if t > 0 and (prev[0] != t - 1 or prev[2] != length):
                raise _NotRepeated(f"the nodes of {self.path}.{t} do not follow those of {self.path}.{t - 1}")
            if t == KEEP - 1:
                self.ends[runs[j][1] + length - 1] = (seen, length)
                seen += length

    def _check_repeats(self) -> None:
        last, prev = self.layers[KEEP - 1], self.layers[KEEP - 2]
        rename = _renamer(self.path, KEEP - 2, KEEP - 1)
        for p, (a, b) in enumerate(zip(prev, last)):
            if a.op != b.op:
                raise _NotRepeated(f"{b.name} is a {b.op}, {a.name} a {a.op}")
            if a.op == "get_attr":
                if rename(a.target) != b.target or any(_attr_name(n.target) != n.name for n in (a, b)):
                    raise _NotRepeated(f"{b.target} does not repeat {a.target}")
            elif a.target != b.target or not self._same_args((a.args, a.kwargs), (b.args, b.kwargs)):
                raise _NotRepeated(f"{b.name} does not repeat {a.name}")
            if _val_sig(a.meta.get("val")) != _val_sig(b.meta.get("val")):
                raise _NotRepeated(f"{b.name}'s shape differs from {a.name}'s")
            sa, sb = a.meta.get("nn_module_stack") or {}, b.meta.get("nn_module_stack") or {}
            if [(rename(k), rename(v[0]), v[1]) for k, v in sa.items()] != [(k, *v) for k, v in sb.items()]:
                raise _NotRepeated(f"{b.name}'s module stack does not repeat {a.name}'s")
        for n in self.nodes:  # the parent may read the last layer only (not the output of every layer)
            if self.tag[n] is None:
                for x in n.all_input_nodes:
                    if self.tag[x] is not None and self.tag[x] != KEEP - 1:
                        raise _NotRepeated(f"{n.name} reads {x.name} of {self.path}.{self.tag[x]}")

    def _same_args(self, a: Any, b: Any) -> bool:
        if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node):
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
                return False
            ta, tb = self.pos.get(a), self.pos.get(b)
            if ta is None:
                return a is b
            return tb is not None and tb == (ta[0] + 1, ta[1])
        if isinstance(a, (list, tuple)):
            return (isinstance(b, (list, tuple)) and isinstance(a, tuple) == isinstance(b, tuple)
                    and len(a) == len(b) and all(self._same_args(x, y) for x, y in zip(a, b)))
        if isinstance(a, dict):
            return (isinstance(b, dict) and list(a) == list(b)
                    and all(self._same_args(a[k], b[k]) for k in a))
        if isinstance(a, slice):
            return isinstance(b, slice) and self._same_args((a.start, a.stop, a.step),
                                                            (b.start, b.stop, b.step))
        nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        return nan or _same_value(a, b)

    def build(self, n_layers: int) -> Tuple[torch.fx.Graph, List[str]]:
        """The graph of the whole list: layer ``KEEP - 1``'s nodes again for every later layer, each run
        right after the same run of the layer before. Returns it and the new layers' attribute targets."""
        new = torch.fx.Graph()
        new._codegen = self.graph._codegen
        env: Dict[torch.fx.Node, torch.fx.Node] = {}
        last = self.layers[KEEP - 1]
        reps: Dict[int, List[Optional[torch.fx.Node]]] = {i: [None] * len(last)
                                                          for i in range(KEEP, n_layers)}
        targets: List[str] = []

        def copy(node: torch.fx.Node, arg: Callable[[torch.fx.Node], torch.fx.Node], target: Any,
                 name: str, meta: Dict[str, Any]) -> torch.fx.Node:
            args = torch.fx.node.map_arg(node.args, arg)
            kwargs = torch.fx.node.map_arg(node.kwargs, arg)
            out = new.create_node(node.op, target, args, kwargs, name=name, type_expr=node.type)
            out.meta = meta
            return out

        def base(node: torch.fx.Node) -> str:
            if node.op in ("placeholder", "get_attr", "output"):
                return node.name
            m = _SUFFIX.match(node.name)
            return m.group(1) if m else node.name

        def outer(x: torch.fx.Node) -> torch.fx.Node:
            t = self.pos.get(x)  # the parent reads the last layer's output: the last repeat's
            return reps[n_layers - 1][t[1]] if t is not None else env[x]  # type: ignore[return-value]

        replicated = False

        for i, node in enumerate(self.nodes):
            env[node] = copy(node, env.__getitem__ if self.tag[node] is not None else outer, node.target,
                             base(node), dict(node.meta))
            if not replicated and env[node].name != node.name:  # names must be the full export's
                raise _NotRepeated(f"export named {node.name} out of sequence")
            if i not in self.ends:
                continue
            start, length = self.ends[i]
            replicated = True
            for layer in range(KEEP, n_layers):
                rename = _renamer(self.path, KEEP - 1, layer)

                def arg(x: torch.fx.Node, layer: int = layer) -> torch.fx.Node:
                    t = self.pos.get(x)
                    if t is None:
                        return env[x]
                    k, p = t  # k is KEEP - 1 (this layer) or KEEP - 2 (the layer before): _check_repeats
                    before = layer - 1 if k == KEEP - 2 else layer
                    src = reps[before][p] if before >= KEEP else env[last[p]]
                    if src is None:
                        raise _NotRepeated(f"{x.name} is read before it is written")
                    return src

                for p in range(start, start + length):
                    b = last[p]
                    meta = dict(b.meta)
                    if "nn_module_stack" in meta:
                        meta["nn_module_stack"] = {rename(k): (rename(v[0]), v[1])
                                                   for k, v in meta["nn_module_stack"].items()}
                    if b.op == "get_attr":
                        target = rename(b.target)
                        targets.append(target)
                        reps[layer][p] = copy(b, arg, target, _attr_name(target), meta)
                    else:
                        reps[layer][p] = copy(b, arg, b.target, base(b), meta)
        return new, targets


def _attach(gm: torch.nn.Module, model: torch.nn.Module, path: str, targets: List[str]) -> None:
    """Register the model's own tensors of the repeated layers on ``gm``, laid out like layer ``KEEP - 1``'s
    (same submodule order, parameters before buffers, persistence kept)."""
    template = gm.get_submodule(f"{path}.{KEEP - 1}")
    parent = gm.get_submodule(path)
    wanted = set(targets)
    for layer in sorted({int(t[len(path) + 1:].split(".", 1)[0]) for t in targets}):
        src = model.get_submodule(f"{path}.{layer}")
        root = torch.nn.Module()
        parent.add_module(str(layer), root)
        for qual, mod in template.named_modules():
            dst = root
            if qual:
                for part in qual.split("."):
                    if not hasattr(dst, part):
                        dst.add_module(part, torch.nn.Module())
                    dst = getattr(dst, part)
            own = src.get_submodule(qual)
            for name in mod._parameters:
                dst.register_parameter(name, own._parameters[name])
            for name in mod._buffers:
                dst.register_buffer(name, own._buffers[name],
                                    persistent=name not in mod._non_persistent_buffers_set)
        for t in list(wanted):
            if t.startswith(f"{path}.{layer}."):
                wanted.discard(t)
    if wanted:
        raise _NotRepeated(f"{sorted(wanted)[0]} is not a parameter or buffer")


def export_repeated(model: torch.nn.Module, export: Callable[[], Any]) -> Optional[Tuple[Any, Any]]:
    """``(graph module, exported program)`` of ``model`` exported with its repeated layers cut to ``KEEP``
    and the graph written out for all of them (``export()`` exports ``model`` as it is when called), or
    ``None`` when the fast path does not apply (logged)."""
    if not ENABLED:
        return None
    found = repeated_layers(model)
    if found is None:
        return None
    path, layers = found
    n_layers = len(layers)
    saved = layers._modules
    layers._modules = OrderedDict(list(saved.items())[:KEEP])
    try:
        ep = export()
    except Exception as e:  # the cut model does not export: the whole one may (or raise the real error)
        log.info("fxprune: exporting the whole of %s: with %s cut to %d layers, export failed (%s: %s)",
                 type(model).__name__, path, KEEP, type(e).__name__, e)
        return None
    finally:
        layers._modules = saved
    try:
        gm = ep.module()
        cut = _Cut(gm.graph, path)
        graph, targets = cut.build(n_layers)
        _attach(gm, model, path, targets)
    except _NotRepeated as e:
        log.info("fxprune: exporting the whole of %s: %s", type(model).__name__, e)
        return None
    except Exception as e:  # a case these checks do not know: the whole export is still right
        warnings.warn(f"fxprune: repeating the layers of {type(model).__name__}'s {path} failed "
                      f"({type(e).__name__}: {e}); exporting the whole model", stacklevel=user_stacklevel())
        return None
    graph.owning_module = gm
    gm._graph = graph  # not the setter: export_trace recompiles once at its end
    log.info("fxprune: exported %s with %s cut to %d of %d layers; repeated the last one's graph",
             type(model).__name__, path, KEEP, n_layers)
    return gm, ep
