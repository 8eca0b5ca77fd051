"""``Pruner``: Torch-Pruning's high-level pruning loop, producing :class:`PrunePlan` s.

Every decision is a plan: each ``step()`` scores the removable classes of every group with an
importance criterion, picks classes (local or global ranking, ratio schedule, ``round_to``,
``max_pruning_ratio``, head pruning, or a MAC/parameter budget), and applies the plan with
:func:`fxprune.prune`. :attr:`Pruner.plan` is the cumulative plan in the *original* model's
coordinates: ``fxprune.prune(fresh_model, pruner.plan, inputs)`` rebuilds the same architecture and
weights.

Example:
    >>> import torch, torchvision, fxprune
    >>> model, x = torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)
    >>> pruner = fxprune.Pruner(model, x, pruning_ratio=0.5, ignored_layers=[model.fc])
    >>> small = pruner.step()
    >>> small.get_submodule("layer1.0.conv1").out_channels, small.get_submodule("layer4.0.conv1").out_channels
    (32, 256)
    >>> fxprune.verify(model, small, pruner.plan, x).max_abs_diff < 1e-4
    True
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from . import cache
from .analyze import ChannelGraph, Group, analyze
from .budget import fit_budget, resolve_target
from .gcpause import no_gc
from .errors import MetaTensorError, PlanError, user_stacklevel
from .record import record_of
from .plan import PrunePlan, make_key, parse_key
from .rewrite import _prune
from .pruner_state import (_Cand, _Guard, _KeptIndices, _check_ratio, _gqa_layout, _groups_inside_heads,
                           _head_key, _is_hf_causal_lm, _is_transformers, _on_meta, _out_dim, _signature,
                           _tensor, _valid_picks)
from .select import valid_prefix

__all__ = ["Pruner", "Proposal", "linear_scheduler"]

log = logging.getLogger(__name__)

Ratio = float
ModuleKey = Union[nn.Module, Tuple[nn.Module, ...]]


def linear_scheduler(ratio: float, steps: int) -> List[float]:
    """Ratios after each of ``steps`` steps, linear from 0: ``[0, r/steps, 2r/steps, ..., r]``.

    Example:
        >>> [round(r, 6) for r in linear_scheduler(0.6, 3)]
        [0.0, 0.2, 0.4, 0.6]
    """
    return [ratio * i / steps for i in range(steps + 1)]


@dataclass
class Proposal:
    """One group's proposed removal in interactive mode: ``indices`` is a plan fragment
    ``{member key: [indices]}`` (any member works; it is expanded to whole classes). Call
    :meth:`accept` (optionally with changed indices) to keep it; proposals not accepted are skipped."""

    group: Group
    indices: Dict[str, List[int]]
    scores: Optional[np.ndarray] = None
    accepted: bool = field(default=False, repr=False)

    def accept(self, indices: Optional[Mapping[str, Sequence[int]]] = None) -> None:
        if indices is not None:
            self.indices = {k: [int(i) for i in v] for k, v in indices.items()}
        self.accepted = True

    def __iter__(self) -> Iterator[Any]:  # ``for group, idx in pruner.step(interactive=True)``
        return iter((self.group, self.indices))


class Pruner:
    """Score, select and remove channel classes; Torch-Pruning's option names where meanings match.

    Args:
        model: the model to prune (never mutated; each step returns a new, smaller model).
        example_inputs: a tensor or a tuple of positional inputs.
        importance: an :mod:`fxprune.importance` criterion, or its name. Default: L2 magnitude, except for a
            Hugging Face causal LM: :class:`~fxprune.importance.FluctuationImportance` calibrated on the
            example inputs (recalibrated on the current model before each step; a warning says so, as real
            text through :func:`fxprune.calibrate` scores better).
        pruning_ratio: share of each group's removable classes to remove (of its initial count).
        global_pruning: rank all groups' normalised scores together instead of per group.
        pruning_ratio_dict: ``{module or tuple of modules: ratio}`` for groups whose key parameter lies
            in that module; a tuple is one ranking scope under ``global_pruning``.
        max_pruning_ratio: no group loses more than this share of its initial classes.
        iterative_steps, iterative_pruning_ratio_scheduler: ``step()`` may be called this many
            times; step ``i`` prunes to ``scheduler(ratio, steps)[i]``.
        round_to: the kept class count of every pruned group is rounded down to a multiple of it.
        ignored_layers: modules (with their submodules) or parameters whose output channels must
            not change; groups holding them are skipped (their input channels may still shrink).
        isomorphic: with ``global_pruning``, rank only among structurally identical groups.
        prune_num_heads, head_pruning_ratio: remove whole attention heads (heads are found from the
            graph's ``view``/``reshape`` factors, never passed by hand). The ratio counts query heads of
            each attention. Under GQA (``kv`` groups of ``per`` query heads sharing one key/value head) the
            kept heads stay a grid: the same query head goes from every group first (9 query / 3 kv heads,
            ratio 1/3: 6 / 3, every kv head kept), whole kv groups with their query heads only when the
            ratio asks for a count that query heads alone cannot reach (6 / 2, ratio 1/2: 3 / 1); never
            more than the ratio asks. :attr:`num_heads` holds each attention's query heads after a step.
        prune_head_dims: when False, groups inside attention heads are not pruned by dimension. The default
            (None) is True, except for a Hugging Face transformers model: its attention modules hold one
            ``head_dim`` for q, k and v, and its config recomputes the attention scale from it, so a model
            with head dims removed loads only through ``fxprune.hf.from_pretrained``.
        target_macs, target_params: a budget instead of a ratio: a fraction (``<= 1``) of the
            original count or an absolute count; classes are removed in ranking order until the
            budget is met (within one class).
        bias_compensation: every linear layer that loses input channels gets their mean contribution added
            to its bias (``fxprune.prune(..., compensate=means)``), the means being those the importance
            recorded (:class:`~fxprune.importance.ActivationImportance`, ``FluctuationImportance``).
            :attr:`plan` replays the architecture; pass the same means to ``prune`` to replay the biases.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None,
                 pruning_ratio: float = 0.5, global_pruning: bool = False,
                 pruning_ratio_dict: Optional[Mapping[ModuleKey, float]] = None,
                 max_pruning_ratio: float = 1.0, iterative_steps: int = 1,
                 iterative_pruning_ratio_scheduler: Callable[[float, int], List[float]] = linear_scheduler,
                 round_to: Optional[int] = None, ignored_layers: Optional[Sequence[Any]] = None,
                 isomorphic: bool = False, prune_num_heads: bool = False, prune_head_dims: Optional[bool] = None,
                 head_pruning_ratio: float = 0.0, target_macs: Optional[float] = None,
                 target_params: Optional[float] = None, strict: bool = False,
                 bias_compensation: bool = False):
        from . import importance as imp_mod

        _check_ratio("pruning_ratio", pruning_ratio)
        _check_ratio("head_pruning_ratio", head_pruning_ratio)
        if not 0.0 < max_pruning_ratio <= 1.0:
            raise PlanError(f"max_pruning_ratio must be in (0, 1], got {max_pruning_ratio}")
        if iterative_steps < 1:
            raise PlanError(f"iterative_steps must be >= 1, got {iterative_steps}")
        if round_to is not None and round_to < 1:
            raise PlanError(f"round_to must be a positive integer, got {round_to}")
        if target_macs is not None and target_params is not None:
            raise PlanError("give target_macs or target_params, not both")
        self.model = model
        self.original = model
        self.example_inputs = example_inputs
        self._auto_calibrated: Optional[nn.Module] = None  # the model a default criterion was calibrated on
        if importance is None and _on_meta(model):
            # no values to rank by: keep each group's first classes (deterministic, replays on real weights)
            importance = imp_mod.StructureImportance()
            warnings.warn(f"fxprune: Pruner on {type(model).__name__}, whose weights are on the meta device: "
                          "every group keeps its first classes and loses its last ones "
                          "(importance='structure'); rank by scores computed elsewhere with "
                          "fxprune.Pruner.from_scores", stacklevel=user_stacklevel())
        self._auto = importance is None and _is_hf_causal_lm(model)
        if importance is None:
            importance = imp_mod.FluctuationImportance() if self._auto else imp_mod.MagnitudeImportance(p=2)
        elif isinstance(importance, str):
            importance = imp_mod.get_importance(importance)
        if self._auto:
            warnings.warn(f"fxprune: Pruner on {type(model).__name__}, a causal language model: ranking by "
                          "FluctuationImportance (FLAP) with the example inputs as the calibration set, not "
                          "by weight magnitude; calibrating on real text scores better: imp = "
                          "fxprune.calibrate(model, batches, 'fluctuation'); Pruner(model, inputs, "
                          "importance=imp)", stacklevel=user_stacklevel())
        if bias_compensation and not callable(getattr(importance, "input_means", None)):
            raise PlanError(f"bias_compensation needs the mean inputs an importance records "
                            f"(ActivationImportance, FluctuationImportance); {type(importance).__name__} "
                            "records none")
        self.bias_compensation = bias_compensation
        self.importance = importance
        self.pruning_ratio = pruning_ratio
        self.global_pruning = global_pruning
        self.max_pruning_ratio = max_pruning_ratio
        self.iterative_steps = iterative_steps
        self.round_to = round_to
        self.isomorphic = isomorphic
        self.prune_num_heads = prune_num_heads
        if prune_head_dims is None:
            prune_head_dims = not _is_transformers(model)
            if not prune_head_dims:
                log.info("Pruner: %s is a transformers model; head dims are kept (prune_head_dims=True prunes "
                         "them)", type(model).__name__)
        self.prune_head_dims = prune_head_dims
        self.head_pruning_ratio = head_pruning_ratio
        self.target_macs, self.target_params = target_macs, target_params
        self.strict = strict
        self.per_step_pruning_ratio = iterative_pruning_ratio_scheduler(pruning_ratio, iterative_steps)
        self.per_step_head_pruning_ratio = iterative_pruning_ratio_scheduler(head_pruning_ratio, iterative_steps)
        self.current_step = 0
        names = {id(m): n for n, m in model.named_modules()}
        pnames = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._ratio_scopes = self._resolve_ratio_dict(pruning_ratio_dict or {}, names)
        self.ignored_modules: List[str] = []
        self.ignored_params: List[str] = []
        for item in ignored_layers or ():
            if isinstance(item, nn.Parameter) and id(item) in pnames:
                self.ignored_params.append(pnames[id(item)])
            elif isinstance(item, nn.Module) and id(item) in names:
                self.ignored_modules.append(names[id(item)])
            else:
                raise PlanError(f"ignored_layers entry {type(item).__name__} is not a module or parameter "
                                "of the model")
        self._init_classes: Dict[Tuple[bool, str], int] = {}
        self._kept: Dict[Tuple[str, int], np.ndarray] = {}  # (param, dim) -> original indices still kept
        self._plan: Dict[str, List[int]] = {}
        self.num_heads: Dict[str, int] = {}
        self._baseline: Optional[Dict[str, int]] = None  # metric -> count of the original model
        self._why: Dict[str, List[str]] = {}  # reason -> groups that lose nothing this step

    @classmethod
    def from_scores(cls, model: nn.Module, example_inputs: Any, scores: Any, group_reduction: str = "sum",
                    **kwargs: Any) -> "Pruner":
        """A Pruner ranking by scores computed elsewhere, without reading any weight (the model may live on
        the ``meta`` device): ``scores`` is ``{"<param>:<dim>": 1-D tensor}`` in the original model's
        coordinates, or a file written by :func:`fxprune.scores.save_scores` (``.safetensors`` or
        ``torch.save``). A class scores the ``group_reduction`` of its indices' scores over the keyed dims
        of its group (:class:`~fxprune.scores.ScoreImportance`). Every key is checked against the model
        (:class:`~fxprune.PlanError` names a wrong key or length); groups no key reaches are left as they
        are, named in one warning. ``kwargs`` are the other :class:`Pruner` options.

        Example:
            >>> import torch, fxprune
            >>> with torch.device("meta"):
            ...     m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            >>> x = torch.randn(1, 4, device="meta")
            >>> s = {"0.weight:0": torch.tensor([5., 1., 6., 2., 7., 3., 8., 4.])}
            >>> pruner = fxprune.Pruner.from_scores(m, x, s, pruning_ratio=0.5)
            >>> small = pruner.step()
            >>> w = small.get_submodule("0").weight
            >>> pruner.plan["0.weight:0"], w.shape, w.device.type
            ([1, 3, 5, 7], torch.Size([4, 4]), 'meta')
        """
        from .scores import ScoreImportance, _warn_unscored, check_scores

        if "importance" in kwargs:
            raise PlanError("Pruner.from_scores ranks by the given scores; do not pass importance as well")
        imp = ScoreImportance(scores, group_reduction=group_reduction)
        pruner = cls(model, example_inputs, importance=imp, **kwargs)
        graph = pruner._analyze()
        imp.kept = _KeptIndices(pruner, graph)  # later steps score the indices still kept
        _warn_unscored(check_scores(graph, imp, heads=pruner.prune_num_heads), " (Pruner.from_scores)")
        return pruner

    # -- public ---------------------------------------------------------------------------------
    @property
    def plan(self) -> PrunePlan:
        """The cumulative plan of every step so far, in the original model's coordinates."""
        return PrunePlan(self._plan)

    @no_gc
    def step(self, interactive: bool = False) -> Any:
        """Run the next pruning step; return the pruned model (a generator of :class:`Proposal` s
        when ``interactive``; the pruned model is then :attr:`model` once the generator is exhausted)."""
        if self.current_step >= self.iterative_steps:
            log.warning("Pruner.step(): all %d steps done; nothing to prune", self.iterative_steps)
            return iter(()) if interactive else self.model
        self.current_step += 1
        if interactive:
            return self._interactive()
        self._why = {}
        with cache.graphs_unchanged():  # selection's analysis of the current GraphModule is prune's too
            plan = self._select_step()
            if not len(plan):
                self._warn_nothing()
            return self._apply(plan)

    def _note(self, g: Group, why: str) -> None:
        """Why ``g`` loses nothing in this step (reported when the whole step removes nothing)."""
        self._why.setdefault(why, []).append(g.key)

    def _warn_nothing(self) -> None:
        """One warning saying why a step removes nothing: which groups, for which reason."""
        why = getattr(self, "_why", {}) or {"the model has no prunable group": []}
        parts = []
        for reason, keys in sorted(why.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            parts.append(f"{len(keys)} group(s) {reason}" + (f" ({shown})" if keys else "") if keys else reason)
        warnings.warn(f"fxprune: Pruner step {self.current_step}/{self.iterative_steps} removes nothing: "
                      + "; ".join(parts), stacklevel=user_stacklevel())

    def manual_prune_width(self, layer: nn.Module, amount: Union[float, Sequence[int]]) -> nn.Module:
        """Prune the output channels of one ``layer`` (a module of the current model, or of the original
        one by qualname): a float removes that share of them (lowest importance first; unlike
        Torch-Pruning, ``0.25`` removes 25 %), a list removes exactly those indices (with their class).

        Example:
            >>> import torch, fxprune
            >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            >>> pruner = fxprune.Pruner(m, torch.randn(1, 4))
            >>> pruner.manual_prune_width(m[0], 0.25).get_submodule("0").out_features
            6
        """
        names = {id(mod): n for n, mod in list(self.original.named_modules()) + list(self.model.named_modules())}
        name = names.get(id(layer))
        weight = getattr(layer, "weight", None)
        if name is None or not isinstance(weight, torch.Tensor):
            raise PlanError(f"manual_prune_width: {type(layer).__name__} is not a weighted module of the model")
        graph = self._analyze()
        attr = f"{name}.weight" if name else "weight"
        g = graph.group_of(attr, _out_dim(self.model, name, "weight"))
        if g.pinned:
            raise PlanError(f"manual_prune_width: the output channels of {name!r} are pinned: {g.pinned}")
        if isinstance(amount, float):
            _check_ratio("manual_prune_width amount", amount)
            scores = self.importance(g, graph.gm)
            c = _Cand(g, torch.as_tensor(scores, dtype=torch.float64).numpy(), len(g.all_classes))
            n = int(round(g.size * amount))
            plan = PrunePlan.union(g.all_classes[i] for _, i in
                                   self._pick([c], lambda _: n / max(len(g.all_classes), 1)))
        else:
            plan = PrunePlan({make_key(attr, _out_dim(self.model, name, "weight")): [int(i) for i in amount]})
        return self._apply(plan)

    def estimate_importance(self, group: Group, model: Optional[nn.Module] = None) -> Optional[torch.Tensor]:
        """The importance scores of ``group``'s removable classes (one per ``all_classes`` entry)."""
        return self.importance(group, self.model if model is None else model)

    def reset(self) -> None:
        """Forget all steps: the next ``step()`` starts again from the original model."""
        self.model, self.current_step = self.original, 0
        self._init_classes.clear()
        self._kept.clear()
        self._plan.clear()

    # -- selection ------------------------------------------------------------------------------
    def _analyze(self) -> ChannelGraph:
        if self._auto and self._auto_calibrated is not self.model:  # the default criterion: current model
            from .calibrate import calibrate

            self.importance.reset()
            calibrate(self.model, [self.example_inputs], self.importance, progress=False)
            self._auto_calibrated = self.model
        graph = analyze(self.model, self.example_inputs, strict=self.strict)
        for g in graph.groups:  # whole heads (per attention) and head dims count separately
            self._init_classes.setdefault((False, g.key), len(g.all_classes))
            for part in g.head_parts():
                self._init_classes.setdefault((True, _head_key(part)), len(part.all_classes))
        return graph

    def _select_step(self) -> PrunePlan:
        """The plan (current coordinates) of one non-interactive step."""
        if self.target_macs is not None or self.target_params is not None:
            return self._select_budget()
        graph = self._analyze()
        plan: List[Tuple[str, List[int]]] = []
        if self.prune_num_heads and self.per_step_head_pruning_ratio[self.current_step] > 0:
            # whole heads and channels from one analysis, in one plan: every criterion scores the model
            # its data was recorded on (activations, accumulated gradients)
            plan.extend(self._head_picks(graph))
        cands = self._candidates(graph)
        ratio = self.per_step_pruning_ratio[self.current_step]
        for scope in self._scopes(cands):
            plan.extend(_valid_picks(graph, self._pick(scope, lambda g: self._group_ratio(g, ratio))))
        return PrunePlan.union(valid_prefix(graph, plan, "this step's heads and channels together"))

    def _head_picks(self, graph: ChannelGraph) -> List[Tuple[str, List[int]]]:
        """The head classes this step removes. ``head_pruning_ratio`` counts query heads: an attention
        without GQA loses whole heads; a GQA attention loses the same query head of every kv group and/or
        whole kv groups with their query heads (:meth:`_gqa_picks`)."""
        ratio = self.per_step_head_pruning_ratio[self.current_step]
        picked: List[Tuple[str, List[int]]] = []
        plain: List[_Cand] = []
        gqa_global: List[str] = []
        short: List[str] = []  # GQA attentions whose ratio asks for fewer query heads than one grid step
        for c in self._candidates(graph, heads=True):
            layout = _gqa_layout(c.group)
            if layout is None:
                self.num_heads[_head_key(c.group)] = len(c.scores)
                plain.append(c)
                continue
            picks = self._gqa_picks(c, layout, ratio)
            if picks is None:
                short.append(_head_key(c.group))
            picked.extend(picks or [])
            if self.global_pruning:
                gqa_global.append(_head_key(c.group))
        if short:
            warnings.warn(f"fxprune: head_pruning_ratio {ratio:g} removes no head of {len(short)} GQA "
                          f"attention(s) (first: {short[0]}): the least it can remove is one query head of "
                          "every kv group or one whole kv group", stacklevel=user_stacklevel())
        if gqa_global:
            warnings.warn("fxprune: global_pruning ranks whole heads across attentions, but "
                          f"{len(gqa_global)} GQA attention(s) (first: {gqa_global[0]}) are pruned each by "
                          "head_pruning_ratio alone (whole kv groups or one query head per group)",
                          stacklevel=user_stacklevel())
        for scope in self._scopes(plain):
            for c, i in self._pick(scope, lambda g: ratio):
                picked.append(c.group.all_classes[i])
                self.num_heads[_head_key(c.group)] -= 1
        return valid_prefix(graph, picked, "the heads chosen")

    def _gqa_picks(self, c: "_Cand", layout: Tuple[List[int], List[int]],
                   ratio: float) -> Optional[List[Tuple[str, List[int]]]]:
        """One GQA attention's picks for ``ratio`` of its original query heads (None: the ratio asks for
        heads, but fewer than the least a grid can lose).

        The kept heads must stay a grid (every kept kv group keeps the same query heads), so with ``kv``
        groups of ``per`` query heads, removing ``a`` query heads of every group and ``b`` whole groups
        removes ``kv*per - (kv-b)*(per-a)`` query heads. Chosen: the largest such count not above what
        the ratio asks (the Pruner's rounding, ``round_to`` and ``max_pruning_ratio`` included); on a tie,
        the fewest kv groups, i.e. query heads first. Why: a kv group is shared by all its query heads,
        so dropping one takes keys and values every one of them reads; a query head removes only its own
        q rows and ``o_proj`` columns, and keeps ``num_key_value_heads`` (the kv cache's layout). Whole
        groups go when the ratio asks for a count only they reach (6 query / 2 kv heads, ratio 1/2: one
        group). Within each kind the lowest-scored classes go.
        """
        kv, pos = layout
        n_kv, per = len(kv), len(pos)
        now = n_kv * per
        key = _head_key(c.group)
        init = self._init_classes.setdefault((True, "query heads " + key), now)
        want = now - self._keep(init, ratio)
        self.num_heads[key] = now
        if want <= 0:
            self._note(c.group, f"already keep what the head ratio {ratio:g} of this step asks")
            return []
        fits = [(now - (n_kv - b) * (per - a), -b, a, b) for a in range(per) for b in range(n_kv)]
        removed, _, a, b = max(f for f in fits if f[0] <= want)
        if removed == 0:
            self._note(c.group, f"are GQA query heads ({n_kv} kv groups x {per}): removing {want} of {now} "
                       "takes a whole query position (one per group) or kv group at least")
            return None
        self.num_heads[key] = now - removed

        def rank(kind: List[int]) -> List[int]:
            return sorted(kind, key=lambda i: (float(c.scores[i]), i))

        lowest = rank(pos)[:a] + rank(kv)[:b]
        return [c.group.all_classes[i] for i in lowest]

    def _candidates(self, graph: ChannelGraph, heads: bool = False) -> List["_Cand"]:
        """Scored groups: their head classes with ``heads`` (whole heads, kv groups), else their
        ordinary classes (head dims inside attention)."""
        out = []
        head_dim_groups = set() if self.prune_head_dims or heads else _groups_inside_heads(graph)
        groups = [p for g in graph.groups for p in g.head_parts()] if heads else graph.groups
        for g in groups:
            if g.pinned or not g.all_classes or g.key in head_dim_groups or self._ignored(g):
                self._note(g, "pinned: " + g.pinned if g.pinned else "have no removable class"
                           if not g.all_classes else "are head dims (prune_head_dims=False)"
                           if g.key in head_dim_groups else "are in ignored_layers")
                continue
            scores = self.importance(g, graph.gm)
            if scores is None:
                self._note(g, f"get no scores from {type(self.importance).__name__}")
                continue
            s = torch.as_tensor(scores, dtype=torch.float64)
            if s.ndim != 1 or len(s) != len(g.all_classes):
                raise PlanError(f"importance {type(self.importance).__name__} returned shape "
                                f"{tuple(s.shape)} for group {g.key} with {len(g.all_classes)} classes; "
                                "use a group_reduction that gives one score per class")
            n_init = self._init_classes.get((heads, _head_key(g) if heads else g.key), len(g.all_classes))
            out.append(_Cand(g, s.numpy(), n_init))
        return out

    def _ignored(self, g: Group) -> bool:
        for name, dim in g.members:
            if name in self.ignored_params:
                return True
            owner, _, attr = name.rpartition(".")
            for m in self.ignored_modules:
                if (owner == m or owner.startswith(m + ".") or m == "") and dim == _out_dim(self.model, owner,
                                                                                            attr):
                    return True
        return False

    def _scope_of(self, g: Group) -> Tuple[Optional[int], Optional[float]]:
        """The ``pruning_ratio_dict`` entry of the first member (key order) whose *output* channels
        lie in a listed module, so a residual group takes the ratio of the stage that writes it."""
        if not self._ratio_scopes:
            return None, None
        for name, dim in g.members:
            owner, _, attr = name.rpartition(".")
            if dim != _out_dim(self.model, owner, attr):
                continue
            for i, (prefixes, ratio) in enumerate(self._ratio_scopes):
                if any(owner == p or owner.startswith(p + ".") or p == "" for p in prefixes):
                    return i, ratio
        return None, None

    def _group_ratio(self, g: Group, default: float) -> float:
        _, r = self._scope_of(g)
        if r is None:
            return default
        # scale a dict ratio by the schedule's progress, as the default ratio is
        return r * (default / self.pruning_ratio) if self.pruning_ratio else r

    def _scopes(self, cands: List["_Cand"]) -> List[List["_Cand"]]:
        if not self.global_pruning:
            return [[c] for c in cands]
        scopes: Dict[Any, List[_Cand]] = {}
        for c in cands:
            sid, _ = self._scope_of(c.group)
            sig = _signature(self.model, c.group) if self.isomorphic else None
            scopes.setdefault((sid, sig), []).append(c)
        return list(scopes.values())

    def _pick(self, scope: List["_Cand"], ratio_of: Callable[[Group], float]) -> List[Tuple["_Cand", int]]:
        """Lowest scores first inside one ranking scope, never emptying a dim, capped per group."""
        n_init = sum(c.n_init for c in scope)
        n_now = sum(len(c.scores) for c in scope)
        ratio = ratio_of(scope[0].group)
        if len(scope) == 1:
            keep = self._keep(scope[0].n_init, ratio)
            n_remove = max(0, n_now - keep)
        else:
            n_remove = max(0, n_now - int(n_init * (1 - ratio)))
        if n_remove == 0:
            for c in scope:
                self._note(c.group, f"already keep what the ratio {ratio:g} of this step asks")
            return []
        order = sorted(((float(s), k, i) for k, c in enumerate(scope) for i, s in enumerate(c.scores)))
        guards = [_Guard(c, self.max_pruning_ratio) for c in scope]
        picked: List[Tuple[_Cand, int]] = []
        for _, k, i in order:
            if len(picked) >= n_remove:
                break
            if guards[k].take(i):
                picked.append((scope[k], i))
        if self.round_to and len(scope) > 1:
            picked = self._round_global(scope, guards, picked, order)
        if not picked:
            for c in scope:
                self._note(c.group, "would empty a value or pass max_pruning_ratio with any class removed")
        return picked

    def _keep(self, n_init: int, ratio: float) -> int:
        keep = int(n_init * (1 - min(ratio, self.max_pruning_ratio)))
        if self.round_to:
            keep = max(self.round_to, keep - keep % self.round_to) if n_init >= self.round_to else keep
        return max(keep, 1)

    def _round_global(self, scope, guards, picked, order):
        """After a global pick, remove more from each group until its kept count is a multiple of round_to."""
        for k, c in enumerate(scope):
            kept = len(c.scores) - guards[k].taken
            extra = kept % self.round_to if kept > self.round_to else 0
            for _, kk, i in order:
                if extra == 0:
                    break
                if kk == k and guards[k].take(i):
                    picked.append((c, i))
                    extra -= 1
        return picked

    # -- budget -----------------------------------------------------------------------------------
    def _select_budget(self) -> PrunePlan:
        metric = "macs" if self.target_macs is not None else "params"
        graph = self._analyze()
        if self._baseline is None:
            self._baseline = {}
        if metric not in self._baseline:  # counted once, on the original model (the first budget step)
            self._baseline[metric] = self._measure(graph, self.original, metric)
        base = self._baseline[metric]
        final = resolve_target(self.target_macs if metric == "macs" else self.target_params, base, metric)
        target = base - (base - final) * self.current_step / self.iterative_steps
        order = self._removal_order(self._candidates(graph))
        now = base if self.model is self.original else (self._measure(graph, self.model, metric)
                                                         if _on_meta(self.model) else None)
        plan = fit_budget(graph, self.model, self.example_inputs, order, metric, target, baseline=now)
        if not len(plan) and order:
            self._why = {f"the model already meets {metric} <= {target:,} at this step": []}
        return plan

    def _measure(self, graph: ChannelGraph, model: nn.Module, metric: str) -> int:
        """MACs or parameters of ``model`` (analysed as ``graph``). MACs come from the analysis's shapes
        where it models every op (equal to :func:`fxprune.count`, without a counted forward); otherwise from
        a counted forward, which on the meta device would need values."""
        from .count import count, count_params
        from .ircount import plan_size

        if metric == "params":
            return count_params(model)
        macs = plan_size(graph, PrunePlan({}), "macs") if graph.counts_from_ir else None
        if macs is None and not _on_meta(model):
            return count(model, self.example_inputs)[0]
        if macs is None:
            raise MetaTensorError(f"target_macs: {type(model).__name__} is on the meta device and its "
                                  "analysis does not model the MACs of every op; give target_params instead")
        return macs

    def _removal_order(self, cands: List["_Cand"]) -> List[Tuple[str, List[int]]]:
        """All removable classes in the order a budget search takes them."""
        seq: List[Tuple[float, int, str, List[int]]] = []
        for scope in self._scopes(cands):
            full = self._pick(scope, lambda g: 1.0)  # the whole scope, ranked, under the guards
            for rank, (c, i) in enumerate(full):
                # global: by score; local: interleave groups by the share of each group removed so far
                key = float(c.scores[i]) if len(scope) > 1 or self.global_pruning else (rank + 1) / c.n_init
                seq.append((key, len(seq), *c.group.all_classes[i]))
        seq.sort(key=lambda t: (t[0], t[1]))
        return [(k, idx) for _, _, k, idx in seq]

    # -- applying -----------------------------------------------------------------------------------
    def _interactive(self) -> Iterator[Proposal]:
        graph = self._analyze()
        props: List[Proposal] = []
        ratio = self.per_step_pruning_ratio[self.current_step]
        for c in self._candidates(graph):
            plan = PrunePlan.union(c.group.all_classes[i]
                                   for _, i in self._pick([c], lambda g: self._group_ratio(g, ratio)))
            if len(plan):
                p = Proposal(c.group, {k: plan[k] for k in plan}, c.scores)
                props.append(p)
                yield p
        merged: Dict[str, List[int]] = {}
        for p in props:
            if p.accepted:
                for k, v in p.indices.items():
                    merged.setdefault(k, []).extend(v)
        self._apply(PrunePlan(merged))

    def _apply(self, plan: PrunePlan) -> nn.Module:
        if not len(plan):
            return self.model
        means = None
        if self.bias_compensation:
            means = self.importance.input_means()
            if not means:
                raise PlanError(f"bias_compensation: {type(self.importance).__name__} has recorded no "
                                "inputs; calibrate it first (fxprune.calibrate(model, batches, importance))")
        small = _prune(self.model, plan, self.example_inputs, compensate=means)
        rec = record_of(small, create=False)
        applied = rec.last if rec is not None and rec.applied else None
        if applied is None:  # a model pruned by a fallback frontend records the expansion on the module
            applied = getattr(small, "_fxprune_expanded", plan)
        self._record(applied)
        self.model = small
        return small

    def _record(self, expanded: Mapping[str, Sequence[int]]) -> None:
        """Translate this step's removed indices to original coordinates and add them to the plan."""
        for key, idx in expanded.items():
            name, dim = parse_key(key)
            kept = self._kept.get((name, dim))
            if kept is None:
                t = _tensor(self.model, name)
                kept = np.arange(t.shape[dim]) if t is not None else np.asarray(idx).max() + 1
                kept = kept if isinstance(kept, np.ndarray) else np.arange(kept)
            local = np.asarray(sorted(set(int(i) for i in idx)), dtype=np.int64)
            orig = kept[local]
            full = make_key(name, dim)
            self._plan[full] = sorted(set(self._plan.get(full, [])) | set(orig.tolist()))
            self._kept[(name, dim)] = np.delete(kept, local)

    @staticmethod
    def _resolve_ratio_dict(d: Mapping[ModuleKey, float], names: Dict[int, str]) -> List[Tuple[List[str], float]]:
        out = []
        for k, r in d.items():
            _check_ratio("pruning_ratio_dict value", r)
            mods = k if isinstance(k, (tuple, list)) else (k,)
            prefixes = []
            for m in mods:
                if id(m) not in names:
                    raise PlanError(f"pruning_ratio_dict key {type(m).__name__} is not a submodule of the model")
                prefixes.append(names[id(m)])
            out.append((prefixes, float(r)))
        return out
