"""Per-op tests over the zoo in tests/models.py.

For every case: analysis finds the expected group and pins what must be pinned; pruning with the case's
plan gives a model that (a) passes ``fxprune.verify``, (b) has the hand-written widths, (c) holds exactly
``index_select`` of the original weights at the hand-picked kept indices, (d) keeps the output structure
and shapes, (e) leaves the original model untouched; and the expanded plan is the hand-written one.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Tuple

import pytest
import torch
from torch.utils import _pytree as pytree

import fxprune

try:
    import models as zoo
except ImportError:  # tests/ made a package
    from tests import models as zoo

CASES = zoo.CASES
EXACT = [c for c in CASES if c.exact]


def _ids(cases):
    return [c.name for c in cases]


def _split_key(key: str) -> Tuple[str, int]:
    name, _, dim = key.rpartition(":")
    return name, int(dim)


def _snapshot(m: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


_CACHE: Dict[str, Any] = {}


def _pruned(case):
    """(model, inputs, small) for ``case``, pruned once per session; the model is a fresh factory copy."""
    if case.name not in _CACHE:
        m, inputs = case.factory()
        small = fxprune.prune(m, fxprune.PrunePlan(case.plan), inputs)
        _CACHE[case.name] = (m, inputs, small)
    return _CACHE[case.name]


def _attr(root: torch.nn.Module, path: str):
    mod_path, _, attr = path.rpartition(".")
    mod = root.get_submodule(mod_path) if mod_path else root
    return getattr(mod, attr)


def _tensor(root: torch.nn.Module, name: str) -> torch.Tensor:
    tensors = zoo.named_tensors(root)
    assert name in tensors, f"{name!r} not among the pruned model's tensors {sorted(tensors)}"
    return tensors[name]


# ------------------------------------------------------------------------------------------- analysis

@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_plan_groups_exist_and_unpinned(case):
    m, inputs = case.factory()
    graph = fxprune.analyze(m, inputs, strict=True)
    tensors = zoo.named_tensors(m)
    for key in case.plan:
        name, dim = _split_key(key)
        g = graph.group_of(name, dim)
        assert g is not None, f"no group for {key}"
        assert g.pinned is None, f"{key}: group {g.key} pinned: {g.pinned}"
        assert (name, dim) in [tuple(x) for x in g.members], f"{key} not among members of {g.key}"
        gname, gdim = _split_key(g.key)
        assert g.size == tensors[gname].shape[gdim], f"group {g.key}: size {g.size}"
        assert len(g.classes) >= 2, f"group {g.key} has {len(g.classes)} removable classes"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_coupled_members_share_the_group(case):
    """Every tensor dim the case expects to shrink is in the group of the (single) plan key."""
    if len(case.plan) != 1:
        pytest.skip("several plan keys")
    m, inputs = case.factory()
    graph = fxprune.analyze(m, inputs)
    (key,) = case.plan
    g = graph.group_of(*_split_key(key))
    tensors = zoo.named_tensors(m)
    for name, dims in case.kept.items():
        for dim, idx in dims.items():
            if len(idx) == tensors[name].shape[dim]:
                continue
            other = graph.group_of(name, dim)
            assert other is not None and other.key == g.key, \
                f"{name}:{dim} is in group {getattr(other, 'key', None)}, expected {g.key}"


PINNED = [(c, k) for c in CASES for k in c.pinned]


@pytest.mark.parametrize("case,key", PINNED, ids=[f"{c.name}-{k}" for c, k in PINNED])
def test_pinned_groups(case, key):
    m, inputs = case.factory()
    graph = fxprune.analyze(m, inputs)
    g = graph.group_of(*_split_key(key))
    assert g is not None, f"no group for {key}"
    assert isinstance(g.pinned, str) and g.pinned, f"{key}: group {g.key} should be pinned"
    with pytest.raises(fxprune.PlanError):
        fxprune.prune(m, fxprune.PrunePlan({key: [0]}), inputs)


# ------------------------------------------------------------------------------------------- pruning

@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_verify(case):
    m, inputs, small = _pruned(case)
    report = fxprune.verify(m, small, fxprune.PrunePlan(case.plan), inputs)
    if case.exact:
        assert report.max_abs_diff <= 1e-4, f"max_abs_diff {report.max_abs_diff}"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_widths(case):
    m, inputs, small = _pruned(case)
    for path, want in case.attrs.items():
        got = _attr(small, path)
        if isinstance(want, tuple):
            got = tuple(got)
        assert got == want, f"{path}: {got!r}, expected {want!r}"
    orig = zoo.named_tensors(m)
    for name, dims in case.kept.items():
        want = list(orig[name].shape)
        for dim, idx in dims.items():
            want[dim] = len(idx)
        assert tuple(_tensor(small, name).shape) == tuple(want), f"{name}: shape"
    for name, want in case.shapes.items():
        assert tuple(_tensor(small, name).shape) == tuple(want), f"{name}: shape"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_kept_weights_are_index_select(case):
    m, inputs, small = _pruned(case)
    orig = zoo.named_tensors(m)
    for name, dims in case.kept.items():
        want = orig[name].detach()
        for dim, idx in dims.items():
            want = want.index_select(dim, torch.tensor(idx, dtype=torch.long))
        got = _tensor(small, name).detach()
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert torch.equal(got, want), f"{name}: values are not the original at the kept indices {dims}"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_all_tensors_are_slices_of_the_original(case):
    """Value-level oracle: every tensor is the original or an ordered index_select of it."""
    m, inputs, small = _pruned(case)
    recovered = zoo.recover_slices(m, small)
    for name, dims in case.kept.items():
        for dim, idx in dims.items():
            if len(idx) < zoo.named_tensors(m)[name].shape[dim]:
                assert recovered.get(name, {}).get(dim) == idx, f"{name}:{dim} kept {recovered.get(name)}"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_output_structure_and_shapes(case):
    m, inputs, small = _pruned(case)
    with torch.no_grad():
        ref = m(*inputs)
        out = small(*inputs)
    ref_leaves, ref_spec = pytree.tree_flatten(ref)
    out_leaves, out_spec = pytree.tree_flatten(out)
    assert out_spec == ref_spec, f"output structure {out_spec} != {ref_spec}"
    for r, o in zip(ref_leaves, out_leaves):
        assert tuple(o.shape) == tuple(r.shape)
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_original_unchanged(case):
    m, inputs = case.factory()
    before = _snapshot(m)
    training = m.training
    graph = fxprune.analyze(m, inputs)
    small = fxprune.prune(m, fxprune.PrunePlan(case.plan), inputs)
    fxprune.verify(m, small, fxprune.PrunePlan(case.plan), inputs)
    after = m.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), f"original {k} changed"
    assert m.training == training
    fresh, _ = case.factory()
    for path in case.attrs:
        assert _attr(m, path) == _attr(fresh, path), f"original {path} changed"
    assert graph is not None


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_expanded_plan(case):
    m, inputs, small = _pruned(case)
    meta = small.meta["fxprune"]["plan"]
    for key, want in case.expanded.items():
        assert key in meta, f"{key} missing from the expanded plan {sorted(meta)}"
        assert sorted(meta[key]) == want, f"{key}: expanded to {sorted(meta[key])}, expected {want}"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_plan_replays_from_json(case):
    """The same plan through JSON on a fresh model copy gives the same weights."""
    m, inputs, small = _pruned(case)
    m2, inputs2 = case.factory()
    small2 = fxprune.prune(m2, fxprune.PrunePlan.from_json(fxprune.PrunePlan(case.plan).to_json()), inputs2)
    a, b = zoo.named_tensors(small), zoo.named_tensors(small2)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pruned_model_trains(case):
    """Gradients flow through the pruned graph and reach every parameter of the right shape."""
    m, inputs, small = _pruned(case)
    small = copy.deepcopy(small)
    small.train()
    out = small(*inputs)
    loss = sum(t.float().sum() for t in pytree.tree_leaves(out))
    loss.backward()
    for name, p in small.named_parameters():
        if p.grad is not None:
            assert p.grad.shape == p.shape, name


# ----------------------------------------------------------------------------------------- bad plans

def test_bad_plans_raise_plan_error():
    case = zoo.CASES_BY_NAME["conv2d_bias"]
    m, inputs = case.factory()
    for bad in ({"conv1.weight:0": [8]},                    # out of range
                {"conv1.weight:0": list(range(8))},         # every channel
                {"nope.weight:0": [0]},                     # unknown parameter
                {"conv1.weight:7": [0]}):                   # no such dim
        with pytest.raises(fxprune.PlanError):
            fxprune.prune(m, fxprune.PrunePlan(bad), inputs)


def test_grouped_conv_whole_group_goes_and_every_position_is_rejected():
    case = zoo.CASES_BY_NAME["conv2d_groups4_out"]
    m, inputs = case.factory()
    g = m.conv2.groups
    per = m.conv2.out_channels // g
    small = fxprune.prune(m, fxprune.PrunePlan({"conv2.weight:0": list(range(per))}), inputs)  # group 0
    assert (small.conv2.groups, small.conv2.out_channels) == (g - 1, m.conv2.out_channels - per)
    fxprune.verify(m, small, {"conv2.weight:0": list(range(per))}, inputs)
    every = [j + b * per for b in range(g) for j in range(per)]  # every position of every group
    with pytest.raises(fxprune.PlanError, match="keep at least one"):
        fxprune.prune(m, fxprune.PrunePlan({"conv2.weight:0": every}), inputs)


def test_inplace_false_is_default_and_prune_returns_graph_module():
    case = zoo.CASES_BY_NAME["conv2d_bias"]
    m, inputs, small = _pruned(case)
    assert isinstance(small, torch.fx.GraphModule)
    assert small is not m
    assert m.conv1.out_channels == 8


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_plan_by_ratio_verifies(case):
    """Every unpinned group of the case pruned at once (half its classes) still verifies."""
    m, inputs = case.factory()
    graph = fxprune.analyze(m, inputs)
    plan = fxprune.plan_by_ratio(graph, 0.5)
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    zoo.recover_slices(m, small)
    with torch.no_grad():
        ref_leaves = pytree.tree_leaves(m(*inputs))
        out_leaves = pytree.tree_leaves(small(*inputs))
    assert [tuple(t.shape) for t in out_leaves] == [tuple(t.shape) for t in ref_leaves]
