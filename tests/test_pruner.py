"""fxprune.Pruner: Torch-Pruning's option semantics on resnet18, budgets, interactive steps, replay,
head pruning — every check against widths written out by hand, reference measurements, or a direct
computation."""
import warnings

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.count import count, count_params

X32 = torch.randn(1, 3, 32, 32)


def widths(m: nn.Module) -> list:
    """[stem, layer1..4 conv1 width, layer1..4 residual width] as in the reference study (§3.6.1)."""
    return ([m.get_submodule("conv1").out_channels]
            + [m.get_submodule(f"layer{i}.0.conv1").out_channels for i in range(1, 5)]
            + [m.get_submodule(f"layer{i}.0.conv2").out_channels for i in range(1, 5)])


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)  # the seed of the reference measurements
    return torchvision.models.resnet18(weights=None).eval()


# Widths measured with Torch-Pruning 1.6.1 on the same seed-0 resnet18 (reference study §3.6.1).
@pytest.mark.parametrize("kwargs, expected", [
    ({}, [32, 32, 64, 128, 256, 32, 64, 128, 256]),
    ({"round_to": 24}, [24, 24, 48, 120, 240, 24, 48, 120, 240]),
    ({"global_pruning": True}, [32, 33, 58, 125, 263, 32, 64, 125, 261]),
    ({"global_pruning": True, "isomorphic": True}, [32, 33, 58, 126, 263, 32, 64, 128, 256]),
], ids=["local", "round_to", "global", "isomorphic"])
def test_resnet18_matches_reference_widths(resnet18, kwargs, expected):
    tp_l2 = fxprune.importance.MagnitudeImportance(p=2, layer_normalizer=None, bn_shift=False)  # TP's formula
    pruner = fxprune.Pruner(resnet18, X32, importance=tp_l2, pruning_ratio=0.5, ignored_layers=[resnet18.fc],
                            **kwargs)
    small = pruner.step()
    assert widths(small) == expected
    assert fxprune.verify(resnet18, small, pruner.plan, X32).max_abs_diff < 1e-4
    assert small.fc.out_features == 1000


def test_ratio_dict_local_and_global(resnet18):
    m = resnet18
    local = fxprune.Pruner(m, X32, ignored_layers=[m.fc],
                           pruning_ratio_dict={m.layer1: 0.25, (m.layer3, m.layer4): 0.75}).step()
    assert widths(local) == [48, 48, 64, 64, 128, 48, 64, 64, 128]
    tp_l2 = fxprune.importance.MagnitudeImportance(p=2, layer_normalizer=None, bn_shift=False)  # TP's formula
    glob = fxprune.Pruner(m, X32, importance=tp_l2, ignored_layers=[m.fc], global_pruning=True,
                          pruning_ratio_dict={(m.layer3, m.layer4): 0.75}).step()
    assert widths(glob) == [33, 33, 61, 78, 121, 33, 65, 71, 106]


def test_iterative_schedule_and_replay(resnet18):
    pruner = fxprune.Pruner(resnet18, X32, ignored_layers=[resnet18.fc], iterative_steps=3, pruning_ratio=0.6)
    seen = [widths(pruner.step()) for _ in range(3)]
    # linear schedule 0.2, 0.4, 0.6 of the initial widths: int(64*0.8)=51, int(64*0.6)=38, int(64*0.4)=25
    assert [w[:5] for w in seen] == [[51, 51, 102, 204, 409], [38, 38, 76, 153, 307], [25, 25, 51, 102, 204]]
    assert pruner.step() is pruner.model  # a 4th step does nothing
    small = pruner.model
    replay = fxprune.prune(resnet18, fxprune.PrunePlan.from_json(pruner.plan.to_json()), X32)
    a, b = small.state_dict(), replay.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fxprune.verify(resnet18, small, pruner.plan, X32).max_abs_diff < 1e-4


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_target_params_within_one_class():
    m, x = mlp(), torch.randn(2, 16)
    total = count_params(m)
    assert total == 16 * 32 + 32 + 32 * 4 + 4 == 676
    per_unit = 16 + 1 + 4  # one hidden unit: a row of W1, a bias entry, a column of W2
    small = fxprune.Pruner(m, x, target_params=500).step()
    removed = 32 - small.get_submodule("0").out_features
    assert removed == -(-(total - 500) // per_unit) == 9  # the fewest units that reach the budget
    assert count_params(small) == total - 9 * per_unit <= 500 < total - 8 * per_unit


def test_target_macs_within_one_class():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    x = torch.randn(1, 3, 8, 8)
    macs0, _ = count(m, x)
    per_filter = (3 * 9 + 8 * 9) * 64  # a conv1 filter and the conv2 column it feeds, over 8x8 positions
    per_out = 16 * 9 * 64               # a conv2 filter
    pruner = fxprune.Pruner(m, x, target_macs=0.6, global_pruning=True)
    small = pruner.step()
    macs1, _ = count(small, x)
    # conv2's outputs are the model output (pinned): only conv1 filters go
    assert small.get_submodule("2").out_channels == 8 and per_out
    k = 16 - small.get_submodule("0").out_channels
    assert macs1 == macs0 - k * per_filter <= int(0.6 * macs0) < macs0 - (k - 1) * per_filter


def test_global_never_empties_a_layer():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].weight.mul_(1e-4)  # every unit of layer 0 ranks below every unit of layer 2
    small = fxprune.Pruner(m, torch.randn(1, 8), pruning_ratio=0.9, global_pruning=True).step()
    assert small.get_submodule("0").out_features >= 1 and small.get_submodule("2").out_features >= 1
    assert small.get_submodule("0").out_features == 1  # it gives up all but one unit before layer 2 loses more


def test_max_pruning_ratio_caps_each_group(resnet18):
    small = fxprune.Pruner(resnet18, X32, ignored_layers=[resnet18.fc], pruning_ratio=0.8,
                           global_pruning=True, max_pruning_ratio=0.5).step()
    for w, w0 in zip(widths(small), [64, 64, 128, 256, 512, 64, 128, 256, 512]):
        assert w >= w0 // 2


def test_ignored_layers_and_params(resnet18):
    m = resnet18
    small = fxprune.Pruner(m, X32, ignored_layers=[m.fc, m.layer2[0].conv1, m.layer3[1].conv1.weight]).step()
    assert small.layer2[0].conv1.out_channels == 128 and small.layer3[1].conv1.out_channels == 256
    assert small.layer2[1].conv1.out_channels == 64  # not ignored


def test_interactive_accept_change_skip():
    m, x = mlp(), torch.randn(2, 16)
    m2 = nn.Sequential(*mlp(), nn.ReLU(), nn.Linear(4, 4))  # two prunable groups
    pruner = fxprune.Pruner(m2, x, pruning_ratio=0.5)
    props = []
    for prop in pruner.step(interactive=True):
        props.append(prop)
        if prop.group.key == "0.weight:0":
            assert len(prop.indices["0.weight:0"]) == 16
            prop.accept({"0.weight:0": [1, 2, 3]})  # change the proposal
        # the other group's proposal is skipped
    assert [p.group.key for p in props] == ["0.weight:0", "2.weight:0"]
    small = pruner.model
    assert small.get_submodule("0").out_features == 29 and small.get_submodule("2").out_features == 4
    assert pruner.plan.to_dict() == fxprune.PrunePlan({"0.weight:0": [1, 2, 3], "0.bias:0": [1, 2, 3],
                                                       "2.weight:1": [1, 2, 3]}).to_dict()
    assert torch.equal(small.get_submodule("0").weight, m2[0].weight[[0] + list(range(4, 32))])
    del m


class Attention(nn.Module):
    """A timm-style attention block: heads only in the reshape constants."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return x + self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


def test_head_pruning_discovers_heads():
    torch.manual_seed(4)
    m, x = Attention(), torch.randn(2, 5, 32)
    pruner = fxprune.Pruner(m, x, pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5)
    small = pruner.step()
    # whole heads: q, k and v each keep 2 heads of 8 dims; proj keeps the matching 16 inputs
    assert small.qkv.out_features == 3 * 16 and small.proj.in_features == 16
    assert list(pruner.num_heads.values()) == [2]
    removed = sorted(pruner.plan["qkv.weight:0"])
    heads = sorted({i // 8 for i in removed if i < 32})
    assert len(heads) == 2 and removed[:16] == [i for h in heads for i in range(8 * h, 8 * h + 8)]
    assert fxprune.verify(m, small, pruner.plan, x).max_abs_diff < 1e-5
    assert small(x).shape == (2, 5, 32)


def test_head_dims_default():
    torch.manual_seed(4)
    m, x = Attention(), torch.randn(2, 5, 32)
    pruner = fxprune.Pruner(m, x, pruning_ratio=0.5)
    small = pruner.step()
    # dims inside heads: every head keeps 4 of 8 dims of q/k and of v
    assert small.qkv.out_features == 3 * 16 and small.proj.in_features == 16
    assert fxprune.verify(m, small, pruner.plan, x).max_abs_diff < 1e-5


def test_group_norm_pruner_regularizes_like_its_regularizer():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 3, 8, 8)
    pruner = fxprune.GroupNormPruner(m, x, reg=1e-2)
    m(x).square().mean().backward()
    g0 = {n: p.grad.clone() for n, p in m.named_parameters()}
    pruner.regularize(m)
    delta = {n: p.grad - g0[n] for n, p in m.named_parameters()}
    # class c = conv0 row c, its bias, BN γ_c/β_c and conv3 column c: reg * γ_c * W on each slice
    norms = torch.stack([torch.cat([m[0].weight[c].flatten(), m[0].bias[c:c + 1], m[1].weight[c:c + 1],
                                    m[1].bias[c:c + 1], m[3].weight[:, c].flatten()]).norm() for c in range(8)])
    gamma = 2 ** (4.0 * (norms.max() - norms) / (norms.max() - norms.min()))
    torch.testing.assert_close(delta["0.weight"], 1e-2 * gamma.view(8, 1, 1, 1) * m[0].weight.detach())
    torch.testing.assert_close(delta["3.weight"], 1e-2 * gamma.view(1, 8, 1, 1) * m[3].weight.detach())
    assert torch.equal(delta["3.bias"], torch.zeros(4))


def test_bad_options_raise_plan_error(resnet18):
    for kw in ({"pruning_ratio": 1.5}, {"max_pruning_ratio": 0}, {"iterative_steps": 0}, {"round_to": 0},
               {"target_macs": 0.5, "target_params": 0.5}, {"ignored_layers": [nn.Linear(2, 2)]},
               {"pruning_ratio_dict": {nn.Linear(2, 2): 0.5}}):
        with pytest.raises(fxprune.PlanError):
            fxprune.Pruner(resnet18, X32, **kw)
    with pytest.raises(fxprune.PlanError, match="target_macs"):
        fxprune.Pruner(resnet18, X32, target_macs=-1).step()


def test_manual_prune_width_ratio_is_what_is_removed(resnet18):
    """Torch-Pruning's manual_prune_width(layer, fn, 0.25) leaves 25 % (128 -> 32); ours removes 25 %."""
    pruner = fxprune.Pruner(resnet18, X32)
    small = pruner.manual_prune_width(resnet18.layer2[0].conv1, 0.25)
    assert small.layer2[0].conv1.out_channels == 96 and small.layer2[0].bn1.num_features == 96
    small = pruner.manual_prune_width(small.layer2[1].conv1, [0, 5, 7])
    assert small.layer2[1].conv1.out_channels == 125
    assert sorted(pruner.plan["layer2.1.conv1.weight:0"]) == [0, 5, 7]
    assert fxprune.verify(resnet18, small, pruner.plan, X32).max_abs_diff < 1e-4


def test_heads_then_head_dims_on_timm_vit_verify_and_replay():
    """Whole heads and dims inside the kept heads in one step: the cumulative plan mixes both class
    families, and still verifies and replays."""
    timm = pytest.importorskip("timm", reason="timm is a test extra")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = fxprune.Pruner(m, x, pruning_ratio=0.25, prune_num_heads=True, head_pruning_ratio=0.34,
                            ignored_layers=[m.head])
    small = pruner.step()
    assert pruner.num_heads == {"blocks.0.attn.qkv.weight:0": 1}  # keep int(3 * 0.66) = 1 of 3 heads
    # the kept head loses int(64 * 0.25) = 16 of its 64 dims in q, k and v; hidden 192 -> 144
    assert small.blocks[0].attn.qkv.out_features == 3 * 48 and small.blocks[0].attn.proj.in_features == 48
    assert small.patch_embed.proj.out_channels == 144 and small.blocks[0].mlp.fc1.out_features == 576
    assert fxprune.verify(m, small, pruner.plan, x).max_abs_diff < 1e-4
    replay = fxprune.prune(m, pruner.plan, x)
    a, b = small.state_dict(), replay.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- plans valid by construction (issue 13, issue 14 item 6)

def _small_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return (VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                              mlp_dim=128, num_classes=10).eval(), (torch.randn(1, 3, 32, 32),))


class _SplitGate(nn.Module):
    """Value dims a parameter guard misses: split parts, chunks and one head's slice."""

    def __init__(self):
        super().__init__()
        self.fc, self.attn, self.out = nn.Linear(8, 12), Attention(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        a, b, c = self.fc(x).split([2, 6, 4], dim=-1)
        c0, c1 = c.chunk(2, -1)
        h = torch.cat([torch.sigmoid(a) * b[..., :2], b, c, c0 * c1 + c[..., :2]], -1)   # 2 + 6 + 4 + 2
        return self.out(self.attn(torch.cat([h, h[..., :2]], -1)))


def _zoo(name):
    import models as zoo
    case = next(c for c in zoo.CASES if c.name == name)
    return case.factory()


_PRUNER_MODELS = {
    "vit": _small_vit,
    "attention": lambda: (Attention().eval(), (torch.randn(2, 5, 32),)),
    "split_gate": lambda: (_SplitGate().eval(), (torch.randn(2, 3, 8),)),
    **{n: (lambda n=n: _zoo(n)) for n in ("split3_getitem_any_order", "chunk_glu", "unbind_view",
                                          "channel_shuffle_const", "groupnorm_whole_group", "cat_second_input",
                                          "conv2d_depthwise_mult2_out", "layernorm_chw")},
}


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_PRUNER_MODELS)), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]),
       glob=st.booleans(), heads=st.booleans(), budget=st.sampled_from([None, "macs", "params"]),
       steps=st.integers(1, 2), crit=st.sampled_from(["l2", "random", "fpgm"]))
def test_pruner_plans_are_valid_for_every_configuration(name, ratio, glob, heads, budget, steps, crit):
    """Every configuration builds a plan that applies, verifies and replays (never a PlanError)."""
    model, x = _PRUNER_MODELS[name]()
    kw = dict(importance=crit, global_pruning=glob, iterative_steps=steps)
    if budget is None:
        kw.update(pruning_ratio=ratio, prune_num_heads=heads, head_pruning_ratio=ratio / 2 if heads else 0.0)
    else:
        kw["target_" + budget] = 1.0 - ratio / 2
    pruner = fxprune.Pruner(model, x, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps that remove nothing say so; not what this test checks
        for _ in range(steps):
            small = pruner.step()
    fxprune.verify(model, small, pruner.plan, x)
    replay = fxprune.prune(model, pruner.plan, x)
    for k, v in small.state_dict().items():
        assert torch.equal(replay.state_dict()[k], v), k
    if budget is not None and len(pruner.plan):
        total = count(model, x)[0] if budget == "macs" else count_params(model)
        now = count(small, x)[0] if budget == "macs" else count_params(small)
        assert now <= int(total * kw["target_" + budget]), (now, total)
