"""Re-estimate BatchNorm statistics of a pruned model from a few unlabelled batches.

Pruning removes channels, so the activations a BatchNorm sees change (its input's channel mix, the
residual sums it normalises); its running mean and variance still describe the unpruned network. Running
a few hundred unlabelled images through the pruned model in train mode for the BatchNorms only (eval mode for
everything else, no gradients) re-estimates them — a retraining-free recovery.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    >>> _ = fxprune.recalibrate_bn(m, [torch.randn(8, 3, 6, 6) + 2.0 for _ in range(4)])
    >>> bool(m[1].running_mean.abs().sum() > 0), m.training
    (True, False)
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ShapeInfoError

__all__ = ["recalibrate_bn"]

log = logging.getLogger(__name__)


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """Reset and re-estimate the running statistics of every ``BatchNorm`` of ``model`` (in place; returned).

    ``batches`` yields model inputs: a tensor, a tuple/list of positional arguments or a dict of keyword
    arguments (labels are not needed). The running statistics become the plain average of every batch's
    mean and unbiased variance (``momentum=None``), so batch order does not matter. Every other module runs in eval mode
    (dropout off); training flags and momenta are restored afterwards. If a batch fails, the statistics are
    put back as they were and :class:`~fxprune.ShapeInfoError` is raised.

    Example:
        >>> import torch, fxprune
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> _ = fxprune.recalibrate_bn(bn, [torch.tensor([[1., 10.], [3., 30.]])])
        >>> bn.running_mean.tolist()
        [2.0, 20.0]
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m for m in bns if m.track_running_stats and m.running_mean is not None]
    if len(tracked) < len(bns):
        log.warning("recalibrate_bn: %d BatchNorm layer(s) track no running statistics (they normalise with "
                    "batch statistics) and are left alone", len(bns) - len(tracked))
    if not tracked:
        log.warning("recalibrate_bn: %s has no BatchNorm with running statistics; nothing to recalibrate",
                    type(model).__name__)
        return model
    saved = {id(m): (m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in tracked}
    flags = [(m, m.training) for m in model.modules()]
    n = 0
    try:
        model.eval()
        for m in tracked:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
            m.train()
        for batch in batches:
            if max_batches is not None and n >= max_batches:
                break
            try:
                _call(model, batch)
            except Exception as e:
                raise ShapeInfoError(f"recalibrate_bn: batch {n} failed in {type(model).__name__}: "
                                     f"{type(e).__name__}: {e}") from e
            n += 1
        if n == 0:
            raise ShapeInfoError("recalibrate_bn: no calibration batches were given")
    except BaseException:
        for m in tracked:  # the user's model is left as it was
            for k, v in saved[id(m)][1].items():
                getattr(m, k).copy_(v)
        raise
    finally:
        for m in tracked:
            m.momentum = saved[id(m)][0]
        for m, training in flags:
            m.training = training
    log.info("recalibrate_bn: re-estimated %d BatchNorm layer(s) from %d batch(es)", len(tracked), n)
    return model
