"""Vector norms and ``F.normalize`` over a channel dim prune exactly (Before/Expected: the pruned model equals
the original with the removed channels zeroed, written out by hand here)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


class L2Scale(nn.Module):
    """SSD's L2Norm: conv, normalise over channels, a learned scale per channel, a 1x1 conv."""

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.out = nn.Conv2d(8, 4, 1)
        self.p = p

    def forward(self, x):
        y = F.normalize(self.conv(x), p=self.p, dim=1)
        return self.out(self.scale.view(1, -1, 1, 1) * y)


class NormGate(nn.Module):
    """A channel norm used as a gate: ``x * x.norm(dim=1)``."""

    def __init__(self, p):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)
        self.p = p

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.out(y * torch.norm(y, p=self.p, dim=1, keepdim=True))


def _zeroed(model, x, removed):
    """The original with channels ``removed`` of ``model.conv``'s output zeroed (the expectation)."""
    h = model.conv.register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor(removed), 0))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        h.remove()


@pytest.mark.parametrize("model", [L2Scale(2.0), L2Scale(1.0), NormGate(2), NormGate(float("inf"))],
                         ids=["normalize-p2", "normalize-p1", "norm-p2", "norm-inf"])
def test_channel_norms_prune_exactly(model):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    graph = fxprune.analyze(model, x)
    assert graph.group_of("conv.weight", 0).pinned is None
    removed = [1, 4, 6]
    small = fxprune.prune(model, {"conv.weight:0": removed}, x)
    assert small.conv.out_channels == 5 and small.out.in_channels == 5
    with torch.no_grad():
        torch.testing.assert_close(small(x), _zeroed(model, x, removed), rtol=1e-5, atol=1e-6)


def test_nuclear_norm_stays_pinned():
    class Nuc(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x) * torch.norm(self.fc(x), p="nuc", dim=(0, 1))

    assert fxprune.analyze(Nuc(), torch.randn(3, 4)).group_of("fc.weight", 0).pinned
