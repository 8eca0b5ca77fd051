"""The op-rule registry: one rule per FX op, keyed by ``(op, target)``.

``target`` is the module class for ``call_module`` (looked up along the MRO), the function object for
``call_function`` (torch-level and aten-level targets may be registered side by side) and the method
name for ``call_method``.

Example:
    >>> import torch
    >>> from fxprune.registry import lookup
    >>> lookup("call_module", torch.nn.Conv2d).name
    'conv'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

if TYPE_CHECKING:
    from .context import LowerFn, MaskedFn, RewriteFn

__all__ = ["Rule", "register", "lookup", "RULES"]


@dataclass(frozen=True)
class Rule:
    """How one op family couples dims (``lower``) and how its constants change (``rewrite``).

    All three take the context first and the node second (:mod:`fxprune.context`):
    ``lower(ctx, node)`` declares couplings and pins on a :class:`~fxprune.context.LowerContext`;
    ``rewrite(ctx, node)`` (optional) updates the node's constant arguments or its module's attributes
    after parameters were sliced (a :class:`~fxprune.context.RewriteContext`); ``masked_eval(ctx, node,
    args, kwargs)`` (optional) computes the node over kept channels only, for ops whose statistics depend on
    the pruned dim (LayerNorm), for verify (a :class:`~fxprune.context.MaskedContext`).
    """

    name: str
    lower: "LowerFn"
    rewrite: Optional["RewriteFn"] = None
    masked_eval: Optional["MaskedFn"] = None


RULES: Dict[Tuple[str, Any], Rule] = {}


def register(op: str, targets: Iterable[Any], name: str, lower: "LowerFn",
             rewrite: Optional["RewriteFn"] = None, masked_eval: Optional["MaskedFn"] = None) -> Rule:
    """Register one rule for several targets of the same FX ``op``; a later registration wins."""
    rule = Rule(name, lower, rewrite, masked_eval)
    for t in targets:
        RULES[(op, t)] = rule
    return rule


def lookup(op: str, target: Any) -> Optional[Rule]:
    """The rule for an FX node's ``(op, target)``, or None when no rule is known."""
    if op == "call_module":
        for cls in getattr(target, "__mro__", (target,)):
            rule = RULES.get((op, cls))
            if rule is not None:
                return rule
        return None
    try:
        return RULES.get((op, target))
    except TypeError:  # unhashable target
        return None
