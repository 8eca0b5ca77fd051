"""Calibration statistics reduced over ``torch.distributed`` ranks.

Each rank runs its own shard of the calibration batches through :func:`fxprune.calibrate` (or records by
hand); :func:`all_reduce_importance` (``imp.all_reduce(group)``) then sums the per-layer statistics of every
rank, so that each rank holds what one process would have recorded on all the batches (up to float rounding)
and ranks the same channels. The sums are exact merges: activation sums and counts add up; the fluctuation
criterion's per-rank variances are merged from their sums of squared deviations around the *global* mean (a
second reduction, Chan et al.), never from sums of squares that cancel.

Ranks need not see the same layers or the same number of batches: the ranks first exchange which statistics
they hold (names, shapes, counts) and reduce over the union in one agreed order, a rank filling zeros for a
layer it never saw; a rank with no batch at all takes part too. Statistics of different shapes, different
criteria or different models (``model=``) raise :class:`~fxprune.errors.DistributedError` on every rank
instead of a hang; so does a rank whose calibration failed (that rank re-raises its own error).

The tensors travel on the statistics' own device (CUDA tensors for NCCL; a rank with nothing recorded uses
``torch.cuda.current_device()`` under NCCL, the CPU otherwise), packed into one buffer per dtype.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> imp = fxprune.calibrate(m, [torch.randn(5, 4)], "activation", progress=False)
    >>> imp.all_reduce("auto") is imp  # no initialised process group: nothing to reduce
    True
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import DistributedError, PlanError

__all__ = ["resolve_group", "all_reduce_importance"]

_NO_GROUP = object()  # resolve_group's "reduce nothing"


def resolve_group(process_group: Any) -> Any:
    """The process group a ``process_group=`` argument stands for, or ``None`` for "reduce nothing".

    ``None``: nothing. ``"auto"``: the default (WORLD) group when ``torch.distributed`` is initialised with
    more than one rank, else nothing. A ``ProcessGroup``: that group (``torch.distributed`` must be
    initialised: :class:`~fxprune.errors.DistributedError` otherwise).

    Example:
        >>> from fxprune.distributed import resolve_group
        >>> resolve_group("auto") is None  # no process group here
        True
    """
    if process_group is None:
        return None
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if isinstance(process_group, str):
        if process_group != "auto":
            raise PlanError(f"process_group must be None, 'auto' or a torch.distributed ProcessGroup, got "
                            f"{process_group!r}")
        if not ready or dist.get_world_size() == 1:
            return None
        return dist.group.WORLD
    if not ready:
        raise DistributedError(f"process_group={process_group!r} was given but torch.distributed is not "
                               "initialised: call torch.distributed.init_process_group first")
    return process_group


def _world() -> Any:
    return torch.distributed.group.WORLD


def model_signature(model: nn.Module) -> List[Tuple[str, Tuple[int, ...]]]:
    """``[(parameter name, shape)]`` of ``model``: what the ranks compare to know they calibrate one model."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)]


def _stat_fields(imp: Any) -> Dict[str, str]:
    fields = getattr(imp, "_stat_fields", None)
    if not callable(fields):
        raise PlanError(f"{type(imp).__name__} keeps no statistics fxprune knows how to reduce over ranks "
                        "(ActivationImportance, FluctuationImportance, TaylorImportance and "
                        "HessianImportance do)")
    return fields()


def _describe(imp: Any, fields: Dict[str, str]) -> Dict[str, Dict[Any, Any]]:
    """Per field: ``{key: (shape, dtype name)}`` for tensors, ``{key: count}`` for counts."""
    out: Dict[str, Dict[Any, Any]] = {}
    for attr, kind in fields.items():
        d = getattr(imp, attr)
        out[attr] = dict(d) if kind == "count" else {k: (tuple(v.shape), str(v.dtype)) for k, v in d.items()}
    return out


def _local_device(imp: Any, fields: Dict[str, str], group: Any) -> torch.device:
    for attr, kind in fields.items():
        if kind != "count":
            for v in getattr(imp, attr).values():
                dev = v.device
                break
            else:
                continue
            break
    else:
        dev = None
    if "nccl" in str(torch.distributed.get_backend(group)).lower() and (dev is None or dev.type != "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    return dev if dev is not None else torch.device("cpu")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.rpartition(".")[2])


def _agree(metas: List[dict], cls: str) -> None:
    """Raise on every rank when the ranks failed, or hold different criteria, models or statistic shapes."""
    failed = [(r, m["error"]) for r, m in enumerate(metas) if m["error"]]
    if failed:
        text = "; ".join(f"rank {r}: {e}" for r, e in failed)
        raise DistributedError(f"fxprune: calibration failed on {len(failed)} of {len(metas)} ranks "
                               f"({text}); no statistics were reduced")
    kinds = {m["cls"] for m in metas}
    if len(kinds) > 1:
        raise DistributedError(f"the ranks hold different criteria ({', '.join(sorted(kinds))}): each rank "
                               f"must reduce the same kind of importance as rank 0 ({cls})")
    sigs = [m["model"] for m in metas]
    if any(s is None for s in sigs) and any(s is not None for s in sigs):
        raise DistributedError("some ranks passed model= and others did not: pass it on every rank")
    for r, s in enumerate(sigs[1:], 1):
        if s != sigs[0]:
            a, b = dict(sigs[0]), dict(s)
            diff = next((n for n in list(a) + list(b) if a.get(n) != b.get(n)), None)
            raise DistributedError(f"the ranks calibrate different models: parameter {diff!r} has shape "
                                   f"{a.get(diff, 'none')} on rank 0 and {b.get(diff, 'none')} on rank {r}")
    first: Dict[Tuple[str, Any], Tuple[int, Any]] = {}
    for r, m in enumerate(metas):
        for attr, d in m["stats"].items():
            if attr in m["counts"]:
                continue
            for k, spec in d.items():
                seen = first.setdefault((attr, k), (r, spec))
                if seen[1] != spec:
                    raise DistributedError(
                        f"{cls}: statistic {attr}[{k!r}] is {seen[1][0]} ({seen[1][1]}) on rank {seen[0]} "
                        f"and {spec[0]} ({spec[1]}) on rank {r}: the ranks calibrate different models")


def _sum_tensors(group: Any, device: torch.device, items: List[Tuple[Any, Optional[torch.Tensor], tuple, str]]
                 ) -> List[torch.Tensor]:
    """All-reduce (sum) ``[(key, local tensor or None, shape, dtype name)]``: one flat buffer per dtype."""
    out: List[Optional[torch.Tensor]] = [None] * len(items)
    for dtype_name in sorted({it[3] for it in items}):
        idx = [i for i, it in enumerate(items) if it[3] == dtype_name]
        dtype = _dtype(dtype_name)
        parts = [items[i][1].to(device, dtype).reshape(-1) if items[i][1] is not None
                 else torch.zeros(torch.Size(items[i][2]).numel(), dtype=dtype, device=device) for i in idx]
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)
        torch.distributed.all_reduce(flat, group=group)
        start = 0
        for i in idx:
            n = int(torch.Size(items[i][2]).numel())
            out[i] = flat[start:start + n].reshape(items[i][2])
            start += n
    return out  # type: ignore[return-value]


class Reduction:
    """What a criterion's ``_finish_reduce`` hook gets: the group, the device, a sum over ranks."""

    def __init__(self, group: Any, device: torch.device, stats_device: Optional[torch.device]):
        self.group, self.device, self.stats_device = group, device, stats_device

    def sum(self, tensors: Dict[Any, Optional[torch.Tensor]], specs: Dict[Any, Tuple[tuple, str]]
            ) -> Dict[Any, torch.Tensor]:
        """``{key: sum over ranks}`` for every key of ``specs`` (sorted); a missing local tensor counts 0."""
        keys = sorted(specs)
        vals = _sum_tensors(self.group, self.device,
                            [(k, tensors.get(k), specs[k][0], specs[k][1]) for k in keys])
        dev = self.stats_device or self.device
        return {k: v.to(dev) for k, v in zip(keys, vals)}


def all_reduce_importance(imp: Any, group: Any = "auto", *, model: Optional[nn.Module] = None,
                          error: Optional[BaseException] = None, batches: Optional[int] = None) -> Any:
    """Sum ``imp``'s calibration statistics over the ranks of ``group``: every rank then holds the global
    ones.

    Args:
        imp: an :class:`~fxprune.importance.ActivationImportance`, ``FluctuationImportance``,
            ``TaylorImportance`` or ``HessianImportance`` that recorded this rank's batches.
        group: a ``ProcessGroup``, ``None`` (the default WORLD group, as in ``torch.distributed``) or
            ``"auto"`` (WORLD when initialised with more than one rank; otherwise nothing is reduced).
        model: this rank's model: the ranks check that they calibrate the same one (parameter names and
            shapes); :class:`~fxprune.errors.DistributedError` on every rank if not.
        error: this rank's calibration failed with it: every rank raises instead of waiting for it (this rank
            re-raises ``error``).
        batches: this rank's number of batches (:func:`fxprune.calibrate` passes it): no rank saw any batch
            -> :class:`~fxprune.errors.PlanError` on every rank.

    Call it once per recording: the statistics it leaves are already global, and a second call sums them
    again. Every rank of ``group`` must call it (it is a collective).

    Example:
        >>> import torch, fxprune, fxprune.importance as imp
        >>> a = imp.ActivationImportance()
        >>> with a.compute_importance(torch.nn.Linear(2, 1)) as rec:
        ...     pass
        >>> fxprune.distributed.all_reduce_importance(a, "auto") is a  # no process group: unchanged
        True
    """
    fields = _stat_fields(imp)
    if group is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise DistributedError("all_reduce(group=None) means the default group, but torch.distributed is "
                                   "not initialised: call torch.distributed.init_process_group (or pass "
                                   "'auto')")
        group = _world()
    else:
        group = resolve_group(group)
    if group is None or torch.distributed.get_world_size(group) == 1:
        if error is not None:
            raise error
        return imp
    cls = type(imp).__name__
    counts = {a for a, k in fields.items() if k == "count"}
    sig = None if model is None else hashlib.sha1(repr(model_signature(model)).encode()).hexdigest()
    meta = {"cls": cls, "error": None if error is None else f"{type(error).__name__}: {error}", "model": sig,
            "stats": _describe(imp, fields) if error is None else {}, "counts": sorted(counts),
            "batches": batches}
    metas: List[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(metas, meta, group=group)
    if error is not None:
        raise error
    hashes = [m["model"] for m in metas]
    if not any(m["error"] for m in metas) and all(h is not None for h in hashes) and len(set(hashes)) > 1:
        # the models differ: gather the signatures themselves to name the parameter that differs
        sigs: List[Any] = [None] * len(metas)
        mine = model_signature(model)  # type: ignore[arg-type]  (every rank passed one)
        torch.distributed.all_gather_object(sigs, mine, group=group)
        for m, sig in zip(metas, sigs):
            m["model"] = sig
    _agree(metas, cls)
    if batches is not None and sum(m["batches"] or 0 for m in metas) == 0:
        raise PlanError("fxprune.calibrate: `batches` gave no batch on any rank")
    device = _local_device(imp, fields, group)
    stats_device = None
    for attr, kind in fields.items():
        if kind != "count" and getattr(imp, attr):
            stats_device = next(iter(getattr(imp, attr).values())).device
            break
    red = Reduction(group, device, stats_device)
    local = {attr: dict(getattr(imp, attr)) for attr in fields}
    # counts: one int64 vector over the union of keys
    count_keys = sorted({(attr, k) for m in metas for attr in counts for k in m["stats"][attr]},
                        key=lambda ak: (ak[0], repr(ak[1])))
    if count_keys:
        vec = torch.tensor([local[a].get(k, 0) for a, k in count_keys], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(vec, group=group)
        totals = vec.tolist()
        for attr in counts:
            setattr(imp, attr, {})
        for (a, k), n in zip(count_keys, totals):
            getattr(imp, a)[k] = int(n)
    for attr, kind in fields.items():
        if kind != "sum":
            continue
        specs: Dict[Any, Tuple[tuple, str]] = {}
        for m in metas:
            specs.update(m["stats"][attr])
        setattr(imp, attr, red.sum(local[attr], specs))
    finish = getattr(imp, "_finish_reduce", None)
    if callable(finish):
        specs_all: Dict[str, Dict[Any, Tuple[tuple, str]]] = {}
        for attr, kind in fields.items():
            if kind == "merge":
                specs_all[attr] = {}
                for m in metas:
                    specs_all[attr].update(m["stats"][attr])
        finish(red, local, specs_all)
    return imp
