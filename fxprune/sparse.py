"""Pruners with sparse training: Torch-Pruning's ``BNScalePruner``, ``GroupNormPruner`` and
``GrowingRegPruner``, built on the regularizers of :mod:`fxprune.regularize`.

Train with ``loss.backward(); pruner.regularize(model); optimizer.step()``, call
``pruner.update_regularizer()`` after a pruning step (and, for growing regularization, ``update_reg()``
every few iterations), then ``pruner.step()`` as with :class:`fxprune.Pruner`.

Example:
    >>> import torch, torchvision, fxprune
    >>> model, x = torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)
    >>> pruner = fxprune.BNScalePruner(model, x, reg=1e-3, ignored_layers=[model.fc])
    >>> model(x).sum().backward()
    >>> before = model.bn1.weight.grad.clone()
    >>> pruner.regularize(model)
    >>> torch.allclose(model.bn1.weight.grad - before, 1e-3 * model.bn1.weight.detach().sign(), atol=1e-4)
    True
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch.nn as nn

from . import importance as imp
from .pruner import Pruner
from .regularize import BNScaleRegularizer, GroupLassoRegularizer, GrowingRegularizer

__all__ = ["BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]


class BNScalePruner(Pruner):
    """Network slimming: L1 on BatchNorm scales during training; prunes by BN scale by default."""

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-5,
                 **kwargs: Any):
        super().__init__(model, example_inputs, importance or imp.BNScaleImportance(), **kwargs)
        self.reg = reg
        self.update_regularizer()

    def update_regularizer(self) -> None:
        """Rebuild the regularizer for the current (possibly pruned) model."""
        self.regularizer = BNScaleRegularizer(self.model, self.reg, ignored=self.ignored_modules)

    def regularize(self, model: nn.Module) -> None:
        """Add the L1 subgradient to BatchNorm weight gradients of ``model`` (after ``backward``)."""
        self.regularizer.regularize(model)


class GroupNormPruner(Pruner):
    """DepGraph's group-norm sparsity: a class-weighted L2 penalty over whole groups."""

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-4,
                 alpha: float = 4.0, **kwargs: Any):
        super().__init__(model, example_inputs, importance, **kwargs)
        self.reg, self.alpha = reg, alpha
        self.update_regularizer()

    def update_regularizer(self) -> None:
        """Re-analyse the current model and rebuild the per-class slices."""
        self.regularizer = GroupLassoRegularizer(self._analyze(), self.reg, self.alpha)

    def regularize(self, model: nn.Module) -> None:
        """Add ``reg * γ_c * W`` to every parameter slice of every removable class (after ``backward``)."""
        self.regularizer.regularize(model)


class GrowingRegPruner(Pruner):
    """Growing regularization: per-class L2 coefficients that grow for unimportant classes."""

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, reg: float = 1e-5,
                 delta_reg: float = 1e-5, **kwargs: Any):
        super().__init__(model, example_inputs, importance, **kwargs)
        self.reg, self.delta_reg = reg, delta_reg
        self.update_regularizer()

    def update_regularizer(self) -> None:
        """Re-analyse the current model; every coefficient restarts at ``reg``."""
        self._graph = self._analyze()
        self.regularizer = GrowingRegularizer(self._graph, self.reg, self.delta_reg)

    def update_reg(self, scores: Optional[Mapping[str, Sequence[float]]] = None) -> None:
        """Grow coefficients from ``scores`` (group key -> per-class importance), by default the
        pruner's importance criterion on the current weights."""
        if scores is None:
            scores = {}
            for g in self._graph.groups:
                if g.key in self.regularizer.gamma:
                    s = self.importance(g, self.model)
                    if s is not None and s.ndim == 1 and len(s) == len(g.all_classes):
                        scores[g.key] = s.tolist()
        self.regularizer.update_reg(scores, self.model)

    def regularize(self, model: nn.Module) -> None:
        """Add ``γ_c * W`` to every parameter slice of every class ``c`` (after ``backward``)."""
        self.regularizer.regularize(model)
