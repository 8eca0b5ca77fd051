"""Rules of ``fxprune/rules/hf_ops.py``: ops Hugging Face decoders leave in an exported graph.

Before: each op had no rule, so every dim it touched was pinned (and named in a warning).
Expected: the dims the op carries through are prunable; hand-picked channels of the layer before it are
removed through the export frontend, and the pruned model equals an oracle written here: the original
with the producer's rows and the consumer's matching columns zeroed (the columns computed from the op's
definition), with widths checked by hand; the unpruned model differs from that oracle.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


from helpers import zeroed

REMOVED = [1, 5]


def _check(model, x, plan, zero, widths, atol=1e-5):
    """No 'no rule' warning; ``plan`` prunes into ``widths``; the result equals ``model`` with ``zero`` =
    {param: (dim, indices)} zeroed, and ``model`` itself does not."""
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = fxprune.analyze(model, x, frontend="export")
    assert not [w for w in caught if "no rule" in str(w.message)], [str(w.message) for w in caught]
    for key in plan:
        name, _, dim = key.rpartition(":")
        assert graph.group_of(name, int(dim)).pinned is None, key
    small = fxprune.prune(model, fxprune.PrunePlan(plan), x, frontend="export")
    oracle = zeroed(model, zero)
    with torch.no_grad():
        want, got, full = oracle(x), small(x), model(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=atol), float((got - want).abs().max())
    assert not torch.allclose(full, want, atol=atol)
    state = small.state_dict()
    for name, shape in widths.items():
        assert tuple(state[name].shape) == shape, (name, tuple(state[name].shape), shape)
    return graph


class Between(nn.Module):
    """``b(fn(a(x)))``: ``a`` makes 8 channels, ``fn`` maps them to ``width`` features ``b`` reads."""

    def __init__(self, fn, width=8):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(3, 8), nn.Linear(width, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


_PLAIN = {"a.weight": (0, REMOVED), "a.bias": (0, REMOVED), "b.weight": (1, REMOVED)}
_WIDTHS = {"a.weight": (6, 3), "b.weight": (2, 6)}


@pytest.mark.parametrize("fn", [F.softplus, F.logsigmoid,
                                lambda h: h * torch.logical_not(h > 0.1).float(),
                                lambda h: h * torch.bitwise_not(h > 0.1).float()],
                         ids=["softplus", "log_sigmoid", "logical_not", "bitwise_not"])
def test_unary_ops_carry_every_dim(fn):
    torch.manual_seed(0)
    _check(Between(fn), torch.randn(4, 3), {"a.weight:0": REMOVED}, _PLAIN, _WIDTHS)


def test_repeat_interleave_maps_each_channel_to_its_repeats():
    torch.manual_seed(0)
    m = Between(lambda h: h.repeat_interleave(2, dim=-1), width=16)
    cols = [2 * c + k for c in REMOVED for k in range(2)]  # channel c is features 2c and 2c + 1
    _check(m, torch.randn(4, 3), {"a.weight:0": REMOVED},
           {"a.weight": (0, REMOVED), "a.bias": (0, REMOVED), "b.weight": (1, cols)},
           {"a.weight": (6, 3), "b.weight": (2, 12)})


def _tril_per_channel(h):  # [T, C] -> per channel the lower triangle of its token outer product, summed
    t = h.transpose(0, 1)
    return torch.tril(t.unsqueeze(-1) @ t.unsqueeze(-2)).sum(-1).transpose(0, 1)


def _triu_per_channel(h):
    t = h.transpose(0, 1)
    return torch.triu(t.unsqueeze(-1) @ t.unsqueeze(-2)).sum(-1).transpose(0, 1)


@pytest.mark.parametrize("fn", [_tril_per_channel, _triu_per_channel], ids=["tril", "triu"])
def test_tril_triu_carry_leading_dims(fn):
    torch.manual_seed(0)
    _check(Between(fn), torch.randn(4, 3), {"a.weight:0": REMOVED}, _PLAIN, _WIDTHS)


class Gather(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)
        self.register_buffer("idx", torch.tensor([[3, 0, 1, 2, 2, 1, 0, 3]] * 4))  # token order per channel

    def forward(self, x):
        return self.b(torch.gather(self.a(x), 0, self.idx))


def test_gather_carries_the_other_dims_and_slices_its_index():
    torch.manual_seed(0)
    _check(Gather(), torch.randn(4, 3), {"a.weight:0": REMOVED}, _PLAIN, {**_WIDTHS, "idx": (4, 6)})


def test_topk_keeps_every_dim_but_its_own():
    torch.manual_seed(0)
    _check(Between(lambda h: torch.topk(h, 2, dim=0).values), torch.randn(4, 3), {"a.weight:0": REMOVED},
           _PLAIN, _WIDTHS)


class Scores(nn.Module):
    """Bloom-style attention scores ``baddbmm(bias, q, k^T)`` over ``q``/``k`` channels."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.out = nn.Linear(3, 8), nn.Linear(3, 8), nn.Linear(16, 2)
        self.bias = nn.Parameter(torch.randn(1, 4, 4))

    def forward(self, x):
        s = torch.baddbmm(self.bias, self.q(x), self.k(x).transpose(1, 2), beta=0.5, alpha=0.25)
        return self.out(s.flatten(1))


def test_baddbmm_contracted_dim_is_prunable():
    torch.manual_seed(0)
    zero = {f"{n}.{p}": (0, REMOVED) for n in "qk" for p in ("weight", "bias")}
    _check(Scores(), torch.randn(1, 4, 3), {"q.weight:0": REMOVED}, zero,
           {"q.weight": (6, 3), "k.weight": (6, 3)})


def test_numpy_t_reverses_dims():
    torch.manual_seed(0)
    _check(Between(lambda h: (h.T * 2.0).T), torch.randn(4, 3), {"a.weight:0": REMOVED}, _PLAIN, _WIDTHS)
