"""Importance criteria: one score per removable class of a :class:`~fxprune.Group`.

The names and options follow Torch-Pruning (``MagnitudeImportance``, ``TaylorImportance``, ...), but every
criterion scores the group through :meth:`Group.index_classes`: a *layer* is one ``(parameter, dim)`` entry of
the group, its per-index scores are summed over the indices each class holds there, the layers are reduced
(``group_reduction``) and the result is normalised (``normalizer``). Criteria only score; pruners turn scores
into a :class:`~fxprune.PrunePlan`.

Example:
    >>> import torch, fxprune
    >>> import fxprune.importance as imp
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> group = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
    >>> imp.get_importance("l1")(group, m).shape
    torch.Size([8])
"""
from __future__ import annotations

import abc
import functools
import logging
import math
from collections.abc import Callable

import torch
import torch.fx
from torch import nn

from .analyze import Group
from .errors import MetaTensorError, PlanError
from .roles import LayerRole, layer_roles  # public here too (criteria select layers by role)

__all__ = [
    "ActivationImportance", "BNScaleImportance", "FPGMImportance", "FluctuationImportance",
    "GroupHessianImportance", "GroupMagnitudeImportance", "GroupTaylorImportance", "HessianImportance",
    "Importance", "LAMPImportance", "LayerImportance", "MagnitudeImportance", "RandomImportance", "TaylorImportance",
    "ScoreImportance", "StructureImportance",
    "LayerRole", "get_importance", "layer_roles", "normalize", "reduce_scores", "register_importance",
]

log = logging.getLogger(__name__)

Normalizer = None | str | Callable[[torch.Tensor], torch.Tensor]
_CONV_LINEAR: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
_DEFAULT_TYPES: tuple[type, ...] = _CONV_LINEAR + (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate", None)
_NORMALIZERS = ("sum", "mean", "max", "standarization", "standardization", "gaussian", "lamp")
_EPS = 1e-8


# ----------------------------------------------------------------------------------- reductions, normalizers

def reduce_scores(layer_scores: torch.Tensor, how: str | None = "mean",
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``[n_layers, n_classes]`` scores over the layers that contribute to each class.

    ``mask[l, c]`` says whether layer ``l`` holds indices of class ``c`` (all True when omitted). ``"first"`` and
    ``"gate"`` take each class's first / last contributing layer; ``None`` returns the scores with
    non-contributing entries set to 0. A class no layer contributes to scores 0.

    Example:
        >>> import torch, fxprune.importance as imp
        >>> s = torch.tensor([[1., 2.], [3., 4.]])
        >>> imp.reduce_scores(s, "mean", torch.tensor([[True, True], [True, False]]))
        tensor([2., 2.])
    """
    _check_reduction(how)
    s = layer_scores
    m = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if how is None:
        return torch.where(m, s, torch.zeros_like(s))
    some = m.any(0)
    if how in ("sum", "mean"):
        out = torch.where(m, s, torch.zeros_like(s)).sum(0)
        if how == "mean":
            out = out / m.sum(0).clamp(min=1).to(s.dtype)
    elif how == "max":
        out = torch.where(m, s, torch.full_like(s, float("-inf"))).max(0).values
    elif how == "prod":
        out = torch.where(m, s, torch.ones_like(s)).prod(0)
    else:  # "first" / "gate": the first / last contributing layer of each class
        mm = m if how == "first" else m.flip(0)
        ss = s if how == "first" else s.flip(0)
        out = ss.gather(0, mm.to(torch.int8).argmax(0, keepdim=True))[0]
    return torch.where(some, out, torch.zeros_like(out))


def normalize(scores: torch.Tensor, how: Normalizer = "mean") -> torch.Tensor:
    """Normalise 1-D scores (a 2-D tensor is normalised row by row, except by a callable).

    ``"sum"``/``"mean"``/``"max"`` divide by that statistic (all-zero scores stay zero), ``"standarization"``
    (or ``"standardization"``) maps min..max to 0..1, ``"gaussian"`` is the z-score, ``"sentinel_<q>"`` divides
    by the element at rank ``int(q * n)`` of the sorted scores, ``"lamp"`` divides each score by the sum of all
    scores not smaller than it (LAMP, Lee et al. 2021).

    Example:
        >>> import torch, fxprune.importance as imp
        >>> imp.normalize(torch.tensor([1., 3., 2.]), "lamp")
        tensor([0.1667, 1.0000, 0.4000])
    """
    _check_normalizer(how)
    if how is None:
        return scores
    if callable(how):
        return how(scores)
    if scores.ndim == 2:
        return torch.stack([normalize(row, how) for row in scores]) if len(scores) else scores
    if scores.numel() == 0:
        return scores
    if how == "sum":
        return _div(scores, scores.sum())
    if how == "mean":
        return _div(scores, scores.mean())
    if how == "max":
        return _div(scores, scores.max())
    if how in ("standarization", "standardization"):
        return (scores - scores.min()) / (scores.max() - scores.min() + _EPS)
    if how == "gaussian":
        std = scores.std() if scores.numel() > 1 else torch.zeros((), dtype=scores.dtype)
        return (scores - scores.mean()) / (std + _EPS)
    if how == "lamp":  # ties share the largest denominator, so the result does not depend on sort order
        asc = scores.sort().values
        tail = asc.flip(0).cumsum(0).flip(0)  # tail[j] = sum of asc[j:]
        return torch.nan_to_num(scores / tail[torch.searchsorted(asc, scores)], nan=0.0)
    q = float(how.split("_", 1)[1])  # sentinel_<q>
    rank = min(int(q * scores.numel()), scores.numel() - 1)
    return scores / (scores.sort().values[rank] + _EPS)


def _div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return x if float(d) == 0.0 else x / d


def _check_reduction(how: object) -> None:
    if how not in _REDUCTIONS:
        raise PlanError(f"unknown group_reduction {how!r}; choose one of {list(_REDUCTIONS)}")


def _check_normalizer(how: object) -> None:
    if how is None or callable(how) or how in _NORMALIZERS:
        return
    if isinstance(how, str) and how.startswith("sentinel_"):
        try:
            if 0.0 <= float(how[len("sentinel_"):]) <= 1.0:
                return
        except ValueError:
            pass
    raise PlanError(f"unknown normalizer {how!r}; choose None, a callable, one of {list(_NORMALIZERS)} "
                    f"or 'sentinel_<q>' with 0 <= q <= 1")


# ----------------------------------------------------------------------------------------------- criteria

class Importance(abc.ABC):
    """Base of every criterion: ``imp(group, model)`` scores each entry of ``group.all_classes``.

    ``model`` is any module whose ``named_parameters(remove_duplicate=False)`` / ``named_buffers`` hold the
    group's names (the user's model or the graph's ``gm``). The result is a float tensor of shape
    ``[len(group.all_classes)]`` (``[n_layers, n_classes]`` with ``group_reduction=None``), or ``None`` when no
    layer of the criterion's target types scores any removable class (e.g. a pinned group).

    Example:
        >>> import torch, fxprune.importance as imp
        >>> class Ones(imp.Importance):
        ...     def __call__(self, group, model):
        ...         return torch.ones(len(group.all_classes))
        >>> isinstance(Ones(), imp.Importance)
        True
    """

    @abc.abstractmethod
    def __call__(self, group: Group, model: nn.Module) -> torch.Tensor | None:
        """Score every removable class of ``group``."""


class LayerImportance(Importance):
    """A criterion built from per-index scores of each target layer entry, then reduced and normalised.

    Subclasses implement :meth:`layer_score`. A layer entry is one ``(parameter, dim)`` of the group whose
    role (:func:`layer_roles`: the op that uses it, not the class of the module that owns it) is one of
    ``target_types`` and whose argument is ``weight`` (or ``bias`` when ``bias=True``).

    ``layer_normalizer`` (a :func:`normalize` method, default None) normalises each layer's scores over the
    classes it holds *before* the layers are reduced, so that every layer has the same say whatever the scale
    of its weights. Scores in common units (Taylor's and Hessian's loss changes, activations) need none;
    magnitudes do: behind a normalisation a conv's weights can be scaled by any factor without changing the
    function, so a raw mean over layers is decided by whichever layer happens to have the largest weights.

    Every removable class is scored: a class that no target layer touches (an ``nn.MultiheadAttention``
    projection, a class token, a layer scale) is scored by the same :meth:`layer_score` from the other
    floating-point parameters of the group that hold it (weights before biases), and the criterion says so once
    through ``logging``. :meth:`scored` tells which classes a call covers.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> class Count(imp.LayerImportance):
        ...     def layer_score(self, name, dim, tensor, module):
        ...         return torch.ones(tensor.shape[dim])
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> Count(group_reduction=None, normalizer=None)(g, m)
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    #: whether classes outside every target layer are scored from the group's other parameters
    fallback: bool = True

    #: the default of ``layer_normalizer`` for criteria that do not pass one
    default_layer_normalizer: Normalizer = None

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 bias: bool = False, target_types: tuple[type, ...] = _DEFAULT_TYPES,
                 layer_normalizer: Normalizer | str = "default"):
        _check_reduction(group_reduction)
        _check_normalizer(normalizer)
        if layer_normalizer == "default":
            layer_normalizer = type(self).default_layer_normalizer
        _check_normalizer(layer_normalizer)
        self.group_reduction, self.normalizer, self.bias = group_reduction, normalizer, bias
        self.layer_normalizer = layer_normalizer
        self.target_types = tuple(target_types)
        self._told: set[str] = set()

    @abc.abstractmethod
    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
        """Scores of every index of ``tensor`` along ``dim`` (shape ``[tensor.shape[dim]]``), or None to skip."""

    def _selects(self, role: LayerRole | None, attr: str) -> bool:
        if role is None or not issubclass(role.kind, self.target_types):
            return False
        return role.attr == "weight" or (self.bias and role.attr == "bias")

    def _tell(self, key: str, msg: str, *args: object, level: int = logging.INFO) -> None:
        """Log ``msg`` once per criterion object and ``key``."""
        told = self.__dict__.setdefault("_told", set())  # subclasses may skip __init__
        if key not in told:
            told.add(key)
            log.log(level, msg, *args)

    @torch.no_grad()
    def _layer_rows(self, group: Group, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer scores ``[n_classes]`` and masks of the classes each layer holds (target layers, then
        fallback layers for the classes no target layer touches)."""
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(model.named_buffers(remove_duplicate=False))
        roles = layer_roles(model)
        self._seen = (tensors, roles)  # for layer_score implementations that need a layer's partner tensor
        n = len(group.all_classes)
        rows: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        spare: list[tuple[int, str, int, torch.Tensor]] = []
        for name, dim, pos in group.index_classes():
            hit = torch.from_numpy(pos) >= 0
            if not hit.any():
                continue
            if name not in tensors:
                raise PlanError(f"{type(self).__name__}: parameter {name!r} of group {group.key} is not in the "
                                f"given model")
            t, role = tensors[name], roles.get(name)
            if not t.is_floating_point() or t.ndim == 0:
                continue
            if not self._selects(role, name.rpartition(".")[2]):
                attr = role.attr if role is not None else name.rpartition(".")[2]
                if attr not in ("running_mean", "running_var"):  # statistics are not learned importance
                    spare.append((int(attr == "bias"), name, dim, torch.from_numpy(pos)))
                continue
            if not self._add_row(rows, masks, n, name, dim, t, torch.from_numpy(pos), _submodule(model, name)):
                spare.append((0, name, dim, torch.from_numpy(pos)))  # e.g. an activation criterion's out dim
        if not self.fallback or not spare:
            return rows, masks
        covered = torch.stack(masks).any(0) if masks else torch.zeros(n, dtype=torch.bool)
        if bool(covered.all()):
            return rows, masks
        for is_bias in (0, 1):  # weights first; biases only for classes no weight holds
            for _, name, dim, pos in (x for x in spare if x[0] == is_bias):
                pos = torch.where((pos >= 0) & ~covered[pos.clamp(min=0)], pos, torch.full_like(pos, -1))
                if (pos >= 0).any():
                    self._add_row(rows, masks, n, name, dim, tensors[name], pos, _submodule(model, name),
                                  self.fallback_score)
            covered = torch.stack(masks).any(0) if masks else covered
        self._tell("fallback", "%s: classes that no %s weight holds are scored from the other parameters of "
                   "their group (first: %s)", type(self).__name__,
                   "/".join(t.__name__ for t in self.target_types), group.key)
        return rows, masks

    def fallback_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module | None
                       ) -> torch.Tensor | None:
        """Per-index scores of a parameter outside ``target_types`` (default: :meth:`layer_score`; a parameter
        it cannot score, e.g. one without ``.grad`` for Taylor, is left out)."""
        try:
            return self.layer_score(name, dim, tensor, module)
        except PlanError:
            return None

    def _add_row(self, rows: list, masks: list, n: int, name: str, dim: int, t: torch.Tensor,
                 pos: torch.Tensor, module: nn.Module | None, score: Callable | None = None) -> bool:
        hit = pos >= 0
        if t.is_meta:  # shapes only: no value-based criterion can score it
            raise MetaTensorError(f"{type(self).__name__} needs the values of {name!r}, which lives on the "
                                  "meta device; rank by structure (importance='structure') or pass scores "
                                  "computed elsewhere (fxprune.Pruner.from_scores)")
        per = (score or self.layer_score)(name, dim, t, module)
        if per is None:
            return False
        per = per.detach().to("cpu", torch.float64).reshape(-1)
        where = pos[hit]
        rows.append(torch.zeros(n, dtype=torch.float64).index_add_(0, where, per[hit]))
        masks.append(torch.zeros(n, dtype=torch.bool).index_fill_(0, where, True))
        return True

    def scored(self, group: Group, model: nn.Module) -> torch.Tensor:
        """Which of ``group.all_classes`` a call scores from at least one layer (a bool tensor).

        Example:
            >>> import torch, fxprune, fxprune.importance as imp
            >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
            >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
            >>> imp.FPGMImportance().scored(g, m).tolist()
            [True, True, True]
        """
        _, masks = self._layer_rows(group, model)
        if not masks:
            return torch.zeros(len(group.all_classes), dtype=torch.bool)
        return torch.stack(masks).any(0)

    def _normalize_layers(self, rows: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each layer's scores normalised (``layer_normalizer``) over the classes that layer holds."""
        how = self.__dict__.get("layer_normalizer", type(self).default_layer_normalizer)
        if how is None:
            return rows
        out = []
        for r, m in zip(rows, masks):
            r = r.clone()
            r[m] = normalize(r[m], how).to(r.dtype)
            out.append(r)
        return out

    @torch.no_grad()
    def __call__(self, group: Group, model: nn.Module) -> torch.Tensor | None:
        rows, masks = self._layer_rows(group, model)
        if not rows:
            return None
        rows = self._normalize_layers(rows, masks)
        out = reduce_scores(torch.stack(rows), self.group_reduction, torch.stack(masks))
        return normalize(out, self.normalizer).to(torch.float32)


def _bn_output_moment(gamma: torch.Tensor, beta: torch.Tensor, p: float) -> torch.Tensor:
    """``E|gamma * z + beta|^p`` for standard normal ``z``: exact for ``p`` = 1 (folded-normal mean) and 2,
    ``(gamma^2 + beta^2)^(p/2)`` otherwise."""
    g, b = gamma.double().abs(), beta.double()
    second = g ** 2 + b ** 2
    if p == 2:
        return second
    if p == 1:
        r = b.abs() / g.clamp(min=1e-30)
        folded = g * math.sqrt(2 / math.pi) * torch.exp(-r ** 2 / 2) + b.abs() * torch.erf(r / math.sqrt(2))
        return torch.where(g > 0, folded, b.abs())
    return second ** (p / 2)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    """The module owning parameter ``name`` (None when there is none)."""
    prefix = name.rpartition(".")[0]
    try:
        return model.get_submodule(prefix)
    except AttributeError:
        return None


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as a matrix with one row per index along ``dim``."""
    return t.detach().movedim(dim, 0).reshape(t.shape[dim], -1).float()


def _check_stale(who: str, name: str, seen: tuple, now: tuple, what: str = "") -> None:
    """Statistics recorded on a model whose ``name`` has since been pruned must not be read as if they fitted."""
    if seen != now:
        raise PlanError(f"{who}: the data recorded for {what}parameter {name!r} has shape {list(seen)} but the "
                        f"model scored now has {list(now)}: it was pruned after the data was collected (an "
                        f"earlier step, or a head step); collect the data again on the current model")


def _grad(name: str, t: torch.Tensor, who: str) -> torch.Tensor:
    if t.grad is None:
        raise PlanError(f"{who} needs gradients: parameter {name!r} has no .grad (run loss.backward() first)")
    return t.grad


class MagnitudeImportance(LayerImportance):
    """Group magnitude: ``sum |W|^p`` over the other dims of each index (no ``1/p`` root, as Torch-Pruning).

    Each layer's scores are divided by their mean over the classes the layer holds before the layers are
    averaged (``layer_normalizer="mean"``; ``None`` gives Torch-Pruning's mean of raw scores), so a group is not
    ranked by whichever of its layers happens to have the largest weights.

    A BatchNorm scale scores ``E|gamma * z + beta|^p`` (``bn_shift=True``), the p-th moment of the channel's output
    over its normalised input ``z``, taken as standard normal (zero mean, unit variance on the data the statistics
    came from): ``gamma^2 + beta^2`` for ``p=2``, the folded-normal mean for ``p=1``, ``(gamma^2 + beta^2)^(p/2)``
    for other ``p``. A channel with a small ``gamma`` still outputs ``beta``, and removing it removes that
    constant from every later layer; ``bn_shift=False`` scores ``|gamma|^p`` alone.
    ``bias=True`` adds each bias ``|b|^p`` as extra layer entries.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3, bias=False), torch.nn.ReLU(),
        ...                         torch.nn.Linear(3, 1, bias=False))
        >>> _ = m[0].weight.data.copy_(torch.tensor([[1., 0.], [0., 2.], [3., 0.]]))
        >>> _ = m[2].weight.data.fill_(1.0)
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> imp.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None, layer_normalizer=None)(g, m)
        tensor([2., 3., 4.])
        >>> imp.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(g, m)  # 1/2 + 1, 1 + 1, 3/2 + 1
        tensor([1.5000, 2.0000, 2.5000])
    """

    default_layer_normalizer: Normalizer = "mean"

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 bias: bool = False, target_types: tuple[type, ...] = _DEFAULT_TYPES,
                 layer_normalizer: Normalizer | str = "default", bn_shift: bool = True):
        super().__init__(group_reduction, normalizer, bias, target_types, layer_normalizer)
        self.p, self.bn_shift = p, bn_shift

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
        shift = self._bn_shift(name) if self.__dict__.get("bn_shift", True) else None
        if shift is not None:
            return _bn_output_moment(_rows(tensor, dim)[:, 0], shift.detach().float().reshape(-1), self.p)
        return _rows(tensor, dim).abs().pow(self.p).sum(1)

    def _bn_shift(self, name: str) -> torch.Tensor | None:
        """The shift ``beta`` that goes with BatchNorm scale ``name`` (None if ``name`` is none or has none)."""
        tensors, roles = getattr(self, "_seen", ({}, {}))
        role = roles.get(name)
        if role is None or role.attr != "weight" or not issubclass(role.kind, nn.modules.batchnorm._BatchNorm):
            return None
        prefix = name.rpartition(".")[0]
        bias = f"{prefix}.bias" if prefix else "bias"
        b_role = roles.get(bias)
        if b_role is None or b_role.attr != "bias" or bias not in tensors:
            return None
        b = tensors[bias]
        return b if b.shape == tensors[name].shape else None


GroupMagnitudeImportance = MagnitudeImportance


class BNScaleImportance(MagnitudeImportance):
    """Network Slimming on BatchNorm layers only: ``E|gamma * z + beta|`` per channel, ``z`` standard normal: the
    mean absolute output of the channel (see :class:`MagnitudeImportance`), or ``|gamma|`` alone with
    ``shift=False``.

    Network Slimming trains with a sparsity penalty on ``gamma`` so that a channel with a small ``gamma`` carries
    nothing. In a network trained without it, such a channel still outputs its shift ``beta`` to every later
    layer, and removing it removes that constant; the output's root mean square counts both. Several
    BatchNorms of one group (a residual stream) are averaged as they are: their outputs share units.
    (``momentum`` and the running statistics play no part: ``z`` is the normalised input by definition.)

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 1, 1))
        >>> _ = m[1].weight.data.copy_(torch.tensor([-2., 0.]))
        >>> _ = m[1].bias.data.copy_(torch.tensor([0., 3.]))
        >>> g = fxprune.analyze(m.eval(), torch.randn(1, 1, 2, 2)).group_of("0.weight", 0)
        >>> imp.BNScaleImportance(normalizer=None, shift=False)(g, m)
        tensor([2., 0.])
        >>> imp.BNScaleImportance(normalizer=None)(g, m)  # 2 * sqrt(2 / pi), 3
        tensor([1.5958, 3.0000])
    """

    fallback = False  # "the BatchNorm scale" has no meaning elsewhere: such classes stay unscored (and kept)
    default_layer_normalizer: Normalizer = None

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean", shift: bool = True):
        super().__init__(1, group_reduction, normalizer, False, (nn.modules.batchnorm._BatchNorm,),
                         bn_shift=shift)

    def __call__(self, group: Group, model: nn.Module) -> torch.Tensor | None:
        rows, masks = self._layer_rows(group, model)
        if not rows or not bool(torch.stack(masks).any(0).all()):
            self._tell("unscored", "BNScaleImportance: group %s (and any other like it) has channels that no "
                       "BatchNorm scales; they are not scored, so not pruned", group.key, level=logging.WARNING)
        if not rows:
            return None
        out = reduce_scores(torch.stack(rows), self.group_reduction, torch.stack(masks))
        # channels without a BatchNorm rank above every scored one: kept, never removed by a zero score
        out = torch.where(torch.stack(masks).any(0), out, torch.full_like(out, float(out.max()) + 1.0))
        return normalize(out, self.normalizer).to(torch.float32)


class LAMPImportance(MagnitudeImportance):
    """Magnitude scores with the LAMP normaliser (layer-adaptive magnitude pruning).

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> float(imp.LAMPImportance()(g, m).max())
        1.0
    """

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", bias: bool = False,
                 target_types: tuple[type, ...] = _DEFAULT_TYPES, layer_normalizer: Normalizer | str = "default",
                 bn_shift: bool = True):
        super().__init__(p, group_reduction, "lamp", bias, target_types, layer_normalizer, bn_shift)


class FPGMImportance(LayerImportance):
    """Geometric median (FPGM): per index, the summed Euclidean distance of its ``|W|^p`` row to all others.

    Conv and linear weights only; an index close to all others is redundant and scores low.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(1, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> _ = m[0].weight.data.copy_(torch.tensor([[0.], [1.], [3.]]))
        >>> g = fxprune.analyze(m, torch.randn(1, 1)).group_of("0.weight", 0)
        >>> imp.FPGMImportance(p=1, group_reduction="first", normalizer=None)(g, m)
        tensor([4., 3., 5.])
    """

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 target_types: tuple[type, ...] = _CONV_LINEAR, layer_normalizer: Normalizer | str = "default"):
        super().__init__(group_reduction, normalizer, False, target_types, layer_normalizer)
        self.p = p

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
        rows = _rows(tensor, dim).abs().pow(self.p).double()
        return torch.cdist(rows, rows).sum(1)


class TaylorImportance(LayerImportance):
    """First-order Taylor: ``sum |W * dW|`` per index (``|sum W * dW|`` with ``multivariable=True``).

    Reads ``.grad`` of every scored parameter, unless samples were given to :meth:`accumulate_grad`: then an
    index scores the mean over samples of ``(sum W * dW)^2`` (Molchanov et al. 2019), the expected squared
    first-order change of the loss when the index is zeroed, measured per sample so that samples whose gradients
    have opposite signs do not cancel as they do in a summed ``.grad``. BatchNorm ``gamma`` contributes like any
    other weight (Torch-Pruning 1.6.1 skips it by mistake).

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> m(torch.randn(4, 2)).sum().backward()
        >>> imp.TaylorImportance()(g, m).shape
        torch.Size([3])
        >>> t = imp.TaylorImportance()
        >>> for x in torch.randn(3, 1, 2):  # per-sample accumulation
        ...     m.zero_grad()
        ...     m(x).sum().backward()
        ...     t.accumulate_grad(m)
        >>> t(g, m).shape
        torch.Size([3])
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 multivariable: bool = False, bias: bool = False, target_types: tuple[type, ...] = _DEFAULT_TYPES,
                 layer_normalizer: Normalizer | str = "default"):
        super().__init__(group_reduction, normalizer, bias, target_types, layer_normalizer)
        self.multivariable = multivariable
        self.zero_grad()

    def zero_grad(self) -> None:
        """Forget every accumulated sample (scores come from ``.grad`` again)."""
        self._sq: dict[tuple[str, int], torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def _stat_fields(self) -> dict[str, str]:
        return {"_sq": "sum", "_count": "count"}

    def all_reduce(self, group: object = None, *, model: nn.Module | None = None) -> TaylorImportance:
        """Sum the accumulated samples of every rank of ``group`` (``torch.distributed``; ``None`` is the
        default group, ``"auto"`` reduces only when one with several ranks is initialised): each rank then
        scores as one process that accumulated all of them. See
        :func:`fxprune.distributed.all_reduce_importance`.

        Example:
            >>> import fxprune.importance as imp
            >>> imp.TaylorImportance().all_reduce("auto")._count
            {}
        """
        from .distributed import all_reduce_importance
        return all_reduce_importance(self, group, model=model)

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add one sample: for every parameter of ``model`` with a ``.grad`` and each of its dims, the squared
        per-index sums of ``W * dW`` (call after each per-sample, or per-batch, backward)."""
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.grad is None:
                continue
            prod = (p.detach() * p.grad.detach()).float()
            for d in range(prod.ndim):
                sq = _rows(prod, d).sum(1).double().pow(2)
                key = (name, d)
                self._sq[key] = self._sq[key] + sq if key in self._sq else sq
            self._count[name] = self._count.get(name, 0) + 1

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
        if self.__dict__.get("_count"):
            if (name, dim) not in self._sq:
                raise PlanError(f"TaylorImportance has accumulated samples but none for parameter {name!r}: it "
                                f"had no .grad when accumulate_grad(model) ran")
            sq = self._sq[(name, dim)]
            _check_stale(type(self).__name__, name, tuple(sq.shape), (tensor.shape[dim],), f"dim {dim} of ")
            return sq / self._count[name]
        prod = _rows(tensor, dim) * _rows(_grad(name, tensor, type(self).__name__), dim)
        return prod.sum(1).abs() if self.multivariable else prod.abs().sum(1)


GroupTaylorImportance = TaylorImportance


class HessianImportance(LayerImportance):
    """Optimal Brain Damage: ``sum W^2 * H`` per index, ``H`` the mean over samples of the squared gradient.

    Call :meth:`accumulate_grad` after each per-sample backward; :meth:`zero_grad` starts over. Every sample is
    accumulated (Torch-Pruning 1.6.1 keeps only the last one) and the model's ``.grad`` is never overwritten.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> h = imp.HessianImportance()
        >>> for x in torch.randn(3, 1, 2):
        ...     m.zero_grad()
        ...     m(x).sum().backward()
        ...     h.accumulate_grad(m)
        >>> h(g, m).shape
        torch.Size([3])
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 bias: bool = False, target_types: tuple[type, ...] = _DEFAULT_TYPES,
                 layer_normalizer: Normalizer | str = "default"):
        super().__init__(group_reduction, normalizer, bias, target_types, layer_normalizer)
        self.zero_grad()

    def zero_grad(self) -> None:
        """Forget every accumulated sample."""
        self._sq: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def _stat_fields(self) -> dict[str, str]:
        return {"_sq": "sum", "_count": "count"}

    def all_reduce(self, group: object = None, *, model: nn.Module | None = None) -> HessianImportance:
        """Sum the accumulated squared gradients of every rank of ``group`` (as
        :meth:`TaylorImportance.all_reduce`).

        Example:
            >>> import fxprune.importance as imp
            >>> imp.HessianImportance().all_reduce("auto")._count
            {}
        """
        from .distributed import all_reduce_importance
        return all_reduce_importance(self, group, model=model)

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add ``grad ** 2`` of every parameter of ``model`` that has a gradient (one sample)."""
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.grad is None:
                continue
            sq = p.grad.detach().float().pow(2)
            self._sq[name] = self._sq[name] + sq if name in self._sq else sq.clone()
            self._count[name] = self._count.get(name, 0) + 1

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
        if name not in self._sq:
            raise PlanError(f"HessianImportance has no accumulated gradient for parameter {name!r}: call "
                            f"accumulate_grad(model) after each per-sample backward")
        _check_stale(type(self).__name__, name, tuple(self._sq[name].shape), tuple(tensor.shape))
        h = self._sq[name] / self._count[name]
        return (_rows(tensor, dim).pow(2) * _rows(h, dim)).sum(1)


GroupHessianImportance = HessianImportance


class RandomImportance(Importance):
    """Uniform random scores, reproducible with ``seed``.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> torch.equal(imp.RandomImportance(seed=1)(g, m), imp.RandomImportance(seed=1)(g, m))
        True
    """

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, group: Group, model: nn.Module) -> torch.Tensor | None:
        n = len(group.all_classes)
        return torch.rand(n, generator=self.generator) if n else None


# the criteria recorded from calibration batches live in their own module (they need this one's base classes)
from .recorded import ActivationImportance, FluctuationImportance  # noqa: E402
# criteria that need no values (models on the meta device): structure-only ranking, scores from elsewhere
from .scores import ScoreImportance, StructureImportance  # noqa: E402

# ----------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Importance]] = {
    "l1": functools.partial(MagnitudeImportance, p=1),
    "l2": functools.partial(MagnitudeImportance, p=2),
    "magnitude": MagnitudeImportance,
    "bn": BNScaleImportance,
    "lamp": LAMPImportance,
    "fpgm": FPGMImportance,
    "taylor": TaylorImportance,
    "hessian": HessianImportance,
    "activation": ActivationImportance,
    "fluctuation": FluctuationImportance,
    "random": RandomImportance,
    "structure": StructureImportance,
}


def register_importance(name: str, factory: Callable[..., Importance], replace: bool = False) -> None:
    """Make ``get_importance(name, **kwargs)`` call ``factory(**kwargs)``.

    Example:
        >>> import fxprune.importance as imp
        >>> imp.register_importance("l3", lambda **kw: imp.MagnitudeImportance(p=3, **kw), replace=True)
        >>> imp.get_importance("l3").p
        3
    """
    if name in _REGISTRY and not replace:
        raise PlanError(f"importance {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = factory


def get_importance(name: str, **kwargs: object) -> Importance:
    """A new criterion by registered name, e.g. ``get_importance("taylor", multivariable=True)``.

    Example:
        >>> import fxprune.importance as imp
        >>> type(imp.get_importance("l1", normalizer=None)).__name__
        'MagnitudeImportance'
    """
    if name not in _REGISTRY:
        raise PlanError(f"unknown importance {name!r}; registered names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)
