"""Property test: random small DAG CNNs, a random valid plan, and the pruned model must verify.

A model is a list of ops over a growing list of values (value 0 is the input, 3 channels, 8x8):

    ("conv", src, out_channels, kernel, groups)   ("bn", src)        ("act", src, kind)
    ("add", a, b)  (same channels)                ("cat", a, b)      ("split", src, sizes)  (one value per chunk)
    ("scale", src)   v * v.size(1) ** -0.5 / v.shape[-1]   (sizes read as numbers)
    ("squeeze", src) v * sigmoid(avg_pool(v, 1).squeeze()).unsqueeze(-1).unsqueeze(-1)   (bare squeeze)
    ("drop", src)    F.dropout(v, 0.3, self.training)
    ("reduce", src, kind)  v + v.pow(2).sum(1, keepdim=True) / v * v.mean(1, keepdim=True).sigmoid()
    ("gate", src, k) a, b = v.split([k, C - k], 1); cat([a * sigmoid(b[:, :k]), b], 1)   (split/cat with a gate)

Every op draws whether its tensors are passed by keyword (``torch.cat(tensors=..., dim=1)``,
``torch.flatten(input=..., start_dim=1)``). Every value no op consumes feeds a head
``Linear(flatten(avg_pool(v, 4)))`` (flatten -> Linear with a 2x2 block map); the heads are summed into the
single output. Models are traced in train or eval mode (dropout must follow the mode after pruning).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fxprune

try:
    import models as zoo
except ImportError:  # tests/ made a package
    from tests import models as zoo

MAX_C = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convs run several times faster on one thread than on a contended pool."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
ACTS = ("relu", "sigmoid", "gelu", "hardswish")


@st.composite
def dag_specs(draw) -> List[tuple]:
    chans = [3]
    ops: List[tuple] = []
    for step in range(draw(st.integers(1, 6))):
        # The first op is a conv of the input, so most models have a prunable group; later ops read any value.
        kind = "conv" if step == 0 else draw(st.sampled_from(["conv", "conv", "conv", "bn", "act", "add",
                                                              "cat", "split", "scale", "squeeze", "drop",
                                                              "reduce", "gate"]))
        src = draw(st.integers(0, len(chans) - 1))
        c = chans[src]
        if kind == "add":
            same = [i for i, cc in enumerate(chans) if cc == c]
            ops.append(("add", src, draw(st.sampled_from(same))))
            chans.append(c)
        elif kind == "cat" and any(c + cc <= MAX_C for cc in chans):
            other = draw(st.sampled_from([i for i, cc in enumerate(chans) if c + cc <= MAX_C]))
            ops.append(("cat", src, other, draw(st.booleans())))
            chans.append(c + chans[other])
        elif kind == "split" and c >= 2:
            n = draw(st.integers(2, min(3, c)))
            cuts = sorted(draw(st.permutations(range(1, c)))[:n - 1])
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [c])]
            ops.append(("split", src, tuple(sizes), draw(st.booleans())))
            chans.extend(sizes)
        elif kind == "bn":
            ops.append(("bn", src))
            chans.append(c)
        elif kind in ("scale", "drop") or kind == "squeeze" and c >= 2:  # squeeze(): (B, 1) stays 2-D
            ops.append((kind, src, draw(st.booleans())))
            chans.append(c)
        elif kind == "reduce":
            ops.append(("reduce", src, draw(st.sampled_from(["sum", "mean"])), draw(st.booleans())))
            chans.append(c)
        elif kind == "gate" and c >= 2:
            ops.append(("gate", src, draw(st.integers(1, c // 2)), draw(st.booleans())))
            chans.append(c)
        elif kind == "act":
            ops.append(("act", src, draw(st.sampled_from(ACTS))))
            chans.append(c)
        else:  # conv (also the fallback of an impossible cat/split)
            out = draw(st.integers(1 if step else 2, MAX_C))
            groups = [g for g in (1, 2, 4) if c % g == 0 and out % g == 0]
            if out % c == 0 and c not in groups:
                groups.append(c)             # depthwise, possibly with a channel multiplier
            ops.append(("conv", src, out, draw(st.sampled_from([1, 3])), draw(st.sampled_from(groups))))
            chans.append(out)
    return ops


def _channels(ops: Sequence[tuple]) -> List[int]:
    chans = [3]
    for op in ops:
        if op[0] == "conv":
            chans.append(op[2])
        elif op[0] == "cat":
            chans.append(chans[op[1]] + chans[op[2]])
        elif op[0] == "split":
            chans.extend(op[2])
        else:
            chans.append(chans[op[1]])
    return chans


class DagNet(nn.Module):
    def __init__(self, ops: Sequence[tuple]):
        super().__init__()
        self.ops = [tuple(op) for op in ops]
        chans = _channels(self.ops)
        self.layers = nn.ModuleDict()
        used = set()
        for i, op in enumerate(self.ops):
            if op[0] == "conv":
                _, src, out, k, g = op
                self.layers[f"op{i}"] = nn.Conv2d(chans[src], out, k, padding=k // 2, groups=g)
            elif op[0] == "bn":
                self.layers[f"op{i}"] = nn.BatchNorm2d(chans[op[1]])
            used.add(op[1])
            if op[0] in ("add", "cat"):
                used.add(op[2])
        self.leaves = [v for v in range(1, len(chans)) if v not in used]
        self.heads = nn.ModuleDict({f"v{v}": nn.Linear(chans[v] * 4, 3) for v in self.leaves})

    def forward(self, x):
        vals = [x]
        for i, op in enumerate(self.ops):
            kind = op[0]
            if kind in ("conv", "bn"):
                vals.append(self.layers[f"op{i}"](vals[op[1]]))
            elif kind == "act":
                vals.append(getattr(F, op[2])(vals[op[1]]) if op[2] != "sigmoid" else torch.sigmoid(vals[op[1]]))
            elif kind == "add":
                vals.append(vals[op[1]] + vals[op[2]])
            elif kind == "cat":
                a, b = vals[op[1]], vals[op[2]]
                vals.append(torch.cat(tensors=[a, b], dim=1) if op[3] else torch.cat([a, b], 1))
            elif kind == "split":
                v = vals[op[1]]
                parts = torch.split(tensor=v, split_size_or_sections=list(op[2]), dim=1) if op[3] \
                    else torch.split(v, list(op[2]), 1)
                for j in range(len(op[2])):
                    vals.append(parts[j])
            else:
                vals.append(self._extra(vals[op[1]], op))
        out = None
        for i, v in enumerate(self.leaves):
            pooled = F.avg_pool2d(input=vals[v], kernel_size=4) if i % 2 else F.avg_pool2d(vals[v], 4)
            flat = torch.flatten(input=pooled, start_dim=1) if i % 2 else torch.flatten(pooled, 1)
            h = self.heads[f"v{v}"](flat)
            out = h if out is None else out + h
        return out

    def _extra(self, v, op):
        kind, kw = op[0], op[-1]
        if kind == "scale":  # sizes read as numbers (channels and width)
            return v * v.size(1) ** -0.5 / v.shape[-1] if kw else v * (v.shape[1] ** -0.5) / v.size(-1)
        if kind == "squeeze":
            s = F.adaptive_avg_pool2d(input=v, output_size=1) if kw else F.adaptive_avg_pool2d(v, 1)
            return v * torch.sigmoid(s.squeeze()).unsqueeze(-1).unsqueeze(-1)
        if kind == "drop":
            return self._drop(v, kw)
        if kind == "reduce":
            if op[2] == "sum":
                return v + (torch.sum(input=v.pow(2), dim=1, keepdim=True) if kw else v.pow(2).sum(1, keepdim=True))
            return v * torch.sigmoid(torch.mean(input=v, dim=1, keepdim=True) if kw else v.mean(1, keepdim=True))
        k = op[2]  # gate: the first k channels, gated by the next k, then the rest unchanged
        a, b = v.split([k, v.shape[1] - k], 1)
        g = torch.sigmoid(input=b[:, :k]) if kw else torch.sigmoid(b[:, :k])
        return torch.cat(tensors=[a * g, b], dim=1) if kw else torch.cat([a * g, b], 1)


    def _drop(self, v, kw):
        raise AssertionError("only DropDagNet has dropout ops")


class DropDagNet(DagNet):
    """A DagNet with a ``drop`` op: only this class's code names ``self.training``, so the fx frontend
    traces a model a second time (to bind the flag) only when it has dropout to bind."""

    def _drop(self, v, kw):
        return F.dropout(input=v, p=0.3, training=self.training) if kw else F.dropout(v, 0.3, self.training)


def build(ops: Sequence[tuple]) -> Tuple[nn.Module, Tuple[torch.Tensor]]:
    torch.manual_seed(0)
    m = (DropDagNet if any(op[0] == "drop" for op in ops) else DagNet)(ops)
    zoo._randomize(m)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return m, (x,)


def _split_key(key: str):
    name, _, dim = key.rpartition(":")
    return name, int(dim)


# FXPRUNE_PROPERTY_EXAMPLES=3000 for the long run (see the closing note of issue 14). With --hypothesis-seed=7:
# at 70eacbb 3,000 passing, 0 failing, 703 invalid, 3,757 s (load average 10-13 on 2 cores); at 4e3f8e6
# 3,000 passing, 0 failing, 661 invalid, 2,268 s (load average 13-17).
EXAMPLES = int(os.environ.get("FXPRUNE_PROPERTY_EXAMPLES", "300"))
CRITERIA = ("l1", "l2", "random", "fpgm", "lamp")


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=dag_specs(), data=st.data())
def test_random_dag_prunes_and_verifies(ops, data):
    # Every draw that does not depend on the analysis comes first: a case Hypothesis abandons at a draw
    # (an overrun: 703 of 3,703 cases in the 3,000-example run) then wastes at most build and analyze.
    train = data.draw(st.booleans(), label="traced in train mode")
    pruner_args = _pruner_args(data)
    m, inputs = build(ops)
    with torch.no_grad():
        ref = m(*inputs)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    if train:
        m.train()  # dropout reads self.training: pruned in train mode, it must not drop out in eval mode

    graph = fxprune.analyze(m, inputs)
    tensors = zoo.named_tensors(m)
    for g in graph.groups:
        name, dim = _split_key(g.key)
        assert name in tensors, f"group key {g.key} names no parameter/buffer"
        assert g.size == tensors[name].shape[dim], f"group {g.key}: size {g.size} != {tensors[name].shape}"
        for cls in g.classes:
            assert cls and all(0 <= i < g.size for i in cls), f"group {g.key}: class {cls} out of range"
        flat = [i for cls in g.classes for i in cls]
        assert len(flat) == len(set(flat)), f"group {g.key}: classes overlap"

    candidates = [g for g in graph.groups if g.pinned is None and len(g.classes) >= 2]
    # Heads see a value's channels through flatten; their outputs are the model output: always pinned.
    for name in m.heads:
        assert graph.group_of(f"heads.{name}.weight", 0).pinned, f"heads.{name} output dim not pinned"
    if not candidates:
        event("no unpinned group")
        return
    # One to three distinct unpinned groups, each losing a random non-empty proper subset of its classes.
    # A permutation and bit masks: no strategy that rejects duplicate elements.
    k = data.draw(st.integers(1, min(3, len(candidates))), label="number of groups")
    order = data.draw(st.permutations(range(len(candidates))), label="group order")
    picked = [candidates[i] for i in order[:k]]
    removal = {}
    for g in picked:
        n = len(g.classes)
        mask = data.draw(st.integers(1, 2 ** n - 2), label=f"classes {g.key} (bit mask)")
        removal[g.key] = sorted(i for c in range(n) if mask >> c & 1 for i in g.classes[c])
    plan = fxprune.PrunePlan(removal)

    try:
        small = fxprune.prune(m, plan, inputs)
    except fxprune.PlanError as e:
        # A proper subset of classes can still empty one value of the group (e.g. a whole split chunk);
        # that plan is rightly refused. Fall back to the single smallest class of the first group.
        assert "removes all" in str(e), f"valid-looking plan {plan} refused: {e}"
        event("plan empties a value: fell back to one class")
        g = picked[0]
        removal = {g.key: sorted(min(g.classes, key=len))}
        plan = fxprune.PrunePlan(removal)
        try:
            small = fxprune.prune(m, plan, inputs)
        except fxprune.PlanError as e2:
            assert "removes all" in str(e2), f"valid-looking plan {plan} refused: {e2}"
            event("smallest class empties a value: nothing pruned")
            return
    fxprune.verify(m, small, plan, inputs)

    m.eval()
    small.eval()  # pruned in train mode, it is in train mode: a forward would update its BN statistics
    with torch.no_grad():
        out = small(*inputs)
    assert out.shape == ref.shape

    # The expanded plan of each key is exactly the chosen classes (they are whole classes already).
    # Value-level oracle: every tensor is an ordered index_select of the original; each key member kept
    # exactly the complement of its removed indices.
    meta = small.meta["fxprune"]["plan"]
    recovered = zoo.recover_slices(m, small)
    for key, removed in removal.items():
        assert sorted(meta[key]) == removed, f"{key}: expanded to {sorted(meta[key])}, chose {removed}"
        name, dim = _split_key(key)
        size = tensors[name].shape[dim]
        keep = [i for i in range(size) if i not in set(removed)]
        assert recovered.get(name, {}).get(dim) == keep, f"{key}: kept {recovered.get(name)}, expected {keep}"

    _pruner_replays(m, inputs, **pruner_args)

    after = m.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"original {k} changed"


def _pruner_args(data) -> dict:
    return {"crit": data.draw(st.sampled_from(CRITERIA), label="criterion"),
            "ratio": data.draw(st.sampled_from([0.3, 0.5, 0.8]), label="ratio"),
            "glob": data.draw(st.booleans(), label="global")}


def _pruner_replays(m: nn.Module, inputs, crit: str, ratio: float, glob: bool) -> None:
    """Three iterative Pruner steps with a random criterion: never an invalid plan, and ``pruner.plan``
    replays on the original to the same state dict, each tensor an index_select of the original that
    keeps exactly what the plan does not remove."""
    pruner = fxprune.Pruner(m, inputs, importance=crit, pruning_ratio=ratio, global_pruning=glob,
                            iterative_steps=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fxprune: Pruner step")
        for _ in range(3):
            small = pruner.step()
    plan = pruner.plan
    replay = fxprune.prune(m, plan, inputs)
    s_sd, r_sd = small.state_dict(), replay.state_dict()
    assert s_sd.keys() == r_sd.keys()
    for k, v in s_sd.items():
        assert torch.equal(r_sd[k], v), f"replay of {plan} differs at {k}"
    fxprune.verify(m, small, plan, inputs)
    recovered = zoo.recover_slices(m, small)
    tensors = zoo.named_tensors(m)
    for key, removed in plan.items():
        name, dim = _split_key(key)
        keep = [i for i in range(tensors[name].shape[dim]) if i not in set(removed)]
        assert recovered.get(name, {}).get(dim) == keep, f"pruner {key}: kept {recovered.get(name)}, expected {keep}"
    n = sum(len(v) for v in plan.values())
    event("pruner removed nothing" if not n else f"pruner removed {'1-9' if n < 10 else '10-29' if n < 30 else '30+'}")


def test_pruner_step_reuses_its_graph_module_analysis(monkeypatch):
    """One Pruner step analyses its current (pruned) GraphModule once: ``prune`` reuses the analysis that
    selection made (``cache.graphs_unchanged``). Three steps trace the user's model once and each later
    step's GraphModule once, and give the same plan and tensors as steps that analyse twice."""
    import sys

    import fxprune.passes.trace  # noqa: F401  (TracePass calls fxprune.trace)

    analyze_mod, pruner_mod = sys.modules["fxprune.passes.trace"], sys.modules["fxprune.pruner"]
    ops = [("conv", 0, 6, 3, 1), ("bn", 1), ("act", 2, "relu"), ("conv", 3, 8, 3, 2), ("add", 4, 4)]

    def run(reuse: bool):
        traced: List[str] = []
        real_trace = analyze_mod.trace

        def counting(model, *a, **k):
            traced.append("graph" if isinstance(model, torch.fx.GraphModule) else type(model).__name__)
            return real_trace(model, *a, **k)

        with monkeypatch.context() as mp:
            mp.setattr(analyze_mod, "trace", counting)
            if not reuse:
                mp.setattr(pruner_mod.cache, "graphs_unchanged", contextlib.nullcontext)
            m, inputs = build(ops)
            pruner = fxprune.Pruner(m, inputs, importance="l1", pruning_ratio=0.5, iterative_steps=3)
            for _ in range(3):
                small = pruner.step()
        return traced, pruner.plan, small.state_dict()

    traced, plan, sd = run(reuse=True)
    assert traced == ["DagNet", "graph", "graph"], traced
    traced2, plan2, sd2 = run(reuse=False)
    assert traced2 == ["DagNet"] + ["graph"] * 4, traced2
    assert dict(plan.items()) == dict(plan2.items()) and len(plan) > 0
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
