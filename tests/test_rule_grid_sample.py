"""grid_sample keeps channels apart: its channels prune like an element-wise op (oracle: zeroed rows)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune


class Warp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x, grid):
        return self.b(F.grid_sample(torch.relu(self.a(x)), grid, align_corners=False))


def test_grid_sample_channels_prune_and_match_the_zeroed_original():
    torch.manual_seed(0)
    model = Warp().eval()
    x, grid = torch.randn(2, 3, 6, 6), torch.rand(2, 5, 5, 2) * 2 - 1
    graph = fxprune.analyze(model, (x, grid))
    assert graph.group_of("a.weight", 0).pinned is None
    assert graph.group_of("a.weight", 1).pinned  # the model input
    plan = fxprune.PrunePlan({"a.weight:0": [0, 5, 6]})
    small = fxprune.prune(model, plan, (x, grid))
    assert (small.a.out_channels, small.b.in_channels) == (5, 5)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.a.weight[[0, 5, 6]] = 0
        ref.a.bias[[0, 5, 6]] = 0
        torch.testing.assert_close(small(x, grid), ref(x, grid), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(small(x, grid), model(x, grid), atol=1e-4)
