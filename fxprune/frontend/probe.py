"""Does a model decide on tensor values? One real forward that watches for it, before ``torch.export``.

``torch.export`` cannot take a forward whose shapes follow its values (``torch.where(mask)``, ``nonzero``,
``unique``, ``x[x > 0]``: detectors' post-processing); on a detector it fails only at the end of the model,
after tracing all of it (tens of seconds). A plain forward under a
:class:`~torch.overrides.TorchFunctionMode` finds the first such call in the time of one inference, so
``frontend="auto"`` goes to the parts frontend directly.

Example:
    >>> import torch
    >>> class Positive(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x[x > 0]
    >>> value_dependence(Positive(), (torch.ones(2),))
    'indexing by a boolean mask'
    >>> value_dependence(torch.nn.Linear(2, 2), (torch.ones(2),)) is None
    True
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["value_dependence"]

# calls whose output shape depends on the values of their input (a branch on a value, ``if mask.all()``, is
# not enough: Hugging Face models take one in eager mode and another one under torch.export)
_DEPENDENT = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"})


def _bool_index(args: tuple) -> bool:
    idx = args[1] if len(args) > 1 else None
    items = idx if isinstance(idx, (tuple, list)) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _Watch(TorchFunctionMode):
    def __init__(self, params: set[int]):
        super().__init__()
        self.params = params
        self.found: Optional[str] = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.found is None:
            name = getattr(func, "__name__", "")
            dependent = (name in _DEPENDENT or (name == "where" and len(args) + len(kwargs) == 1)
                         or (name == "__getitem__" and _bool_index(args)))
            if dependent and not (args and id(args[0]) in self.params):
                self.found = "indexing by a boolean mask" if name == "__getitem__" else f"torch.{name}"
        return func(*args, **kwargs)


def value_dependence(model: torch.nn.Module, example_inputs: Any) -> Optional[str]:
    """The first call in ``model``'s eval-mode forward whose outcome depends on tensor values, or None.

    A forward that fails returns None: the caller's own frontends report that failure.
    """
    from .export import call_model

    params = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    flags = {m: m.training for m in model.modules()}
    watch = _Watch(params)
    try:
        model.eval()
        with torch.no_grad(), watch:
            call_model(model, example_inputs)
    except Exception:  # noqa: BLE001 - not this probe's to report
        return None
    finally:
        for m, t in flags.items():
            m.training = t
    return watch.found
