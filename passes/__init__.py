"""fxprune's stages as ``torch.fx`` passes, for ``torch.fx.passes.infra.pass_manager.PassManager``.

Example:
    >>> import torch, fxprune
    >>> from torch.fx.passes.infra.pass_manager import PassManager
    >>> from fxprune.passes import prune_passes
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> pm = PassManager(passes=prune_passes(fxprune.PrunePlan({"0.weight:0": [1]}), (x,)))
    >>> pm(torch.fx.symbolic_trace(m)).graph_module.get_submodule("0").out_channels
    7
"""
from .stages import (
    AnnotateShapesPass,
    ApplyPlanPass,
    BuildChannelGraphPass,
    CleanupPass,
    PropagatePass,
    prune_passes,
)

__all__ = ["AnnotateShapesPass", "BuildChannelGraphPass", "PropagatePass", "ApplyPlanPass", "CleanupPass",
           "prune_passes"]
