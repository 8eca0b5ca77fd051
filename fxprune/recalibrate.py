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

__all__ = ["image_batches", "recalibrate_bn"]

log = logging.getLogger(__name__)


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".gif")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_batches(directory: str, size: int, batch_size: int = 32, mean: tuple = _IMAGENET_MEAN,
                  std: tuple = _IMAGENET_STD, limit: int | None = None) -> list[torch.Tensor]:
    """The images of ``directory`` (sorted by name; jpg/png/webp/gif) as normalised ``[B, 3, size, size]``
    batches: shorter side resized to ``size``, centre crop, ImageNet mean/std by default.

    Example:
        >>> import tempfile, PIL.Image
        >>> d = tempfile.mkdtemp()
        >>> PIL.Image.new("RGB", (60, 40)).save(f"{d}/a.png")
        >>> [tuple(b.shape) for b in image_batches(d, 32)]
        [(1, 3, 32, 32)]
    """
    import os

    import PIL.Image
    from torchvision.transforms.v2 import functional as TF

    if not os.path.isdir(directory):
        raise ShapeInfoError(f"calibration images: {directory!r} is not a directory")
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(_IMAGE_EXT))[:limit]
    if not names:
        raise ShapeInfoError(f"calibration images: no {'/'.join(_IMAGE_EXT)} files in {directory!r}")
    images = []
    for n in names:
        try:
            with PIL.Image.open(os.path.join(directory, n)) as f:
                img = TF.pil_to_tensor(f.convert("RGB"))
        except Exception as e:  # a corrupt or unsupported file names itself
            raise ShapeInfoError(f"calibration images: cannot read {n!r}: {e}") from e
        img = TF.center_crop(TF.resize(img, [size], antialias=True), [size, size])
        images.append(TF.normalize(img.float() / 255.0, list(mean), list(std)))
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


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
