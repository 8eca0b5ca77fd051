"""count() / count_by_module() / cpu_latency_ms() against MACs and params computed by hand."""
import torch
from torch import nn

from fxprune.count import count, count_by_module, count_params
from fxprune.latency import cpu_latency_ms


class Small(nn.Module):
    """conv(3->8, 3x3, pad 1) on 8x8 -> relu -> global avg pool -> linear 8->16 -> linear 16->4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = x.mean(dim=(2, 3))
        return self.fc2(self.fc1(x))


# Written out by hand, not derived from the code under test.
CONV_MACS = 3 * 8 * 9 * 64          # C_in * C_out * k*k * H_out*W_out
FC1_MACS = 8 * 16
FC2_MACS = 16 * 4
CONV_PARAMS = 3 * 8 * 9 + 8         # weight + bias
BN_PARAMS = 8 + 8                   # affine weight + bias (running stats are buffers)
FC1_PARAMS = 8 * 16 + 16
FC2_PARAMS = 16 * 4


def test_count_small_model_by_hand():
    macs, params = count(Small(), (torch.randn(1, 3, 8, 8),))
    assert macs == CONV_MACS + FC1_MACS + FC2_MACS == 13824 + 128 + 64
    assert params == CONV_PARAMS + BN_PARAMS + FC1_PARAMS + FC2_PARAMS


def test_count_accepts_lone_tensor_and_scales_with_batch():
    m = Small()
    assert count(m, torch.randn(1, 3, 8, 8)) == count(m, (torch.randn(1, 3, 8, 8),))
    macs2, _ = count(m, torch.randn(2, 3, 8, 8))
    assert macs2 == 2 * (CONV_MACS + FC1_MACS + FC2_MACS)


def test_count_by_module_keys_are_qualnames():
    per = count_by_module(Small(), torch.randn(1, 3, 8, 8))
    assert per["conv"] == CONV_MACS
    assert per["fc1"] == FC1_MACS
    assert per["fc2"] == FC2_MACS
    assert per[""] == CONV_MACS + FC1_MACS + FC2_MACS
    assert "bn" not in per  # norms count zero MACs


def test_count_works_on_graph_module():
    m = Small()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(1, 3, 8, 8)
    assert count(gm, x) == count(m, x)
    assert count_by_module(gm, x)["fc1"] == FC1_MACS


def test_shared_parameter_counted_once():
    a = nn.Linear(4, 4)
    m = nn.Sequential(a, nn.ReLU(), nn.Linear(4, 4))
    m[2].weight = a.weight  # tie
    assert count_params(m) == 16 + 4 + 4
    assert count(m, torch.randn(1, 4))[1] == 24


def test_training_flags_restored():
    m = Small().train()
    m.bn.eval()
    count(m, torch.randn(1, 3, 8, 8))
    cpu_latency_ms(m, torch.randn(1, 3, 8, 8), warmup=0, repeat=1)
    assert m.training and m.conv.training and not m.bn.training


def test_count_does_not_touch_batchnorm_stats():
    m = Small().train()
    before = m.bn.running_mean.clone()
    count(m, torch.randn(1, 3, 8, 8) + 5)
    assert torch.equal(m.bn.running_mean, before)


def test_cpu_latency_positive_and_progress_called():
    calls = []
    ms = cpu_latency_ms(nn.Linear(16, 4), torch.randn(1, 16), warmup=2, repeat=3,
                        progress=lambda: calls.append(1))
    assert ms > 0
    assert len(calls) == 5


def test_layer_wise_breakdown_matches_direct_formulas():
    """Per-module MACs/params of a conv + linear model against the textbook formulas."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 6 * 6, 5))
    x = torch.randn(2, 3, 6, 6)
    macs, params, by_mod, p_by_mod = count(m, x, layer_wise=True)
    conv_macs = 2 * 8 * 6 * 6 * 3 * 3 * 3  # batch * out elements * (Cin * k * k)
    lin_macs = 2 * 5 * 8 * 6 * 6
    assert by_mod == {"": conv_macs + lin_macs, "0": conv_macs, "3": lin_macs}
    assert macs == conv_macs + lin_macs
    assert p_by_mod == {"": params, "0": 8 * 3 * 9 + 8, "3": 5 * 288 + 5}
    assert params == 8 * 3 * 9 + 8 + 5 * 288 + 5
