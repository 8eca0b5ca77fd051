"""What a frontend captured and how a plan reaches it: ``ChannelGraph.source``.

Every frontend returns a :class:`~fxprune.analyze.ChannelGraph` over one channel IR; what differs is how the
IR maps back onto the user's model. A model captured as one graph (the ``fx`` and ``export`` frontends)
has a :class:`GraphSource`: plan keys are that graph's names, ``apply`` rewrites the graph (or builds the
user's own class from it) and ``verify`` runs it with the removed channels zeroed. A model captured in parts
(``parts``, ``autograd``) has a :class:`~fxprune.frontend.partial.PartsSource`, which resolves full-model
names to the part holding them, prunes part by part and verifies with the parts masked in the real model.
The graph delegates to its source; nothing branches on the graph's type.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> graph = fxprune.analyze(m, torch.randn(1, 4))
    >>> type(graph.source).__name__, graph.parts, graph.untraced, graph.recorded, graph.stitched
    ('GraphSource', [], [], [], 0)
"""
from __future__ import annotations

from typing import Any, List, Set, Tuple

import torch

__all__ = ["GraphSource"]


class GraphSource:
    """The source of a model captured as one graph (fx, export): no parts, nothing left untraced.

    Subclasses (the parts frontend's) override :meth:`resolve`, :meth:`apply`, :meth:`verify` and
    :meth:`describe`, and fill the attributes ``parts``, ``untraced``, ``recorded`` and ``stitched``.
    """

    #: a budget search may read MACs and parameters of a candidate plan off the IR (:mod:`fxprune.ircount`)
    counts_from_ir = True

    def __init__(self) -> None:
        self.parts: List[Any] = []                 # traced submodules (fxprune.frontend.partial.Part)
        self.untraced: List[Tuple[str, str]] = []  # (module path, reason) of Python forwards left as they are
        self.recorded: List[str] = []              # module paths recorded below Python (autograd frontend)
        self.stitched = 0                          # part interfaces coupled across the Python between them
        self.stitched_paths: Set[str] = set()      # parts with a stitched interface

    def resolve(self, name: str, dim: int) -> str:
        """The IR's name of parameter/buffer ``name`` (a plan key's name); PlanError when it has none."""
        return name

    def apply(self, graph: Any, plan: Any, model: torch.nn.Module, example_inputs: Any, inplace: bool,
              output: str) -> torch.nn.Module:
        """:meth:`ChannelGraph.apply <fxprune.analyze.ChannelGraph.apply>` for one traced graph."""
        from ..rewrite import apply_plan

        if graph.frontend == "export" or output == "module":
            from ..targets.module import prune_to_module
            return prune_to_module(graph, plan, model, example_inputs, output, inplace)
        return apply_plan(graph, plan, model, inplace=inplace)

    def verify(self, graph: Any, small: torch.nn.Module, plan: Any, args: Any, atol: float, rtol: float,
               comps: Any = None) -> Any:
        """:meth:`ChannelGraph.verify <fxprune.analyze.ChannelGraph.verify>`: the masked run of the graph."""
        from ..verify import verify_graph

        fills = None
        if comps:
            from ..compensate import input_fills
            fills = input_fills(graph, comps)
        return verify_graph(graph, small, plan, args, atol, rtol, fills)

    def describe(self) -> str:
        """What ``repr(graph)`` adds about the capture ("" for one graph)."""
        return ""
