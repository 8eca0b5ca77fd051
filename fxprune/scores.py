"""Criteria that need no weight values: structure-only ranking and scores computed elsewhere.

A model built on the ``meta`` device (``with torch.device("meta"): AutoModelForCausalLM.from_config(cfg)``)
has shapes but no data, so no magnitude, activation or gradient criterion can score it (they raise
:class:`~fxprune.errors.MetaTensorError`, naming the parameter). Two criteria can:

- :class:`StructureImportance` (``importance="structure"``): every group keeps its *first* classes and
  loses the last ones, in :attr:`Group.all_classes` order (the order of the key member's indices). It is
  deterministic and the same on meta and on real weights, so a plan chosen on meta replays on the loaded
  model.
- :class:`ScoreImportance`: per-index scores computed elsewhere (a streamed pass over a checkpoint,
  another machine's calibration), one 1-D tensor per parameter dim, keyed like a plan
  (``"model.layers.0.mlp.up_proj.weight:0"``); a class scores the sum over the keyed dims of its
  indices' scores. :func:`save_scores` / :func:`load_scores` write and read such a file
  (``.safetensors``, or anything else through ``torch.save``).

Example:
    >>> import torch, fxprune
    >>> from fxprune.scores import ScoreImportance
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> g = fxprune.analyze(m, torch.randn(1, 4)).group_of("0.weight", 0)
    >>> [round(v, 3) for v in StructureImportance()(g, m).tolist()]   # the last classes go first
    [1.0, 0.667, 0.333]
    >>> ScoreImportance({"0.weight:0": torch.tensor([3., 1., 2.])})(g, m).tolist()
    [3.0, 1.0, 2.0]
"""
from __future__ import annotations

import difflib
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .analyze import ChannelGraph, Group
from .errors import PlanError, user_stacklevel
from .importance import Importance, reduce_scores
from .plan import make_key, parse_key

__all__ = ["StructureImportance", "ScoreImportance", "load_scores", "save_scores", "check_scores",
           "has_meta_tensors"]

Scores = Mapping[str, torch.Tensor]
ScoreSource = Union[Scores, str, "os.PathLike[str]"]


class StructureImportance(Importance):
    """Rank by position only: class ``i`` of ``n`` scores ``(n - i) / n`` (``keep="first"``, the default)
    or ``(i + 1) / n`` (``keep="last"``). Needs no tensor values, so it runs on models on the ``meta``
    device; global pruning compares the same position share across groups.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> StructureImportance(keep="last")(g, m).tolist()
        [0.25, 0.5, 0.75, 1.0]
    """

    def __init__(self, keep: str = "first"):
        if keep not in ("first", "last"):
            raise PlanError(f"StructureImportance: keep must be 'first' or 'last', got {keep!r}")
        self.keep = keep

    def __call__(self, group: Group, model: nn.Module) -> Optional[torch.Tensor]:
        n = len(group.all_classes)
        if not n:
            return None
        pos = torch.arange(n, dtype=torch.float64)
        out = (n - pos) / n if self.keep == "first" else (pos + 1) / n
        return out.to(torch.float32)


class ScoreImportance(Importance):
    """Scores computed elsewhere: ``{"<param>:<dim>": 1-D tensor of that dim's size}`` (or a file path,
    read by :func:`load_scores`). A class's score is the ``group_reduction`` (default ``"sum"``) over the
    keyed dims of the group of the scores of the indices it removes; a group with no keyed dim gets none
    (the Pruner then leaves it alone and says so). Scores are in the *original* model's coordinates:
    :attr:`kept` (set by :meth:`fxprune.Pruner.from_scores`) maps them onto a model pruned by earlier steps.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> g = fxprune.analyze(m, torch.randn(1, 2)).group_of("0.weight", 0)
        >>> imp = ScoreImportance({"0.weight:0": torch.tensor([1., 2., 3.]), "2.weight:1": torch.ones(3)})
        >>> imp(g, m).tolist()
        [2.0, 3.0, 4.0]
    """

    def __init__(self, scores: ScoreSource, group_reduction: str = "sum"):
        self.source = None if isinstance(scores, Mapping) else os.fspath(scores)
        raw = load_scores(scores) if self.source is not None else scores
        self.scores: Dict[Tuple[str, int], torch.Tensor] = {}
        for key, s in raw.items():
            name, dim = parse_key(key)
            if not isinstance(s, torch.Tensor):
                s = torch.as_tensor(s)
            if s.ndim != 1 or not (s.is_floating_point() or s.dtype in (torch.int32, torch.int64)):
                raise PlanError(f"scores[{key!r}]{self._where()}: expected a 1-D float tensor, got "
                                f"{s.dtype} of shape {tuple(s.shape)}")
            s = s.detach().to("cpu", torch.float64)
            if not bool(torch.isfinite(s).all()):
                raise PlanError(f"scores[{key!r}]{self._where()}: holds NaN or infinite values")
            self.scores[(name, dim)] = s
        self.group_reduction = group_reduction
        #: ``(param, dim) -> original indices still in the model`` (None or missing: nothing removed yet)
        self.kept: Optional[Any] = None  # a mapping with .get

    def _where(self) -> str:
        return f" (from {self.source})" if self.source else ""

    def keys(self) -> List[str]:
        """The parameter-dim keys that have scores."""
        return [make_key(n, d) for n, d in self.scores]

    def _current(self, name: str, dim: int, size: int) -> Optional[torch.Tensor]:
        s = self.scores.get((name, dim))
        if s is None:
            return None
        kept = self.kept.get((name, dim)) if self.kept is not None else None
        if kept is not None:
            s = s[torch.as_tensor(kept, dtype=torch.long)]
        if len(s) != size:
            raise PlanError(f"scores[{make_key(name, dim)!r}]{self._where()}: {len(s)} scores for a dim of "
                            f"size {size}")
        return s

    @torch.no_grad()
    def __call__(self, group: Group, model: nn.Module) -> Optional[torch.Tensor]:
        n = len(group.all_classes)
        shapes = {k: tuple(t.shape) for k, t in model.named_parameters(remove_duplicate=False)}
        shapes.update((k, tuple(t.shape)) for k, t in model.named_buffers(remove_duplicate=False))
        rows, masks = [], []
        for name, dim, pos in group.index_classes():
            if (name, dim) not in self.scores or name not in shapes:
                continue
            s = self._current(name, dim, shapes[name][dim])
            p = torch.from_numpy(pos)
            hit = p >= 0
            rows.append(torch.zeros(n, dtype=torch.float64).index_add_(0, p[hit], s[hit]))
            masks.append(torch.zeros(n, dtype=torch.bool).index_fill_(0, p[hit], True))
        if not rows:
            return None
        covered = torch.stack(masks).any(0)
        if not bool(covered.all()):
            missing = group.all_classes[int((~covered).nonzero()[0])]
            raise PlanError(f"scores{self._where()} cover only {int(covered.sum())} of the {n} classes of "
                            f"group {group.key}: the class {missing[0]} {missing[1][:8]} has no scored "
                            "index; give scores for a member that holds every class (e.g. the group's key)")
        return reduce_scores(torch.stack(rows), self.group_reduction, torch.stack(masks)).to(torch.float32)


def check_scores(graph: ChannelGraph, scores: ScoreImportance, heads: bool = False) -> List[str]:
    """Check every key of ``scores`` against ``graph`` (a parameter dim of the model, of the right size;
    raises :class:`~fxprune.PlanError` naming the key) and return the keys of the unpinned groups with
    removable classes that no score reaches (these are left unpruned).

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> graph = fxprune.analyze(m, torch.randn(1, 2))
        >>> check_scores(graph, ScoreImportance({"0.weight:0": torch.ones(3)}))
        []
    """
    shapes = {k: tuple(t.shape) for k, t in graph.gm.named_parameters(remove_duplicate=False)}
    shapes.update((k, tuple(t.shape)) for k, t in graph.gm.named_buffers(remove_duplicate=False))
    for (name, dim), s in scores.scores.items():
        key = make_key(name, dim)
        if name not in shapes:
            close = difflib.get_close_matches(name, list(shapes), n=1)
            raise PlanError(f"scores key {key!r}{scores._where()}: the model has no parameter or buffer "
                            f"{name!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else ""))
        if not 0 <= dim < len(shapes[name]):
            raise PlanError(f"scores key {key!r}{scores._where()}: {name} has {len(shapes[name])} dims")
        if len(s) != shapes[name][dim]:
            raise PlanError(f"scores[{key!r}]{scores._where()}: {len(s)} scores for a dim of size "
                            f"{shapes[name][dim]}")
    keyed = set(scores.scores)
    out = []
    for g in graph.groups:
        parts = g.head_parts() if heads and g.head_classes else [g]
        for p in parts:
            if g.pinned or not p.all_classes:
                continue
            if not any((n, d) in keyed for n, d in p.members):
                out.append(p.key)
    return out


def has_meta_tensors(model: nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` lives on the ``meta`` device (has no values).

    Example:
        >>> with torch.device("meta"):
        ...     m = torch.nn.Linear(2, 2)
        >>> has_meta_tensors(m), has_meta_tensors(torch.nn.Linear(2, 2))
        (True, False)
    """
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def load_scores(path: Union[str, "os.PathLike[str]"]) -> Dict[str, torch.Tensor]:
    """Read a scores file written by :func:`save_scores` (``.safetensors``, else ``torch.load`` with
    ``weights_only=True``); raises :class:`~fxprune.PlanError` naming the file when it cannot.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "imp.safetensors")
        >>> save_scores({"fc.weight:0": torch.tensor([0.5, 2.0])}, path)
        >>> load_scores(path)["fc.weight:0"].tolist()
        [0.5, 2.0]
    """
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            out = load_file(path)
        else:
            out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing file, truncated file, not a tensor dict
        raise PlanError(f"cannot read scores from {path}: {type(e).__name__}: {e}") from e
    if not isinstance(out, Mapping) or not all(isinstance(k, str) for k in out):
        raise PlanError(f"scores file {path} holds a {type(out).__name__}, not a dict "
                        "{'<param>:<dim>': 1-D tensor}")
    return dict(out)


def save_scores(scores: Scores, path: Union[str, "os.PathLike[str]"]) -> None:
    """Write ``{"<param>:<dim>": 1-D tensor}`` to ``path`` (safetensors when it ends in ``.safetensors``,
    else ``torch.save``). Keys are checked to be plan keys. See :func:`load_scores` for an example."""
    path = os.fspath(path)
    out = {}
    for k, v in scores.items():
        parse_key(k)
        v = torch.as_tensor(v)
        if v.ndim != 1:
            raise PlanError(f"scores[{k!r}]: expected a 1-D tensor, got shape {tuple(v.shape)}")
        out[k] = v.detach().to("cpu").contiguous()
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(out, path)
    else:
        torch.save(out, path)


def _warn_unscored(keys: List[str], where: str) -> None:
    if keys:
        shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        warnings.warn(f"fxprune: {len(keys)} prunable group(s) have no scores{where} and are left as they "
                      f"are: {shown}", stacklevel=user_stacklevel())

