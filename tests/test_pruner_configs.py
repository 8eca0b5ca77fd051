"""Pruner configurations and criteria over the model catalogue (``benchmarks/zoo_models.py``), issue 13.

1. Every criterion scores every removable class of every group (``LayerImportance.scored``): no class is left
   at a silent zero because its parameters belong to a module the criterion does not know (a ``Conv2d``
   subclass with its own forward, an ``nn.MultiheadAttention`` projection, a class token). ``bn`` scores only
   BatchNorm channels by definition and must *say* when a group has none.
2. Every ``Pruner`` configuration (ratio 0.1-0.9, local/global, every criterion, heads on/off,
   ``target_macs``/``target_params``) builds a valid plan: ``step()`` raises nothing, the pruned model equals the
   original with the removed channels zeroed (``fxprune.verify``), and ``pruner.plan`` replays on the original
   model to a model with the same state-dict shapes.

A few catalogue models run in the fast suite (a Hypothesis sample of configurations); every model, with a
deterministic sweep that covers each option value, runs under ``-m zoo``.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest
import torch
from helpers import flatten_outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxprune
import fxprune.importance as imp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from zoo_models import build, get_spec, specs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")

CRITERIA = ["l1", "l2", "bn", "lamp", "fpgm", "taylor", "hessian", "activation", "random"]
FAST = ["resnet18"]  # the fast suite's share (CPU budget); the mechanisms have unit tests in test_importance
ALL = [s.name for s in specs("all")]


def _loss(out) -> torch.Tensor | None:
    ts = [t for t in flatten_outputs(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
          and t.requires_grad]
    return sum(t.float().pow(2).mean() for t in ts) if ts else None


def prepared(name: str, model: torch.nn.Module, inputs: tuple) -> imp.Importance:
    """A criterion with the data it needs (gradients, activations) collected on ``inputs``."""
    crit = imp.RandomImportance(seed=0) if name == "random" else imp.get_importance(name)
    if name in ("taylor", "hessian"):
        model.zero_grad(set_to_none=True)
        loss = _loss(model(*inputs))
        if loss is None:
            pytest.skip(f"{name}: the model's outputs carry no gradient in eval mode")
        # retain_graph: LeViT/EfficientFormer cache a tensor computed from parameters in eval mode, so a
        # second criterion's backward goes through the first forward's graph again
        loss.backward(retain_graph=True)
        if name == "hessian":
            crit.accumulate_grad(model)
    elif name == "activation":
        with torch.no_grad(), crit.compute_importance(model):
            model(*inputs)
    return crit


_CACHE: dict = {}


def _model(name: str):
    if name not in _CACHE:
        _CACHE.clear()  # one model at a time: the catalogue's big models do not all fit
        model, inputs = build(get_spec(name))
        _CACHE[name] = (model, inputs, fxprune.analyze(model, inputs))
    return _CACHE[name]


# ------------------------------------------------------------------------------------------ 1. coverage

def _check_coverage(name: str, caplog) -> None:
    model, inputs, graph = _model(name)
    groups = [g for g in graph.groups if g.pinned is None and g.all_classes]
    if not groups:
        pytest.skip(f"{name}: every group is pinned")
    for crit_name in CRITERIA:
        if crit_name == "random":
            continue  # scores every class by construction
        crit = prepared(crit_name, model, inputs)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fxprune.importance"):
            unscored = []
            for g in groups:
                got = crit.scored(g, graph.gm)
                if not bool(got.all()):
                    unscored.append((g.key, int((~got).sum())))
        if crit_name == "bn":
            if unscored:  # by definition: channels without a BatchNorm, but the user must be told
                crit(next(g for g in groups if g.key == unscored[0][0]), graph.gm)
                assert any("BatchNorm" in r.getMessage() for r in caplog.records), unscored[:3]
            continue
        assert not unscored, f"{crit_name}: unscored classes (group, count): {unscored[:5]}"
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", FAST)
def test_every_class_scored_fast(name, caplog):
    _check_coverage(name, caplog)


@pytest.mark.zoo
@pytest.mark.parametrize("name", ALL)
def test_every_class_scored_zoo(name, caplog):
    _check_coverage(name, caplog)


# ------------------------------------------------------------------------------------------ 2. configurations

def _check_config(name: str, crit_name: str, ratio: float, global_pruning: bool, heads: bool,
                  budget: str | None) -> None:
    model, inputs, _ = _model(name)
    crit = prepared(crit_name, model, inputs)
    kw = {"pruning_ratio": ratio}
    if budget == "macs":
        kw = {"target_macs": max(ratio, 0.3)}
    elif budget == "params":
        kw = {"target_params": max(ratio, 0.3)}
    if heads:
        kw.update(prune_num_heads=True, head_pruning_ratio=min(ratio, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = fxprune.Pruner(model, inputs, importance=crit, global_pruning=global_pruning, **kw)
        small = pruner.step()
    model.zero_grad(set_to_none=True)
    report = fxprune.verify(model, small, pruner.plan, inputs)
    with torch.no_grad():
        scale = max(1.0, max(float(t.abs().max()) for t in flatten_outputs(model(*inputs))))
    assert report.max_abs_diff <= 1e-3 * scale, report
    replay = fxprune.prune(model, pruner.plan, inputs)
    a, b = small.state_dict(), replay.state_dict()
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items() if k in a}


@pytest.mark.parametrize("name", FAST)
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(crit_name=st.sampled_from(CRITERIA), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]),
       global_pruning=st.booleans(), heads=st.booleans(), budget=st.sampled_from([None, None, "macs", "params"]))
def test_pruner_configs_fast(name, crit_name, ratio, global_pruning, heads, budget):
    _check_config(name, crit_name, ratio, global_pruning, heads, budget)


def _sweep() -> list[tuple]:
    """A deterministic sweep that gives every option value at least once per model (criteria x ratios cycle)."""
    ratios = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    out = []
    for i, crit in enumerate(CRITERIA):
        out.append((crit, ratios[i % len(ratios)], i % 2 == 1, i % 3 == 0, None))
    out += [("l2", 0.5, False, False, "macs"), ("taylor", 0.7, True, True, "macs"),
            ("l1", 0.5, False, False, "params"), ("activation", 0.9, True, False, "params")]
    return out


@pytest.mark.zoo
@pytest.mark.parametrize("config", _sweep(), ids=lambda c: "-".join(str(x) for x in c))
@pytest.mark.parametrize("name", ALL)
def test_pruner_configs_zoo(name, config):
    _check_config(name, *config)


@pytest.mark.parametrize("crit_name", ["hessian", "activation"])
def test_heads_and_channels_in_one_step_score_the_model_the_data_came_from(crit_name):
    """Whole heads and channels are chosen from one analysis and applied as one plan, so a criterion whose
    data was recorded on the model (accumulated gradients, activations) never scores a head-pruned copy."""
    _check_config("vit_b_32", crit_name, 0.7, False, True, None)
