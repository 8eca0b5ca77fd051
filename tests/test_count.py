"""count() / count_by_module() / cpu_latency_ms() against MACs and params computed by hand, and every
torchvision classifier against the MACs/params published in its weights' metadata."""
import pytest
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


# ------------------------------------------------------------------ issue 13: attention and torchvision metadata

def test_attention_fast_path_counted_by_hand():
    """A TransformerEncoderLayer in eval + no_grad takes a fused fast path on CPU; every matmul is counted."""
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0).eval()
    L, D, F_ = 5, 16, 32
    expect = L * D * 3 * D + 2 * (L * L * D) + L * D * D + 2 * L * D * F_  # in_proj, QK^T + AV, out_proj, FFN
    assert count(layer, torch.randn(1, L, D))[0] == expect
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    mha = nn.MultiheadAttention(D, 2, batch_first=True).eval()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]
    assert count(M(), torch.randn(1, L, D))[0] == L * D * 3 * D + 2 * (L * L * D) + L * D * D


def test_sdpa_on_cpu_counted():
    class A(nn.Module):
        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    assert count(A(), (q, k, v))[0] == 2 * 3 * (5 * 7 * 8 + 5 * 7 * 4)


def _torchvision_check(name: str) -> None:
    """MACs and params of a torchvision classifier (built on the meta device) against its weights' metadata."""
    from torchvision.models import get_model, get_model_weights
    w = list(get_model_weights(name))[0]
    crop = w.transforms().crop_size
    size = max(crop[0] if isinstance(crop, (list, tuple)) else crop, w.meta.get("min_size", (0, 0))[0])
    kw = {"aux_logits": name == "inception_v3", "init_weights": False} if name in ("googlenet", "inception_v3") \
        else {}
    if name.startswith("vit_h"):
        kw["image_size"] = size
    try:
        with torch.device("meta"):
            model = get_model(name, weights=None, **kw)
    except NotImplementedError:  # regnet computes its widths with tensor ops: build on CPU, then move
        model = get_model(name, weights=None, **kw).to("meta")
    macs, params = count(model, torch.empty(1, 3, size, size, device="meta"))
    ops = w.meta["_ops"] * 1e9
    # the metadata gives GMACs to 3 decimals: allow that rounding on the smallest models
    assert abs(macs - ops) <= max(0.01 * ops, 0.5e6), (name, macs, ops)
    assert abs(params - w.meta["num_params"]) <= 0.01 * w.meta["num_params"], (name, params)



@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_b_16", "swin_t", "efficientnet_b0"])
def test_torchvision_metadata_sample(name):
    _torchvision_check(name)


def _classification_models():
    try:
        import torchvision
        from torchvision.models import list_models
    except ImportError:
        return []
    return list_models(module=torchvision.models)


@pytest.mark.zoo
@pytest.mark.parametrize("name", _classification_models())
def test_torchvision_metadata_all(name):
    _torchvision_check(name)
