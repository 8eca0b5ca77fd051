"""Sparse-training regularizers: push whole channels towards zero before pruning them.

Each regularizer adds a penalty's gradient to ``.grad`` in place; call it between ``loss.backward()`` and
``optimizer.step()``. Nothing but ``.grad`` (and the regularizer's own state) is ever written.

* :class:`BNScaleRegularizer` -- network slimming: L1 on every affine BatchNorm scale.
* :class:`GroupLassoRegularizer` -- DepGraph's group sparsity: a weighted L2 penalty per removable class,
  stronger on classes with a small norm.
* :class:`GrowingRegularizer` -- Wang et al. 2021: a per-class L2 coefficient that grows over time,
  faster for unimportant classes.

The last two work per removable class of every unpinned group of an :func:`fxprune.analyze` result: a
class covers every parameter slice that goes with it (conv rows, the next conv's columns, BatchNorm
scale and shift, biases, ...; buffers are left out). Parameters are looked up by name with
``model.named_parameters(remove_duplicate=False)``, so pass the model being trained (or ``graph.gm``,
which shares its tensors). A parameter with ``requires_grad=False`` is skipped; a trainable one without a
gradient raises :class:`~fxprune.errors.FxpruneError` (call ``loss.backward()`` first).

Example:
    >>> import torch, fxprune
    >>> from fxprune.regularize import GroupLassoRegularizer
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> reg = GroupLassoRegularizer(fxprune.analyze(m, torch.randn(1, 4)), reg=1e-3)
    >>> m(torch.randn(3, 4)).sum().backward()
    >>> g0 = m[0].weight.grad.clone()
    >>> reg.regularize(m)
    >>> bool((m[0].weight.grad != g0).any())
    True
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .analyze import ChannelGraph
from .errors import FxpruneError

__all__ = ["BNScaleRegularizer", "GroupLassoRegularizer", "GrowingRegularizer"]

# (parameter name, dim, pos) with pos[i] = class of index i of that dim, or -1 (not removable).
_Slice = Tuple[str, int, torch.Tensor]
# (group key, number of classes, slices).
_GroupSlices = Tuple[str, int, List[_Slice]]
# (parameter, dim, pos, trainable).
_Live = Tuple[nn.Parameter, int, torch.Tensor, bool]


def _group_slices(graph: ChannelGraph) -> List[_GroupSlices]:
    """The float parameter slices of every removable class of every unpinned group (buffers left out)."""
    params = dict(graph.gm.named_parameters(remove_duplicate=False))
    out = []
    for g in graph.groups:
        if g.pinned or not g.all_classes:
            continue
        slices = [(n, d, torch.from_numpy(pos)) for n, d, pos in g.index_classes()
                  if n in params and params[n].is_floating_point() and (pos >= 0).any()]
        if slices:
            out.append((g.key, len(g.all_classes), slices))
    return out


def _check_grad(name: str, p: nn.Parameter) -> bool:
    """True if ``p`` takes a gradient update; raise if it is trainable but has no gradient yet."""
    if not p.requires_grad:
        return False
    if p.grad is None:
        raise FxpruneError(f"parameter {name!r} requires grad but its .grad is None: "
                           f"call loss.backward() before regularize()")
    return True


def _resolve(params: Dict[str, nn.Parameter], slices: Sequence[_Slice], grads: bool = True) -> List[_Live]:
    """Look the slices' parameters up in ``params``; with ``grads``, mark which take an update (and check
    that those have a gradient), otherwise mark none (the weights are only read)."""
    out = []
    for name, dim, pos in slices:
        p = params.get(name)
        if p is None:
            raise FxpruneError(f"parameter {name!r} of the analysed graph is not in this model: pass the model "
                               f"that was analysed, or call update(graph) with a graph of the pruned model")
        if p.ndim <= dim or p.shape[dim] != len(pos):
            raise FxpruneError(f"parameter {name!r} has shape {tuple(p.shape)}, but the analysed graph has "
                               f"{len(pos)} channels on dim {dim}: call update(graph) after pruning")
        out.append((p, dim, pos.to(p.device), grads and _check_grad(name, p)))
    return out


def _class_norms(live: Sequence[_Live], n: int) -> torch.Tensor:
    """L2 norm of every class over all its parameter slices (float64, on the first parameter's device)."""
    acc = torch.zeros(n, dtype=torch.float64, device=live[0][0].device)
    for p, dim, pos, _ in live:
        w = p.detach()
        per = w.float().pow(2).sum([i for i in range(w.ndim) if i != dim]) if w.ndim > 1 else w.float().pow(2)
        hit = pos >= 0
        acc.index_add_(0, pos[hit].to(acc.device), per[hit].double().to(acc.device))
    return acc.sqrt()


def _add_scaled(live: Sequence[_Live], coef: torch.Tensor) -> None:
    """``grad += coef[c] * W`` on every slice of every class ``c``, in place (indices of no class untouched)."""
    for p, dim, pos, trainable in live:
        if not trainable:
            continue
        c = coef.to(p.device)
        scale = torch.where(pos >= 0, c[pos.clamp(min=0)], torch.zeros((), dtype=c.dtype, device=p.device))
        shape = [1] * p.ndim
        shape[dim] = -1
        p.grad.add_(p.detach() * scale.to(p.grad.dtype).view(shape))


class BNScaleRegularizer:
    """Network slimming (Liu et al. 2017): ``grad += reg * sign(γ)`` on every affine BatchNorm weight.

    Every ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm) with ``affine=True`` is regularized unless it
    sits in ``ignored`` (modules of ``model`` or their qualified names; a module ignores everything below it).
    Modules are found by name at each :meth:`regularize` call, so a pruned GraphModule of the same model
    works too. Biases are left alone; ``sign(0) = 0``.

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> reg = BNScaleRegularizer(m, reg=0.5)
        >>> (0 * m(torch.randn(1, 3, 5, 5)).sum()).backward()
        >>> reg.regularize(m)
        >>> m[1].weight.grad.tolist(), bool(m[0].weight.grad.abs().sum() == 0)
        ([0.5, 0.5, 0.5, 0.5], True)
    """

    def __init__(self, model: nn.Module, reg: float = 1e-5, ignored: Iterable[Union[nn.Module, str]] = ()):
        self.reg = float(reg)
        by_id: Dict[int, List[str]] = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            by_id.setdefault(id(mod), []).append(name)
        known = {n for names in by_id.values() for n in names}
        ignored_names: List[str] = []
        for item in ignored:
            found = ([item] if item in known else []) if isinstance(item, str) else by_id.get(id(item), [])
            if not found:
                what = repr(item) if isinstance(item, str) else f"a {type(item).__name__}"
                raise ValueError(f"ignored entry {what} is not a module of the model")
            ignored_names.extend(found)
        self.ignored: Tuple[str, ...] = tuple(ignored_names)

    def _is_ignored(self, name: str) -> bool:
        return any(ig == "" or name == ig or name.startswith(ig + ".") for ig in self.ignored)

    def targets(self, model: nn.Module) -> List[str]:
        """Qualified names of the BatchNorm weights :meth:`regularize` acts on (one name per tensor; a
        module shared under several names is skipped if any of them is ignored)."""
        mods = list(model.named_modules(remove_duplicate=False))
        skip = {id(m) for name, m in mods if self._is_ignored(name)}
        out, seen = [], set()
        for name, mod in mods:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine and mod.weight is not None \
                    and id(mod) not in skip and id(mod.weight) not in seen:
                seen.add(id(mod.weight))
                out.append(f"{name}.weight" if name else "weight")
        return out

    def regularize(self, model: nn.Module) -> None:
        """Add ``reg * sign(γ)`` to the gradient of every target BatchNorm weight."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name in self.targets(model):
                w = params[name]
                if _check_grad(name, w):
                    w.grad.add_(torch.sign(w.detach()).to(w.grad.dtype), alpha=self.reg)


class GroupLassoRegularizer:
    """DepGraph's group sparsity (Fang et al. 2023): a norm-weighted L2 penalty per removable class.

    For every unpinned group and each removable class ``c`` of it, ``I_c`` is the L2 norm of all parameter
    slices of the class (every member parameter dim, buffers excluded) and
    ``γ_c = 2 ** (alpha * (I_max - I_c) / (I_max - I_min))`` (``γ_c = 1`` when all ``I_c`` are equal), so
    ``γ`` spans ``[1, 2**alpha]`` and the weakest class is pushed hardest. :meth:`regularize` adds
    ``reg * γ_c * W`` to the gradient of every slice of class ``c``: the gradient of
    ``reg/2 · Σ_c γ_c ‖W_c‖²`` with ``γ`` held constant. An index that several classes (of one group or of
    different groups) cover receives each contribution. Call :meth:`update` after pruning.
    ``alpha`` is an exponent, as in the DepGraph paper and Torch-Pruning's documented ``[2^0, 2^alpha]``
    range; the default ``alpha=4`` gives ``γ ∈ [1, 16]``, what Torch-Pruning's ``regularize`` applies.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4, [3.0] * 4]))
        ...     _ = m[0].bias.zero_(), m[2].weight.zero_()
        >>> reg = GroupLassoRegularizer(fxprune.analyze(m, torch.randn(1, 4)), reg=1.0, alpha=2.0)
        >>> reg.scales(m)["0.weight:0"].tolist()
        [4.0, 2.0, 1.0]
    """

    def __init__(self, graph: ChannelGraph, reg: float = 1e-4, alpha: float = 4.0):
        self.reg, self.alpha = float(reg), float(alpha)
        self.update(graph)

    def update(self, graph: ChannelGraph) -> None:
        """Rebuild the class slices from ``graph`` (an analysis of the current, possibly pruned, model)."""
        self._groups = _group_slices(graph)

    def _gamma(self, live: Sequence[_Live], n: int) -> torch.Tensor:
        norms = _class_norms(live, n)
        span = norms.max() - norms.min()
        t = (norms.max() - norms) / span if span > 0 else torch.zeros_like(norms)
        return torch.exp2(self.alpha * t)

    def scales(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """The current ``γ`` of every class, by group key (float64)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            return {key: self._gamma(_resolve(params, s, grads=False), n) for key, n, s in self._groups}

    def regularize(self, model: nn.Module) -> None:
        """Add ``reg * γ_c * W`` to the gradient of every parameter slice of every class ``c``."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for _, n, slices in self._groups:
                live = _resolve(params, slices)
                _add_scaled(live, self.reg * self._gamma(live, n))


class GrowingRegularizer:
    """Growing regularization (Wang et al. 2021): per-class L2 coefficients that grow for weak classes.

    Every removable class ``c`` of every unpinned group starts at ``γ_c = reg``. Each :meth:`update_reg`
    call scores the classes of a group (``s_c``; by default the L2 norm of all the class's parameter slices)
    and grows ``γ_c += delta_reg * (s_max - s_c) / (s_max - s_min + 1e-8)``, i.e. by ``delta_reg`` times the
    min-max standardised ``1 - importance`` (0 for the strongest class, ~1 for the weakest; nothing when all
    scores are equal). :meth:`regularize` adds ``γ_c * W`` to the gradient of every parameter slice of class
    ``c``, BatchNorm weights and biases included. :attr:`gamma` holds the coefficients by group key.
    :meth:`update` (after pruning) resets every coefficient to ``reg``.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> reg = GrowingRegularizer(fxprune.analyze(m, torch.randn(1, 4)), reg=0.5, delta_reg=1.0)
        >>> reg.update_reg({"0.weight:0": [3.0, 1.0, 2.0]})
        >>> [round(v, 6) for v in reg.gamma["0.weight:0"].tolist()]
        [0.5, 1.5, 1.0]
    """

    def __init__(self, graph: ChannelGraph, reg: float = 1e-5, delta_reg: float = 1e-5):
        self.reg, self.delta_reg = float(reg), float(delta_reg)
        self.update(graph)

    def update(self, graph: ChannelGraph) -> None:
        """Rebuild the class slices from ``graph`` and reset every coefficient to ``reg``."""
        self._graph = graph
        self._groups = _group_slices(graph)
        self.gamma: Dict[str, torch.Tensor] = {
            key: torch.full((n,), self.reg, dtype=torch.float64) for key, n, _ in self._groups}

    def update_reg(self, scores: Optional[Mapping[str, Sequence[float]]] = None,
                   model: Optional[nn.Module] = None) -> None:
        """Grow the coefficients. ``scores`` maps group keys to one importance per class (in the order of
        ``group.all_classes``); groups it leaves out keep their coefficients. Without ``scores``, every
        group is scored by the per-class L2 norm of the weights of ``model`` (default: ``graph.gm``)."""
        if scores is not None:
            unknown = sorted(set(scores) - set(self.gamma))
            if unknown:
                raise ValueError(f"scores name unknown or pinned groups {unknown[:3]}; "
                                 f"expected keys among {sorted(self.gamma)[:5]}")
        params = dict((model if model is not None else self._graph.gm).named_parameters(remove_duplicate=False))
        new: Dict[str, torch.Tensor] = {}
        with torch.no_grad():  # score every group first: a bad entry leaves the coefficients unchanged
            for key, n, slices in self._groups:
                if scores is None:
                    new[key] = _class_norms(_resolve(params, slices, grads=False), n).cpu()
                elif key in scores:
                    new[key] = torch.as_tensor(scores[key], dtype=torch.float64).flatten().cpu()
                    if new[key].numel() != n:
                        raise ValueError(f"scores[{key!r}] has {new[key].numel()} entries; "
                                         f"the group has {n} classes")
        for key, s in new.items():
            self.gamma[key] = self.gamma[key] + self.delta_reg * (s.max() - s) / (s.max() - s.min() + 1e-8)

    def regularize(self, model: nn.Module) -> None:
        """Add ``γ_c * W`` to the gradient of every parameter slice of every class ``c``."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for key, _, slices in self._groups:
                _add_scaled(_resolve(params, slices), self.gamma[key])
