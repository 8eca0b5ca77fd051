"""The one error hierarchy of fxprune.

Every error names the FX node (``node.format_node()``) or the parameter it is about, and the user's
source line when the tracer recorded one.

Example:
    >>> import fxprune
    >>> try:
    ...     fxprune.PrunePlan({"conv.weight:0": [-1]})
    ... except fxprune.PlanError as e:
    ...     print(type(e).__name__)
    PlanError
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch.fx

__all__ = [
    "FxpruneError", "TraceError", "ShapeInfoError", "UnsupportedOpError", "CouplingConflictError",
    "PlanError", "MetaTensorError", "RewriteError", "VerificationError", "SerializationError",
    "InternalError", "DistributedError", "FallbackWarning",
    "describe_node",
]


def describe_node(node: Optional[torch.fx.Node]) -> str:
    """A one-line description of ``node`` with the user's source line when it is known."""
    if node is None:
        return "<no node>"
    text = node.format_node() or node.name
    trace = node.meta.get("stack_trace") if hasattr(node, "meta") else None
    if trace:
        lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
        # The last "File ..." line and the code under it are the user's own source line.
        # The last frame outside torch is the user's line (ops dispatched through __torch_function__
        # add torch/fx frames after it).
        files = [i for i, ln in enumerate(lines) if ln.startswith("File ")
                 and "/torch/" not in ln.split(",")[0]] or [i for i, ln in enumerate(lines) if ln.startswith("File ")]
        if files:
            i = files[-1]
            src = lines[i] + (f": {lines[i + 1]}" if i + 1 < len(lines) else "")
            text += f"  [{src}]"
    return text


class FxpruneError(Exception):
    """Base class of every error fxprune raises on purpose."""

    def __init__(self, message: str, node: Optional[torch.fx.Node] = None):
        self.node = node
        if node is not None:
            message = f"{message}\n  at node: {describe_node(node)}"
        super().__init__(message)


class TraceError(FxpruneError):
    """The model could not be traced into an FX graph."""


class ShapeInfoError(FxpruneError):
    """Shapes could not be propagated (wrong example inputs, or an op failed on meta tensors)."""


class UnsupportedOpError(FxpruneError):
    """An op has no rule and ``strict=True`` was asked for."""


class CouplingConflictError(FxpruneError):
    """Two rules demand incompatible couplings of the same dimension."""


class PlanError(FxpruneError):
    """A PrunePlan is invalid for this model (unknown key, bad indices, pinned or emptied group)."""


class MetaTensorError(PlanError):
    """A criterion needs tensor values, but a parameter it reads lives on the ``meta`` device (no data);
    rank by structure (``importance="structure"``) or by scores computed elsewhere instead."""


class RewriteError(FxpruneError):
    """The graph could not be rewritten for a plan."""


class VerificationError(FxpruneError):
    """The pruned model does not compute what the masked original computes."""


class SerializationError(FxpruneError):
    """A saved model could not be written or read back (``fxprune.save`` / ``fxprune.load``)."""


class DistributedError(FxpruneError):
    """The ranks of a ``torch.distributed`` group disagree (different models, criteria or statistics), or one
    of them failed while the others waited for it (``fxprune.calibrate(..., process_group=...)``)."""


class InternalError(FxpruneError):
    """A bug in fxprune: please report it with the model that triggered it."""


class FallbackWarning(UserWarning):
    """``symbolic_trace`` failed on the model: only its traceable submodules are analysed and pruned."""


_INTERNAL = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
             os.path.join("torch", "fx", "passes", "infra") + os.sep)


def user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called here that points at the first frame outside fxprune (and
    the pass manager running its passes): the user's call."""
    passes = sys.modules.get("fxprune.passes")  # its own folder in a source checkout (package-dir mapping)
    own = (_INTERNAL[0],) + ((os.path.dirname(os.path.abspath(passes.__file__)) + os.sep,)
                             if passes is not None and getattr(passes, "__file__", None) else ())
    f, level = sys._getframe(1), 1
    while f is not None and (os.path.abspath(f.f_code.co_filename).startswith(own)
                             or _INTERNAL[1] in f.f_code.co_filename):
        f, level = f.f_back, level + 1
    return level
