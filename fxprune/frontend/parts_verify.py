"""Verify a model pruned in parts: each pruned part's forward is masked inside the real model.

The model runs with every pruned part replaced by its masked interpreter (removed channels zeroed); the
pruned model runs as it is; the outputs are compared, and when they differ the first pruned submodule whose
own output differs is named (:class:`fxprune.frontend.partial.PartsSource` calls :func:`_verify_parts`).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.fx
from torch.utils import _pytree as pytree

from .partial import Part, PartsSource, _restore


def _verify_parts(source: PartsSource, graph: Any, small: torch.nn.Module, plan: Any, args: Any,
                  atol: float, rtol: float, fills: dict[str, dict[str, tuple]]):
    """Run the model with every pruned part masked (removed channels zeroed) and compare with ``small``."""
    from ..errors import VerificationError
    from ..verify import VerifyReport, _MaskedInterpreter

    exp = graph.expand(plan)
    per_part = source.split(exp)
    model = source.model
    saved: list[tuple[torch.nn.Module, bool, Any]] = []
    recomputed: dict[str, str] = {}
    seen: dict[str, list] = {}  # path -> [masked part output, pruned part output] of the first call
    hooks = []

    def keep(part: Part, i: int):
        def hook(_, __, out):
            slot = seen.setdefault(part.path, [None, None])
            if slot[i] is None:  # the masked output of a stitched part: its kept channels only
                slot[i] = _kept_output(part, per_part[part.path], out) if i == 0 else out
        return hook
    try:
        for part in source.parts:
            e = per_part.get(part.path)
            if e is None or not e.mask.any():
                continue
            interp = _MaskedInterpreter(part.graph, e, fills=fills.get(part.path))
            recomputed.update({part.scope + k: v for k, v in interp.recomputed.items()})
            m = part.module
            saved.append((m, "forward" in m.__dict__, m.__dict__.get("forward")))
            m.forward = _masked_forward(m, interp, part.out_spec)
            hooks.append(m.register_forward_hook(keep(part, 0)))
            try:
                hooks.append(small.get_submodule(part.path).register_forward_hook(keep(part, 1)))
            except AttributeError:
                pass
        ref = model(*args)
    finally:
        for m, had, old in saved:
            if had:
                m.forward = old
            else:
                del m.forward
    try:
        out = small(*args)
    finally:
        for h in hooks:
            h.remove()
    bad, diffs = _compare(ref, out, atol, rtol)
    if bad:
        where, parts_diff = _locate(seen, atol, rtol)
        err = VerificationError(f"pruned model differs from the masked original: {bad}. {where}")
        err.parts_max_abs_diff = parts_diff  # every pruned part agrees up to this, or None
        raise err
    return VerifyReport(max(diffs, default=0.0), diffs, recomputed)


def _kept_output(part: Part, e: Any, out: Any) -> Any:
    """A part's masked output reduced to the indices its pruned copy keeps (stitched outputs lose channels)."""
    node = next(n for n in part.graph.gm.graph.nodes if n.op == "output")
    nodes = pytree.tree_leaves(node.args[0])
    leaves, spec = pytree.tree_flatten(out)
    if len(nodes) != len(leaves):
        return out
    new = []
    for n, t in zip(nodes, leaves):
        ref = part.graph.ctx.tensor(n) if isinstance(n, torch.fx.Node) else None
        if isinstance(t, torch.Tensor) and ref is not None and ref.key[0] == "value":
            for d in range(t.ndim):
                gone = part.graph.removed(e.mask, ref.key, d)
                if len(gone):
                    keep = np.setdiff1d(np.arange(t.shape[d]), gone)
                    t = t.index_select(d, torch.from_numpy(keep).to(t.device))
        new.append(t)
    return pytree.tree_unflatten(new, spec)


def _compare(ref: Any, out: Any, atol: float, rtol: float) -> tuple[str, list[float]]:
    from ..verify import _diff, _ok, _plain

    ref_leaves, ref_spec = pytree.tree_flatten(_plain(ref))  # dict and OrderedDict compare alike
    out_leaves, out_spec = pytree.tree_flatten(_plain(out))
    if ref_spec != out_spec:
        return f"output structure differs: {ref_spec} vs {out_spec}", []
    diffs, bad = [], []
    for i, (r, o) in enumerate(zip(ref_leaves, out_leaves)):
        if isinstance(r, torch.Tensor):
            d = _diff(o, r) if isinstance(o, torch.Tensor) else float("inf")
            diffs.append(d)
            if not _ok(d, r, atol, rtol):
                bad.append((i, d))
    return (f"output {bad[0][0]} max |Δ| = {bad[0][1]:.3g}" if bad else ""), diffs


def _locate(seen: dict[str, list], atol: float, rtol: float) -> tuple[str, float | None]:
    """Which pruned submodule's own output differs, or a note that they all agree (and by how much)."""
    worst = 0.0
    for path, (r, o) in seen.items():
        bad, diffs = _compare(r, o, atol, rtol)
        if bad:
            return f"First differing pruned submodule: {path or '<root>'} ({bad}).", None
        worst = max([worst, *diffs])
    if not seen:
        return "", None
    return (f"Every pruned submodule's output matches (max |Δ| = {worst:.3g}): the difference arises in the "
            "untraced Python code after them, e.g. top-k/NMS/sort reordering near-ties under float noise; "
            "compare in a setting without near-ties."), worst


def _masked_forward(module: torch.nn.Module, interp, out_spec: Any = None):
    sig = inspect.signature(module.forward)

    def forward(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return _restore(interp.run(*bound.arguments.values()), out_spec)
    return forward
