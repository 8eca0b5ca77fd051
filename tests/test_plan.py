"""PrunePlan index validation: only integers address channels; anything else is a PlanError naming the entry."""
import numpy as np
import pytest
import torch
from torch import nn

import fxprune


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), torch.tensor(True), 0.5, 1.0, np.float32(2.0),
                                 "1", None, torch.tensor(1.0)])
def test_non_integer_index_is_refused(bad):
    with pytest.raises(fxprune.PlanError) as e:
        fxprune.PrunePlan({"conv1.weight:0": [bad]})
    assert "conv1.weight:0" in str(e.value)


@pytest.mark.parametrize("bad", [3, "012", b"1", 1.5])
def test_indices_must_be_a_collection(bad):
    with pytest.raises(fxprune.PlanError, match="conv1.weight:0"):
        fxprune.PrunePlan({"conv1.weight:0": bad})


@pytest.mark.parametrize("good", [[2, 0], np.array([2, 0]), [np.int64(2), np.int32(0)], torch.tensor([2, 0]),
                                  (i for i in (2, 0))])
def test_integer_kinds_are_accepted(good):
    plan = fxprune.PrunePlan({"conv1.weight:0": good})
    assert plan["conv1.weight:0"] == [0, 2]
    assert all(type(i) is int for i in plan["conv1.weight:0"])  # plain ints: the plan serialises to JSON
    assert fxprune.PrunePlan.from_json(plan.to_json()) == plan


def test_json_with_float_or_bool_indices_is_refused():
    with pytest.raises(fxprune.PlanError, match="conv1.weight:0"):
        fxprune.PrunePlan.from_json('{"conv1.weight:0": [0.0]}')
    with pytest.raises(fxprune.PlanError, match="conv1.weight:0"):
        fxprune.PrunePlan.from_json('{"conv1.weight:0": [true]}')


def test_merge_validates_too():
    plan = fxprune.PrunePlan({"a.weight:0": [1]})
    assert plan.merge({"a.weight:0": np.array([0])})["a.weight:0"] == [0, 1]
    with pytest.raises(fxprune.PlanError, match="a.weight:0"):
        plan.merge({"a.weight:0": [True]})


def test_numpy_plan_prunes_the_same_channels_as_a_list_plan():
    """A plan built from numpy indices removes exactly those channels (checked against the weights)."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    small = fxprune.prune(net, fxprune.PrunePlan({"0.weight:0": np.array([4, 1])}), x)
    keep = [0, 2, 3, 5]
    assert torch.equal(small.state_dict()["0.weight"], net[0].weight[keep])
    assert torch.equal(small.state_dict()["2.weight"], net[2].weight[:, keep])
