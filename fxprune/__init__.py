"""fxprune: structural pruning of PyTorch models as a torch.fx compiler pass.

Example:
    >>> import torch, torchvision, fxprune
    >>> model, x = torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)
    >>> graph = fxprune.analyze(model, x)
    >>> plan = fxprune.plan_by_ratio(graph, 0.5)
    >>> small = fxprune.prune(model, plan, x)
    >>> fxprune.verify(model, small, plan, x).max_abs_diff < 1e-3
    True
"""
from .analyze import ChannelGraph, Group, analyze
from .errors import (
    CouplingConflictError,
    FallbackWarning,
    FxpruneError,
    InternalError,
    PlanError,
    RewriteError,
    ShapeInfoError,
    TraceError,
    UnsupportedOpError,
    VerificationError,
)
from .frontend import Inputs, trace
from .plan import PrunePlan
from .pruner import Pruner, Proposal, linear_scheduler
from .rewrite import prune
from .select import plan_by_ratio
from .verify import VerifyReport, verify

__all__ = [
    "Inputs", "trace", "analyze", "prune", "verify", "plan_by_ratio", "PrunePlan", "ChannelGraph", "Group",
    "Pruner", "Proposal", "linear_scheduler", "importance",
    "VerifyReport", "FxpruneError", "TraceError", "ShapeInfoError", "UnsupportedOpError",
    "CouplingConflictError", "FallbackWarning", "PlanError", "RewriteError", "VerificationError", "InternalError",
]

from . import importance  # noqa: E402  (criteria; fxprune.importance.MagnitudeImportance, ...)
from . import hf  # noqa: E402  (Hugging Face write-back: fxprune.hf.save_pretrained, ...)
from .sparse import BNScalePruner, GroupNormPruner, GrowingRegPruner  # noqa: E402
from .count import count  # noqa: E402
from .recalibrate import recalibrate_bn  # noqa: E402

__all__ += ["count", "recalibrate_bn", "BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]

from .errors import SerializationError  # noqa: E402
from .saving import load, save  # noqa: E402  (portable saved models: torch.export .pt2 + plan + weights)

__all__ += ["save", "load", "SerializationError"]

from .calibrate import calibrate, lm_loss  # noqa: E402  (calibration batches -> importance statistics)
from .errors import DistributedError  # noqa: E402
from . import distributed  # noqa: E402  (statistics reduced over torch.distributed ranks)

__all__ += ["calibrate", "lm_loss", "DistributedError", "distributed"]

__version__ = "0.1.0"
