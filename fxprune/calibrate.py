"""``calibrate``: run calibration batches through a model and accumulate an importance criterion's statistics.

Forward-recorded criteria (:class:`~fxprune.importance.ActivationImportance`,
:class:`~fxprune.importance.FluctuationImportance`) see every batch under ``no_grad``; gradient criteria
(:class:`~fxprune.importance.TaylorImportance`, :class:`~fxprune.importance.HessianImportance`) get one
``accumulate_grad`` per batch after the backward of ``loss_fn(model, batch)``. For a Hugging Face causal LM
the loss defaults to the language-model loss of the batch's own tokens.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> imp = fxprune.calibrate(m, [torch.randn(5, 4) for _ in range(3)], "fluctuation", progress=False)
    >>> imp.input_means()["2"].shape, imp._n["2"]
    (torch.Size([8]), 15)
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from .distributed import all_reduce_importance, resolve_group
from .errors import PlanError, user_stacklevel
from .frontend import Inputs, call_model
from .progress import Progress

__all__ = ["calibrate", "lm_loss"]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _call(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one batch: a tensor, a tuple of positional inputs, a dict of keywords, ``Inputs``."""
    if isinstance(batch, dict):
        return model(**batch)
    return call_model(model, batch)


def _ids_and_kwargs(batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The token ids of a causal-LM batch and the other keyword inputs."""
    if isinstance(batch, torch.Tensor):
        return batch, {}
    if isinstance(batch, dict):
        kwargs = dict(batch)
        ids = kwargs.pop("input_ids", None)
    elif isinstance(batch, Inputs):
        kwargs = dict(batch.kwargs)
        ids = batch.args[0] if batch.args else kwargs.pop("input_ids", None)
    elif isinstance(batch, (tuple, list)) and batch:
        ids, kwargs = batch[0], {}
    else:
        ids, kwargs = None, {}
    if not isinstance(ids, torch.Tensor):
        raise PlanError(f"the default causal-LM loss needs token ids in each batch (a tensor, a tuple "
                        f"starting with one, a dict with 'input_ids' or fxprune.Inputs); got "
                        f"{type(batch).__name__}")
    return ids, kwargs


def lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The language-model loss of a Hugging Face causal LM on a batch of token ids:
    ``model(input_ids, labels=input_ids).loss`` (a batch's own ``labels`` win).

    Example:
        >>> import torch, transformers, fxprune
        >>> cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                                num_attention_heads=2, vocab_size=50)
        >>> m = transformers.LlamaForCausalLM(cfg)
        >>> fxprune.lm_loss(m, torch.randint(0, 50, (1, 6))).ndim
        0
    """
    ids, kwargs = _ids_and_kwargs(batch)
    kwargs.setdefault("labels", ids)
    return model(ids, **kwargs).loss


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face model with a language-model loss: it has a ``config`` and its forward takes ``labels``
    (and it is not an encoder-decoder, whose decoder inputs the batch does not give)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        return "labels" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _total(batches: Iterable[Any], max_batches: Optional[int]) -> Optional[int]:
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


def calibrate(model: nn.Module, batches: Iterable[Any], importance: Any, *, loss_fn: Optional[LossFn] = None,
              max_batches: Optional[int] = None, progress: bool = True, process_group: Any = None) -> Any:
    """Accumulate ``importance``'s statistics over ``batches``; return the importance.

    Args:
        model: the model to score (the one whose groups the importance will score).
        batches: an iterable of batches: tensors, tuples of positional inputs, dicts of keyword inputs, or
            :class:`fxprune.Inputs`.
        importance: a criterion object or a registered name (``"fluctuation"``, ``"activation"``,
            ``"taylor"``, ``"hessian"``). Forward-recorded criteria run under ``no_grad``; gradient criteria
            call ``accumulate_grad(model)`` after each batch's backward.
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` for gradient criteria; default for a Hugging Face
            causal LM: :func:`lm_loss`. Any other model needs one (:class:`~fxprune.errors.PlanError`).
        max_batches: stop after this many batches.
        progress: a tqdm bar on stderr (a log line every ~10 % without tqdm); on rank 0 only when reducing.
        process_group: reduce the statistics over ``torch.distributed`` ranks once every rank has run its
            own ``batches`` (its shard of the calibration data): ``"auto"`` reduces over the default group
            when one with several ranks is initialised, a ``ProcessGroup`` over that group, ``None`` (the
            default) never: each rank keeps its own statistics, with a warning when several ranks are
            initialised. After the reduction every rank holds what one process running all the ranks'
            batches holds (up to float rounding) and so ranks the same channels; ranks may have different
            numbers of batches (even none) and see different layers. Every rank of the group must call
            ``calibrate`` (it is a collective); different models or criteria, or a rank whose batches fail,
            raise :class:`~fxprune.errors.DistributedError` on the other ranks instead of hanging. See
            :mod:`fxprune.distributed`.

    The model runs in eval mode (no dropout, no BatchNorm statistics updated); its training flags and every
    parameter's ``.grad`` are restored afterwards. A criterion with nothing to record (magnitude) is returned
    as it is, with a warning.

    ``process_group`` defaults to ``None`` rather than ``"auto"`` because a process that calibrates alone
    under an initialised group (pruning on rank 0 only, a common pattern) would otherwise wait forever for
    ranks that never call ``calibrate``.
    """
    from .importance import get_importance

    if isinstance(importance, str):
        importance = get_importance(importance)
    name = type(importance).__name__
    recorded = callable(getattr(importance, "compute_importance", None))
    gradient = callable(getattr(importance, "accumulate_grad", None))
    if not recorded and not gradient:
        warnings.warn(f"fxprune.calibrate: {name} records nothing from data (it reads only the weights); "
                      "the batches were not run", stacklevel=user_stacklevel())
        return importance
    if max_batches is not None and max_batches < 1:
        raise PlanError(f"max_batches must be a positive integer, got {max_batches}")
    if gradient and not recorded and loss_fn is None:
        if not is_causal_lm(model):
            raise PlanError(f"{name} needs a loss to differentiate and {type(model).__name__} has none "
                            "fxprune knows (only Hugging Face causal LMs have a default): pass "
                            "loss_fn=lambda model, batch: <scalar loss>")
        loss_fn = lm_loss
    group = resolve_group(process_group)
    if group is None and process_group is None:
        _warn_unreduced()
    if group is not None and torch.distributed.get_rank(group) != 0:
        progress = False
    params = list(model.parameters())
    grads = [p.grad for p in params]
    flags = {m: m.training for m in model.modules()}
    bar = Progress(_total(batches, max_batches), progress, f"fxprune.calibrate ({name})")
    failed: Optional[Exception] = None
    try:
        model.eval()
        with contextlib.ExitStack() as stack:
            if recorded:
                stack.enter_context(torch.no_grad())
                stack.enter_context(importance.compute_importance(model))
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                if recorded:
                    _call(model, batch)
                else:
                    _backward(model, params, batch, loss_fn)
                    importance.accumulate_grad(model)
                bar.update()
    except Exception as e:
        if group is None:
            raise
        failed = e  # the other ranks must hear of it before they wait in the reduction
    finally:
        bar.close()
        for m, t in flags.items():
            m.training = t
        for p, g in zip(params, grads):
            p.grad = g
    if group is not None:
        return all_reduce_importance(importance, group, model=model, error=failed, batches=bar.done)
    if bar.done == 0:
        raise PlanError("fxprune.calibrate: `batches` gave no batch")
    return importance


_warned_unreduced = False


def _warn_unreduced() -> None:
    """One warning per process: several ranks calibrate, each on its own data only."""
    global _warned_unreduced
    dist = torch.distributed
    if _warned_unreduced or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    _warned_unreduced = True
    warnings.warn(f"fxprune.calibrate: torch.distributed is initialised with {dist.get_world_size()} ranks "
                  "but process_group=None: this rank's statistics are its own batches' only; pass "
                  "process_group='auto' to sum them over the ranks before ranking",
                  stacklevel=user_stacklevel())


def _backward(model: nn.Module, params: list, batch: Any, loss_fn: LossFn) -> None:
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PlanError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
        loss.reshape(()).backward()
