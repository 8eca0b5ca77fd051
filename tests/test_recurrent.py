"""Recurrent layers: LSTM / GRU / RNN (1-2 layers, bidirectional, batch_first, initial states) and cells.

Every case: ``fxprune.verify`` against the masked original, hand-written widths, and a value oracle
independent of the analysis: a fresh ``nn.LSTM``/``nn.GRU`` of the pruned hidden size whose weights are
copied by hand from the original at the kept rows/columns, run through the same surrounding layers.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune

try:
    import models as zoo
except ImportError:  # tests/ made a package
    from tests import models as zoo

H = 8


def K(n, removed):
    return [i for i in range(n) if i not in set(removed)]


class RNNNet(nn.Module):
    """Linear -> RNN -> heads on the output sequence and on the last layer's final state(s)."""

    def __init__(self, cls=nn.LSTM, num_layers=1, bidirectional=False, batch_first=False, state=False):
        super().__init__()
        self.d = 2 if bidirectional else 1
        self.pre = nn.Linear(5, 6)
        self.rnn = cls(6, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
        self.fc = nn.Linear(self.d * H, 3)
        self.hfc = nn.Linear(H, 2)
        self.lstm = cls is nn.LSTM
        self.state = state
        if state:  # initial states computed from an input, so their hidden dim is prunable
            self.h0 = nn.Linear(4, H)
            self.c0 = nn.Linear(4, H)

    def forward(self, x, z):
        y = self.pre(x)
        if self.state:
            hx = (self.h0(z), self.c0(z)) if self.lstm else self.h0(z)
            out, hn = self.rnn(y, hx)
        else:
            out, hn = self.rnn(y)
        h = hn[0] if self.lstm else hn
        res = (self.fc(out), self.hfc(h[-1]))
        if self.lstm:
            res = res + (self.hfc(hn[1][0]),)
        return res


def _case(**kw):
    torch.manual_seed(0)
    m = RNNNet(**kw).eval()
    layers = kw.get("num_layers", 1) * m.d
    x = torch.randn(2, 5, 5)
    z = torch.randn(layers, 5 if not kw.get("batch_first") else 2, 4)
    return m, (x, z)


def _reference(m: RNNNet, keep, x, z):
    """The pruned model computed with a fresh RNN of hidden size len(keep), weights sliced by hand."""
    rnn = m.rnn
    g = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(rnn)]
    h2 = len(keep)
    ref = type(rnn)(6, h2, num_layers=rnn.num_layers, bidirectional=rnn.bidirectional,
                    batch_first=rnn.batch_first)
    rows = torch.tensor([gi * H + j for gi in range(g) for j in keep])
    cols = torch.tensor(keep)
    out_cols = torch.tensor(keep + ([H + j for j in keep] if rnn.bidirectional else []))
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for sfx in (["", "_reverse"] if rnn.bidirectional else [""]):
                w_ih = getattr(rnn, f"weight_ih_l{k}{sfx}")[rows]
                if k > 0:
                    w_ih = w_ih[:, out_cols]
                getattr(ref, f"weight_ih_l{k}{sfx}").copy_(w_ih)
                w_hh = getattr(rnn, f"weight_hh_l{k}{sfx}")[rows][:, cols]
                getattr(ref, f"weight_hh_l{k}{sfx}").copy_(w_hh)
                getattr(ref, f"bias_ih_l{k}{sfx}").copy_(getattr(rnn, f"bias_ih_l{k}{sfx}")[rows])
                getattr(ref, f"bias_hh_l{k}{sfx}").copy_(getattr(rnn, f"bias_hh_l{k}{sfx}")[rows])
        y = m.pre(x)
        if m.state:
            h0 = F.linear(z, m.h0.weight[cols], m.h0.bias[cols])
            c0 = F.linear(z, m.c0.weight[cols], m.c0.bias[cols])
            out, hn = ref(y, (h0, c0) if m.lstm else h0)
        else:
            out, hn = ref(y)
        h = hn[0] if m.lstm else hn
        res = (F.linear(out, m.fc.weight[:, out_cols], m.fc.bias),
               F.linear(h[-1], m.hfc.weight[:, cols], m.hfc.bias))
        if m.lstm:
            res = res + (F.linear(hn[1][0], m.hfc.weight[:, cols], m.hfc.bias),)
    return res


VARIANTS = {
    "lstm": dict(cls=nn.LSTM),
    "lstm_2layer_bidir": dict(cls=nn.LSTM, num_layers=2, bidirectional=True),
    "lstm_batch_first_state": dict(cls=nn.LSTM, batch_first=True, state=True),
    "lstm_2layer_bidir_bf_state": dict(cls=nn.LSTM, num_layers=2, bidirectional=True, batch_first=True,
                                       state=True),
    "gru": dict(cls=nn.GRU),
    "gru_2layer_bidir_state": dict(cls=nn.GRU, num_layers=2, bidirectional=True, state=True),
    "gru_batch_first": dict(cls=nn.GRU, batch_first=True),
    "rnn_2layer": dict(cls=nn.RNN, num_layers=2),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_hidden_units(name):
    m, inputs = _case(**VARIANTS[name])
    removed = [1, 5]
    keep = K(H, removed)
    plan = fxprune.PrunePlan({"rnn.weight_hh_l0:1": removed})
    small = fxprune.prune(m, plan, inputs)
    report = fxprune.verify(m, small, plan, inputs)
    assert report.max_abs_diff < 1e-5
    rnn, d, g = small.rnn, m.d, {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(m.rnn)]
    # widths by hand
    assert rnn.hidden_size == 6 and rnn.input_size == 6
    assert small.fc.in_features == d * 6 and small.hfc.in_features == 6
    for k in range(rnn.num_layers):
        for sfx in (["", "_reverse"] if rnn.bidirectional else [""]):
            assert tuple(getattr(rnn, f"weight_ih_l{k}{sfx}").shape) == (g * 6, 6 if k == 0 else d * 6)
            assert tuple(getattr(rnn, f"weight_hh_l{k}{sfx}").shape) == (g * 6, 6)
            assert tuple(getattr(rnn, f"bias_hh_l{k}{sfx}").shape) == (g * 6,)
    if m.state:
        assert small.h0.out_features == 6
    # the plan expands to unit j of every gate block, layer and direction
    exp = small.meta["fxprune"]["plan"]
    assert exp["rnn.weight_ih_l0:0"] == sorted(gi * H + j for gi in range(g) for j in removed)
    if rnn.bidirectional and rnn.num_layers > 1:
        assert exp["rnn.weight_ih_l1_reverse:1"] == removed + [H + j for j in removed]
    # value oracle: a fresh RNN with hand-sliced weights
    x, z = inputs
    with torch.no_grad():
        got = small(x, z)
    for a, b in zip(got, _reference(m, keep, x, z), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    zoo.recover_slices(m, small)
    assert rnn._flat_weights[0] is rnn.weight_ih_l0  # the flat list follows the sliced parameters


def test_input_features():
    m, inputs = _case(cls=nn.LSTM, num_layers=2, bidirectional=True)
    plan = fxprune.PrunePlan({"pre.weight:0": [0, 3]})
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    assert small.rnn.input_size == 4 and small.rnn.hidden_size == H
    assert tuple(small.rnn.weight_ih_l0_reverse.shape) == (4 * H, 4)
    assert tuple(small.rnn.weight_ih_l1.shape) == (4 * H, 2 * H)  # layer 1 reads the hidden units
    assert torch.equal(small.rnn.weight_ih_l0, m.rnn.weight_ih_l0[:, K(6, [0, 3])])


@pytest.mark.parametrize("name", ["lstm_2layer_bidir_bf_state", "gru_2layer_bidir_state"])
def test_plan_by_ratio_train_and_trace(name):
    from helpers import check_jit_trace, check_train_step
    m, inputs = _case(**VARIANTS[name])
    graph = fxprune.analyze(m, inputs)
    plan = fxprune.plan_by_ratio(graph, 0.5)
    small = fxprune.prune(m, plan, inputs)
    fxprune.verify(m, small, plan, inputs)
    assert small.rnn.hidden_size == H // 2
    check_train_step(small, inputs)
    check_jit_trace(small, inputs)


def test_proj_size_pins_hidden_units():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Linear(5, 6)
            self.rnn = nn.LSTM(6, H, proj_size=4)

        def forward(self, x):
            return self.rnn(self.pre(x))[0]

    m, x = P().eval(), torch.randn(3, 2, 5)
    graph = fxprune.analyze(m, x)
    assert "proj_size" in graph.group_of("rnn.weight_hh_l0", 0).pinned
    with pytest.raises(fxprune.PlanError):
        fxprune.prune(m, {"rnn.weight_hh_l0:0": [0]}, x)
    plan = fxprune.PrunePlan({"pre.weight:0": [2]})  # input features still go
    small = fxprune.prune(m, plan, x)
    fxprune.verify(m, small, plan, x)
    assert small.rnn.input_size == 5


class CellNet(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.pre = nn.Linear(5, 6)
        self.cell = cls(6, H)
        self.fc = nn.Linear(H, 3)
        self.lstm = cls is nn.LSTMCell

    def forward(self, x):  # x: [T, N, 5], unrolled by the tracer
        y = self.pre(x)
        state = None
        outs = []
        for t in range(3):
            state = self.cell(y[t], state)
            outs.append(self.fc(state[0] if self.lstm else state))
        return torch.stack(outs)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells(cls):
    torch.manual_seed(0)
    m, x = CellNet(cls).eval(), torch.randn(3, 2, 5)
    removed, keep = [0, 6], K(H, [0, 6])
    plan = fxprune.PrunePlan({"cell.weight_hh:1": removed})
    small = fxprune.prune(m, plan, x)
    fxprune.verify(m, small, plan, x)
    g = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}[cls]
    assert small.cell.hidden_size == 6 and small.fc.in_features == 6
    rows = torch.tensor([gi * H + j for gi in range(g) for j in keep])
    ref = cls(6, 6)
    with torch.no_grad():
        ref.weight_ih.copy_(m.cell.weight_ih[rows])
        ref.weight_hh.copy_(m.cell.weight_hh[rows][:, keep])
        ref.bias_ih.copy_(m.cell.bias_ih[rows])
        ref.bias_hh.copy_(m.cell.bias_hh[rows])
        y, state, outs = m.pre(x), None, []
        for t in range(3):
            state = ref(y[t], state)
            outs.append(F.linear(state[0] if m.lstm else state, m.fc.weight[:, keep], m.fc.bias))
        torch.testing.assert_close(small(x), torch.stack(outs), atol=1e-5, rtol=1e-5)
