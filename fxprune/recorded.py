"""Criteria recorded from calibration data: input statistics of conv / linear layers seen on real batches.

:class:`ActivationImportance` scores an input channel by its mean ``|x|``; :class:`FluctuationImportance`
(FLAP, An et al. 2024) by ``Var(x_j) * ||W[:, j]||^2``, the variance of the layer's output that channel ``j``
carries. Both keep the signed mean of every input channel too (:meth:`ActivationImportance.input_means`):
bias compensation (``fxprune.prune(..., compensate=means)``) folds the mean contribution of removed channels
into the layer's bias. Both are exported from :mod:`fxprune.importance`; record them by hand
(``with imp.compute_importance(model): model(batch)``) or with :func:`fxprune.calibrate`.

Example:
    >>> import torch, fxprune, fxprune.importance as imp
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> f = imp.FluctuationImportance()
    >>> with f.compute_importance(m):
    ...     _ = m(torch.randn(16, 2))
    >>> sorted(f.input_means()), f.input_means()["2"].shape
    (['0', '2'], torch.Size([3]))
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
from torch import nn

from .analyze import Group
from .errors import PlanError
from .importance import _CONV_LINEAR, LayerImportance, LayerRole, Normalizer, _check_stale, _rows, layer_roles

__all__ = ["ActivationImportance", "FluctuationImportance"]


def _channel_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[tokens or positions, channels]`` (float64) for the input channel dim of ``module``."""
    cdim = -1 if isinstance(module, nn.Linear) else x.ndim - len(module.kernel_size) - 1
    return x.detach().movedim(cdim, -1).reshape(-1, x.shape[cdim]).double()


class ActivationImportance(LayerImportance):
    """Mean ``|input|`` per input channel of conv / linear layers, seen on calibration batches.

    Record with ``with imp.compute_importance(model): model(batch)`` (several batches accumulate;
    :meth:`reset` forgets them) or :func:`fxprune.calibrate`. A class is scored from the group's in-channel
    entries (conv weight dim 1, transposed conv dim 0, linear dim 1); the channels of a grouped conv that
    share a weight column add up. :meth:`input_means` gives the signed mean input of every recorded layer
    (for bias compensation).

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> a = imp.ActivationImportance(normalizer=None)
        >>> with a.compute_importance(m):
        ...     _ = m(torch.randn(8, 2))
        >>> bool((a(g, m) >= 0).all())
        True
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 target_types: tuple[type, ...] = _CONV_LINEAR,
                 layer_normalizer: Normalizer | str = "default"):
        super().__init__(group_reduction, normalizer, False, target_types, layer_normalizer)
        self.reset()

    def reset(self) -> None:
        """Forget every recorded batch."""
        self._sum: dict[str, torch.Tensor] = {}  # sum of |x| per channel
        self._signed: dict[str, torch.Tensor] = {}  # sum of x per channel
        self._n: dict[str, int] = {}
        self._roles: dict[str, LayerRole] = {}

    @contextlib.contextmanager
    def compute_importance(self, model: nn.Module) -> Iterator[ActivationImportance]:
        """Record input statistics of every target module of ``model`` while the block runs."""
        handles = [mod.register_forward_pre_hook(functools.partial(self._record, name))
                   for name, mod in model.named_modules() if isinstance(mod, self.target_types)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def _record(self, name: str, module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        rows = _channel_rows(module, args[0])
        self._add(name, rows)

    def _add(self, name: str, rows: torch.Tensor) -> None:
        for store, v in ((self._sum, rows.abs().sum(0)), (self._signed, rows.sum(0))):
            store[name] = store[name] + v if name in store else v
        self._n[name] = self._n.get(name, 0) + rows.shape[0]

    def _stat_fields(self) -> dict[str, str]:
        """The statistics :meth:`all_reduce` sums over ranks (``"count"``: ints; ``"sum"``: tensors)."""
        return {"_sum": "sum", "_signed": "sum", "_n": "count"}

    def all_reduce(self, group: object = None, *, model: nn.Module | None = None) -> ActivationImportance:
        """Sum this rank's statistics with every other rank's of ``group`` (a ``torch.distributed``
        collective: ``None`` is the default group, ``"auto"`` reduces only when one with several ranks is
        initialised): each rank then holds what one process recording all the ranks' batches holds. See
        :func:`fxprune.distributed.all_reduce_importance`.

        Example:
            >>> import torch, fxprune.importance as imp
            >>> imp.ActivationImportance().all_reduce("auto")._n  # no process group: unchanged
            {}
        """
        from .distributed import all_reduce_importance
        return all_reduce_importance(self, group, model=model)

    def input_means(self) -> dict[str, torch.Tensor]:
        """``{module qualified name: signed mean input vector}`` over every recorded token / position.

        Example:
            >>> import torch, fxprune.importance as imp
            >>> m = torch.nn.Sequential(torch.nn.Linear(2, 1))
            >>> a = imp.ActivationImportance()
            >>> with a.compute_importance(m):
            ...     _ = m(torch.tensor([[1., -2.], [3., 0.]]))
            >>> a.input_means()["0"]
            tensor([ 2., -1.])
        """
        return {k: (s / self._n[k]).float() for k, s in self._signed.items()}

    def _require_data(self) -> None:
        if not self._n:
            raise PlanError(f"{type(self).__name__} has no calibration data: run "
                            "`with imp.compute_importance(model): model(batch)` or fxprune.calibrate(model, "
                            "batches, imp) before scoring")

    def _layer_rows(self, group: Group, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        self._require_data()
        self._roles = layer_roles(model)
        return super()._layer_rows(group, model)

    def fallback_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module | None
                       ) -> torch.Tensor | None:
        """Classes no conv/linear reads as input (an ``nn.MultiheadAttention`` projection): L2 magnitude."""
        return _rows(tensor, dim).pow(2).sum(1)

    def _in_dim(self, name: str, module: nn.Module) -> int:
        role = self._roles.get(name)
        return 0 if (role.transposed if role is not None else getattr(module, "transposed", False)) else 1

    def _channel_stat(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module,
                      stat: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-index statistic of the layer's input channels along ``dim`` of its weight (None unless ``dim``
        is the in-channel dim and the layer was seen)."""
        role = self._roles.get(name)
        prefix = name.rpartition(".")[0]
        if dim != self._in_dim(name, module):
            return None
        if prefix not in stat:
            self._tell(f"unseen:{prefix}", "%s: module %r saw no calibration input; its channels are scored "
                       "by L2 magnitude instead", type(self).__name__, prefix, level=logging.WARNING)
            return None
        value = stat[prefix]
        seen = getattr(module, "in_features" if role is not None and issubclass(role.kind, nn.Linear) else
                       "in_channels", None)
        if value.numel() % tensor.shape[dim] or (isinstance(seen, int) and seen != value.numel()):
            _check_stale(type(self).__name__, name, (value.numel(),), (seen or tensor.shape[dim],),
                         "the input of ")
        if value.numel() != tensor.shape[dim]:  # grouped conv: input channel c uses weight column c % (C / g)
            value = value.reshape(-1, tensor.shape[dim]).sum(0)
        return value

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module
                    ) -> torch.Tensor | None:
        means = {k: s / self._n[k] for k, s in self._sum.items()}
        return self._channel_stat(name, dim, tensor, module, means)


class FluctuationImportance(ActivationImportance):
    """FLAP's fluctuation metric: input channel ``j`` of a layer ``W`` scores ``Var(x_j) * ||W[:, j]||^2``.

    ``Var`` is the population variance of the channel over every recorded token (linear) or position (conv),
    kept as a running mean and sum of squared deviations merged batch by batch (Chan et al.), so many batches
    add up without cancellation. A channel whose input hardly varies carries a near-constant share of the
    output: removing it and adding its mean contribution to the bias (``compensate=``) changes little. Scores
    come from the group's in-channel entries, as :class:`ActivationImportance`; for a grouped conv the
    variances of the channels that share a weight column add up.

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> f = imp.get_importance("fluctuation", normalizer=None)
        >>> with f.compute_importance(m):
        ...     _ = m(torch.randn(8, 2))
        ...     _ = m(torch.randn(8, 2))
        >>> f(g, m).shape, f._n["2"]
        (torch.Size([3]), 16)
    """

    def reset(self) -> None:
        """Forget every recorded batch."""
        super().reset()
        self._mean: dict[str, torch.Tensor] = {}
        self._m2: dict[str, torch.Tensor] = {}  # sum of squared deviations from the running mean

    def _add(self, name: str, rows: torch.Tensor) -> None:
        nb = rows.shape[0]
        if nb == 0:
            return
        mb = rows.mean(0)
        m2b = (rows - mb).pow(2).sum(0)
        na = self._n.get(name, 0)
        if na == 0:
            self._mean[name], self._m2[name] = mb, m2b
        else:
            n = na + nb
            delta = mb - self._mean[name]
            self._mean[name] = self._mean[name] + delta * (nb / n)
            self._m2[name] = self._m2[name] + m2b + delta.pow(2) * (na * nb / n)
        super()._add(name, rows)

    def _stat_fields(self) -> dict[str, str]:
        # mean and squared deviations are merged in _finish_reduce, around the global mean
        return {**super()._stat_fields(), "_mean": "merge", "_m2": "merge"}

    def _finish_reduce(self, red, local: dict, specs: dict) -> None:
        """Merge the ranks' variances (Chan et al.): ``M2 = sum_r M2_r + n_r (mean_r - mean)^2`` with the
        global ``mean = sum x / n`` (``_signed`` and ``_n`` are already global here)."""
        mean = {k: self._signed[k] / max(self._n[k], 1) for k in specs["_m2"]}
        part = {k: m2 + local["_n"][k] * (local["_mean"][k] - mean[k].to(m2.device)).pow(2)
                for k, m2 in local["_m2"].items()}
        self._m2 = red.sum(part, specs["_m2"])
        self._mean = {k: mean[k].to(self._m2[k].dtype) for k in sorted(specs["_m2"])}

    def input_means(self) -> dict[str, torch.Tensor]:
        return {k: m.float() for k, m in self._mean.items()}

    def variances(self) -> dict[str, torch.Tensor]:
        """``{module qualified name: population variance of each input channel}``."""
        return {k: m2 / self._n[k] for k, m2 in self._m2.items()}

    def layer_score(self, name: str, dim: int, tensor: torch.Tensor, module: nn.Module
                    ) -> torch.Tensor | None:
        var = self._channel_stat(name, dim, tensor, module, self.variances())
        if var is None:
            return None
        return var * _rows(tensor, dim).double().pow(2).sum(1)
