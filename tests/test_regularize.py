"""Sparse-training regularizers against gradients computed directly with autograd.

Every oracle here is independent of fxprune's analysis: the members of each channel class are written by
hand, the penalty is built from them, and autograd differentiates ``loss + penalty``; the regularizer's
in-place update of ``loss``'s gradients must match.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
import torchvision

import fxprune
from fxprune.errors import FxpruneError
from fxprune.regularize import BNScaleRegularizer, GroupLassoRegularizer, GrowingRegularizer

Members = List[Tuple[str, int]]


class ConvBNConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


# conv1's output channels: one class per channel, over these slices (conv2's output is the model's: pinned).
CBC_MEMBERS: Members = [("conv1.weight", 0), ("conv1.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
                        ("conv2.weight", 1)]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        a = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.head(torch.relu(a + h))


# The residual stream (8 classes) and the inner width (4 classes); conv2.weight is in both.
RES_GROUPS: Dict[str, Members] = {
    "stream": [("stem.weight", 0), ("bn0.weight", 0), ("bn0.bias", 0), ("conv1.weight", 1),
               ("conv2.weight", 0), ("bn2.weight", 0), ("bn2.bias", 0), ("head.weight", 1)],
    "inner": [("conv1.weight", 0), ("bn1.weight", 0), ("bn1.bias", 0), ("conv2.weight", 1)],
}


@pytest.fixture(scope="module")
def resnet18():
    """resnet18 (64×64) with nonzero BatchNorm shifts (the default zeros would hide ``grad += γ·b``), its
    example input and its analysis, shared: the regularizers only ever write ``.grad``."""
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.1, 0.1)
    return model, x, fxprune.analyze(model, x)


def _randomize(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


def _grads(model: nn.Module, x: torch.Tensor, penalty=None) -> Dict[str, torch.Tensor]:
    """Gradients of ``loss`` (+ ``penalty(params)``) by autograd, left in ``.grad`` and returned as copies."""
    model.zero_grad(set_to_none=True)
    loss = _loss(model, x)
    if penalty is not None:
        loss = loss + penalty(dict(model.named_parameters()))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _class_sq(params: Dict[str, torch.Tensor], members: Members, n: int) -> List[torch.Tensor]:
    """‖W_c‖² of class c (of n) = sum over the hand-written members of the slices at indices ``i ≡ c mod n``
    (index c itself when the dim has n entries; c, c + n, ... along a grouped conv's wider dims)."""
    def sq(w: torch.Tensor, dim: int, c: int) -> torch.Tensor:
        return w.index_select(dim, torch.arange(c, w.shape[dim], n)).pow(2).sum()
    return [sum(sq(params[name], dim, c) for name, dim in members) for c in range(n)]


def _assert_grads(model: nn.Module, expected: Dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1))


# groups=2: input channels t and t + 4 share weight column t, so they go together; the outputs go in the
# same pairs (equal count per block), so each class holds two rows (and two columns of the next conv).
GROUPED: Dict[str, Members] = {
    "in": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)],
    "out": [("2.weight", 0), ("2.bias", 0), ("4.weight", 1)],
}

# ---------------------------------------------------------------------------------------------- BN scale

class ManyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn1d = nn.BatchNorm1d(6)
        self.conv = nn.Conv2d(1, 3, 1)
        self.bn2d = nn.BatchNorm2d(3)
        self.bn3d = nn.BatchNorm3d(3)
        self.plain = nn.BatchNorm1d(6, affine=False)
        self.ln = nn.LayerNorm(6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))

    def forward(self, x):
        a = self.block(self.ln(self.plain(self.bn1d(self.lin(x)))))
        b = self.bn2d(self.conv(x.view(-1, 1, 2, 2)))
        c = self.bn3d(b.unsqueeze(2))
        return a.sum(1) + c.flatten(1).sum(1)


@pytest.mark.parametrize("ignored", [(), ("bn2d", "block"), "modules"])
def test_bn_scale_matches_l1_autograd(ignored):
    model, x = _randomize(ManyBN()), torch.randn(5, 4)
    with torch.no_grad():
        model.bn1d.weight[2] = 0.0  # sign(0) = 0: no push on an exact zero
    if ignored == "modules":
        ignored = (model.bn2d, model.block)
    names = {"bn2d", "block"} if ignored else set()
    targets = [f"{m}.weight" for m in ("bn1d", "bn2d", "bn3d", "block.1") if m.split(".")[0] not in names]
    reg = 1e-2
    expected = _grads(model, x, lambda p: reg * sum(p[t].abs().sum() for t in targets))
    before = _grads(model, x)
    r = BNScaleRegularizer(model, reg=reg, ignored=ignored)
    assert sorted(r.targets(model)) == sorted(targets)
    r.regularize(model)
    _assert_grads(model, expected)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])}
    assert changed == set(targets)
    assert model.bn1d.weight.grad[2] == before["bn1d.weight"][2]


def test_bn_scale_resnet18_touches_exactly_the_20_bn_weights(resnet18):
    model, x, _ = resnet18
    before = _grads(model, x)
    params = dict(model.named_parameters())
    BNScaleRegularizer(model, reg=1e-3).regularize(model)
    changed = {n for n, p in params.items() if not torch.equal(p.grad, before[n])}
    bn_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bn_weights) == 20 and changed == bn_weights
    for n in bn_weights:
        torch.testing.assert_close(params[n].grad, before[n] + 1e-3 * params[n].detach().sign())


def test_bn_scale_rejects_unknown_ignored_and_missing_grad():
    model = ConvBNConv()
    with pytest.raises(ValueError):
        BNScaleRegularizer(model, ignored=["nope"])
    with pytest.raises(ValueError):
        BNScaleRegularizer(model, ignored=[nn.BatchNorm2d(3)])
    r = BNScaleRegularizer(model)
    with pytest.raises(FxpruneError, match=r"bn\.weight.*backward"):
        r.regularize(model)
    model.bn.weight.requires_grad_(False)
    r.regularize(model)  # frozen: skipped silently
    assert model.bn.weight.grad is None


def test_bn_scale_shared_module_counted_once():
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(2, 3), bn, bn)
    assert BNScaleRegularizer(model).targets(model) == ["1.weight"]
    assert BNScaleRegularizer(model, ignored=["2"]).targets(model) == []
    model(torch.randn(4, 2)).sum().backward()
    before = bn.weight.grad.clone()
    BNScaleRegularizer(model, reg=0.25).regularize(model)
    torch.testing.assert_close(bn.weight.grad, before + 0.25)


# ---------------------------------------------------------------------------------------------- group lasso

def _lasso_penalty(groups: Dict[str, Tuple[Members, int]], reg: float, alpha: float):
    """reg/2 · Σ_c γ_c ‖W_c‖², with γ_c = 2^(alpha·(I_max − I_c)/(I_max − I_min)) from the current weights, held
    constant (detached)."""
    def penalty(p):
        total = 0.0
        for members, n in groups.values():
            sq = _class_sq(p, members, n)
            norms = torch.stack([s.detach().sqrt() for s in sq])
            span = norms.max() - norms.min()
            gamma = 2.0 ** (alpha * (norms.max() - norms) / span) if span > 0 else torch.ones(n)
            total = total + reg / 2 * sum(g * s for g, s in zip(gamma, sq))
        return total
    return penalty


@pytest.mark.parametrize("make,groups", [
    (ConvBNConv, {"g": (CBC_MEMBERS, 6)}),
    (Residual, {"stream": (RES_GROUPS["stream"], 8), "inner": (RES_GROUPS["inner"], 4)}),
    (grouped, {"in": (GROUPED["in"], 4), "out": (GROUPED["out"], 4)}),
])
def test_group_lasso_matches_autograd(make, groups):
    model, x = _randomize(make()), torch.randn(2, 3, 6, 6)
    reg, alpha = 1e-2, 3.0
    expected = _grads(model, x, _lasso_penalty(groups, reg, alpha))
    before = _grads(model, x)
    GroupLassoRegularizer(fxprune.analyze(model, x), reg=reg, alpha=alpha).regularize(model)
    _assert_grads(model, expected)
    touched = {name for members, _ in groups.values() for name, _ in members}
    for n, p in model.named_parameters():  # outside every unpinned group: exactly unchanged
        if n not in touched:
            assert torch.equal(p.grad, before[n]), n


def test_group_lasso_scales_and_equal_norms():
    model, x = _randomize(ConvBNConv()), torch.randn(1, 3, 6, 6)
    r = GroupLassoRegularizer(fxprune.analyze(model, x), alpha=4.0)
    params = dict(model.named_parameters())
    with torch.no_grad():
        norms = torch.stack(_class_sq(params, CBC_MEMBERS, 6)).sqrt().double()
    gamma = r.scales(model)["conv1.weight:0"]
    assert gamma.min().item() == pytest.approx(1.0) and gamma.max().item() == pytest.approx(16.0)
    assert gamma.argmax() == norms.argmin() and gamma.argmin() == norms.argmax()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    assert torch.equal(r.scales(model)["conv1.weight:0"], torch.ones(6, dtype=torch.float64))


def test_group_lasso_resnet18_leaves_only_pinned_params(resnet18):
    model, x, graph = resnet18
    before = _grads(model, x)
    GroupLassoRegularizer(graph, reg=1e-2).regularize(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])}
    # every conv/bn tensor has a prunable dim; only the classifier's bias (the model output) is pinned
    assert changed == set(before) - {"fc.bias"}
    # the stem's input channels are pinned but its output channels are not: whole rows move
    assert (model.conv1.weight.grad != before["conv1.weight"]).all()


def test_group_lasso_update_after_pruning_and_errors():
    model, x = _randomize(ConvBNConv()), torch.randn(1, 3, 6, 6)
    r = GroupLassoRegularizer(fxprune.analyze(model, x), reg=1e-2, alpha=2.0)
    small = fxprune.prune(model, fxprune.PrunePlan({"conv1.weight:0": [0, 3]}), x)
    _grads(small, x)
    with pytest.raises(FxpruneError, match="update"):
        r.regularize(small)
    r.update(fxprune.analyze(small, x))
    expected = _grads(small, x, _lasso_penalty({"g": (CBC_MEMBERS, 4)}, 1e-2, 2.0))
    _grads(small, x)
    r.regularize(small)
    _assert_grads(small, expected)
    with pytest.raises(FxpruneError, match=r"conv1\.weight"):
        r.regularize(nn.Sequential(nn.Linear(2, 2)))
    small.zero_grad(set_to_none=True)
    with pytest.raises(FxpruneError, match="backward"):
        r.regularize(small)


# ---------------------------------------------------------------------------------------------- growing

def test_growing_gamma_and_grads():
    model, x = _randomize(ConvBNConv()), torch.randn(2, 3, 6, 6)
    reg, delta = 1e-3, 1e-2
    r = GrowingRegularizer(fxprune.analyze(model, x), reg=reg, delta_reg=delta)
    assert torch.equal(r.gamma["conv1.weight:0"], torch.full((6,), reg, dtype=torch.float64))
    gamma = torch.full((6,), reg, dtype=torch.float64)
    for step in range(2):
        with torch.no_grad():
            s = torch.stack(_class_sq(dict(model.named_parameters()), CBC_MEMBERS, 6)).double().sqrt()
        gamma = gamma + delta * (s.max() - s) / (s.max() - s.min() + 1e-8)
        r.update_reg()
        torch.testing.assert_close(r.gamma["conv1.weight:0"], gamma)
        with torch.no_grad():  # change the weights so that the second step scores differently
            model.conv1.weight[step] *= 3.0
    assert len(set(r.gamma["conv1.weight:0"].tolist())) > 2

    g = gamma.float()

    def penalty(p):
        return sum(gc / 2 * sq for gc, sq in zip(g, _class_sq(p, CBC_MEMBERS, 6)))
    expected = _grads(model, x, penalty)
    before = _grads(model, x)
    r.regularize(model)
    _assert_grads(model, expected)
    assert not torch.equal(model.bn.weight.grad, before["bn.weight"])  # Torch-Pruning leaves BN unchanged
    assert torch.equal(model.conv2.bias.grad, before["conv2.bias"])


def test_growing_explicit_scores_reset_and_errors():
    model, x = ConvBNConv(), torch.randn(1, 3, 6, 6)
    graph = fxprune.analyze(model, x)
    r = GrowingRegularizer(graph, reg=0.0, delta_reg=1.0)
    r.update_reg({"conv1.weight:0": [4.0, 0.0, 2.0, 4.0, 1.0, 3.0]})
    torch.testing.assert_close(r.gamma["conv1.weight:0"],
                               torch.tensor([0.0, 1.0, 0.5, 0.0, 0.75, 0.25], dtype=torch.float64))
    r.update_reg({"conv1.weight:0": [1.0] * 6})  # all equal: nothing grows
    torch.testing.assert_close(r.gamma["conv1.weight:0"],
                               torch.tensor([0.0, 1.0, 0.5, 0.0, 0.75, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="nope"):
        r.update_reg({"nope": [1.0]})
    with pytest.raises(ValueError, match="6 classes"):
        r.update_reg({"conv1.weight:0": [1.0, 2.0]})
    torch.testing.assert_close(r.gamma["conv1.weight:0"],  # a rejected call changes nothing
                               torch.tensor([0.0, 1.0, 0.5, 0.0, 0.75, 0.25], dtype=torch.float64))
    r.update(graph)
    assert torch.equal(r.gamma["conv1.weight:0"], torch.zeros(6, dtype=torch.float64))


def test_growing_resnet18_changes_bn_weight_grads(resnet18):
    model, x, graph = resnet18
    r = GrowingRegularizer(graph, reg=1e-2, delta_reg=1e-2)
    r.update_reg()
    before = _grads(model, x)
    r.regularize(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])}
    bn_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_weights <= changed and changed == set(before) - {"fc.bias"}
