"""Rules for pads, pixel/channel shuffle, fold/unfold, GLU, LocalResponseNorm, narrow, index_select and
the remaining ``torch.nn`` modules (issues 13 and 14).

Every case removes hand-picked channels and compares the pruned model with an oracle written by hand: the
original with the removed slices zeroed on both sides (producer rows and the consumer columns they map to,
computed here from the op's definition), plus hand-written widths. LocalResponseNorm's oracle runs the
original layers on the kept channels only.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


from helpers import zeroed


def _prune_and_check(model, x, plan, zero, widths, atol=1e-5):
    """Prune by ``plan``; the result must equal ``model`` with ``zero`` = {param: (dim, indices)} zeroed and
    have ``widths`` = {param: shape}."""
    model.eval()
    small = fxprune.prune(model, fxprune.PrunePlan(plan), x)
    oracle = zeroed(model, zero)
    with torch.no_grad():
        expect, got = oracle(*x) if isinstance(x, tuple) else oracle(x), small(*x) if isinstance(x, tuple) \
            else small(x)
    assert torch.allclose(got, expect, atol=atol), float((got - expect).abs().max())
    sp = dict(small.named_parameters())
    for name, shape in widths.items():
        assert tuple(sp[name].shape) == shape, (name, tuple(sp[name].shape), shape)
    # the check can fail: the unpruned model differs from the oracle
    with torch.no_grad():
        full = model(*x) if isinstance(x, tuple) else model(x)
    assert not torch.allclose(full, expect, atol=atol)
    return small


class Sandwich(nn.Module):
    """conv1 -> op -> conv2 (1x1 convs so that spatial ops need no care)."""

    def __init__(self, op, c1=4, c2_in=4, fn=None):
        super().__init__()
        self.conv1, self.op, self.conv2 = nn.Conv2d(3, c1, 1), op, nn.Conv2d(c2_in, 2, 1)
        self.fn = fn

    def forward(self, x):
        y = self.conv1(x)
        y = self.fn(y) if self.fn is not None else self.op(y)
        return self.conv2(y)


_PADS = [
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d,
    nn.CircularPad3d,
]


@pytest.mark.parametrize("cls", _PADS + [nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d],
                         ids=lambda c: c.__name__)
def test_pad_modules(cls):
    k = int(cls.__name__[-2])
    pad = cls(1, 0.5) if cls.__name__.startswith("Constant") else cls(1)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[k]
    m = nn.Sequential(conv(3, 5, 1), pad, conv(5, 2, 1))
    x = torch.randn(1, 3, *([4] * k))
    _prune_and_check(m, x, {"0.weight:0": [1, 3]},
                     {"0.weight": (0, [1, 3]), "0.bias": (0, [1, 3]), "2.weight": (1, [1, 3])},
                     {"0.weight": (3, 3) + (1,) * k, "2.weight": (2, 3) + (1,) * k})


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle(functional):
    m = Sandwich(nn.PixelShuffle(2), c1=8, c2_in=2, fn=(lambda y: F.pixel_shuffle(y, 2)) if functional else None)
    # output channel 1 of the shuffle is input channels 4..7
    _prune_and_check(m, torch.randn(1, 3, 3, 3), {"conv1.weight:0": [4, 5, 6, 7]},
                     {"conv1.weight": (0, [4, 5, 6, 7]), "conv1.bias": (0, [4, 5, 6, 7]),
                      "conv2.weight": (1, [1])},
                     {"conv1.weight": (4, 3, 1, 1), "conv2.weight": (2, 1, 1, 1)})


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_unshuffle(functional):
    m = Sandwich(nn.PixelUnshuffle(2), c1=2, c2_in=8,
                 fn=(lambda y: F.pixel_unshuffle(y, 2)) if functional else None)
    _prune_and_check(m, torch.randn(1, 3, 4, 4), {"conv1.weight:0": [1]},
                     {"conv1.weight": (0, [1]), "conv1.bias": (0, [1]), "conv2.weight": (1, [4, 5, 6, 7])},
                     {"conv1.weight": (1, 3, 1, 1), "conv2.weight": (2, 4, 1, 1)})


def test_pixel_shuffle_expands_to_whole_blocks():
    m = Sandwich(nn.PixelShuffle(2), c1=8, c2_in=2)
    g = fxprune.analyze(m, torch.randn(1, 3, 3, 3)).group_of("conv1.weight", 0)
    assert sorted(sorted(i) for _, i in g.all_classes) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("functional", [False, True])
def test_channel_shuffle(functional):
    # C=8, g=2: input i*4 + k -> output k*2 + i; channel k=1 of both groups is inputs {1, 5}, outputs {2, 3}
    m = Sandwich(nn.ChannelShuffle(2), c1=8, c2_in=8,
                 fn=(lambda y: F.channel_shuffle(y, 2)) if functional else None)
    small = _prune_and_check(m, torch.randn(1, 3, 2, 2), {"conv1.weight:0": [1, 5]},
                             {"conv1.weight": (0, [1, 5]), "conv1.bias": (0, [1, 5]), "conv2.weight": (1, [2, 3])},
                             {"conv1.weight": (6, 3, 1, 1), "conv2.weight": (2, 6, 1, 1)})
    assert not functional or small is not None
    g = fxprune.analyze(m, torch.randn(1, 3, 2, 2)).group_of("conv1.weight", 0)
    assert sorted(sorted(i) for _, i in g.all_classes) == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("functional", [False, True])
def test_glu(functional):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.glu, self.fc2 = nn.Linear(3, 8), nn.GLU(), nn.Linear(4, 2)

        def forward(self, x):
            y = self.fc1(x)
            return self.fc2(F.glu(y, dim=-1) if functional else self.glu(y))
    _prune_and_check(M(), torch.randn(2, 3), {"fc1.weight:0": [1, 5]},
                     {"fc1.weight": (0, [1, 5]), "fc1.bias": (0, [1, 5]), "fc2.weight": (1, [1])},
                     {"fc1.weight": (6, 3), "fc2.weight": (2, 3)})


@pytest.mark.parametrize("functional", [False, True])
def test_local_response_norm(functional):
    m = Sandwich(nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0), c1=6, c2_in=6,
                 fn=(lambda y: F.local_response_norm(y, 3, 0.5, 0.75, 1.0)) if functional else None).eval()
    x = torch.randn(2, 3, 3, 3)
    small = fxprune.prune(m, fxprune.PrunePlan({"conv1.weight:0": [1, 4]}), x)
    kept = torch.tensor([0, 2, 3, 5])
    with torch.no_grad():  # oracle: the original layers run on the kept channels only
        y = F.conv2d(x, m.conv1.weight[kept], m.conv1.bias[kept])
        y = F.local_response_norm(y, 3, 0.5, 0.75, 1.0)
        expect = F.conv2d(y, m.conv2.weight[:, kept], m.conv2.bias)
        got = small(x)
    assert torch.allclose(got, expect, atol=1e-5)
    assert dict(small.named_parameters())["conv1.weight"].shape[0] == 4
    assert fxprune.verify(m, small, fxprune.PrunePlan({"conv1.weight:0": [1, 4]}), x).max_abs_diff < 1e-5


@pytest.mark.parametrize("how", ["method", "function"])
def test_narrow(how):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.conv1(x)
            return self.conv2(y.narrow(1, 2, 4) if how == "method" else torch.narrow(y, 1, 2, 4))
    # conv1 channel 0 is outside the window; channel 3 is window position 1 (conv2 input 1)
    _prune_and_check(M(), torch.randn(1, 3, 2, 2), {"conv1.weight:0": [0, 3]},
                     {"conv1.weight": (0, [0, 3]), "conv1.bias": (0, [0, 3]), "conv2.weight": (1, [1])},
                     {"conv1.weight": (6, 3, 1, 1), "conv2.weight": (2, 3, 1, 1)})


class IndexSelect(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.register_buffer("idx", torch.tensor([2, 0, 1]))

    def forward(self, x):
        return self.conv2(self.conv1(x).index_select(self.dim, self.idx))


def test_index_select_other_dims_go_through():
    _prune_and_check(IndexSelect(2), torch.randn(1, 3, 3, 3), {"conv1.weight:0": [2]},
                     {"conv1.weight": (0, [2]), "conv1.bias": (0, [2]), "conv2.weight": (1, [2])},
                     {"conv1.weight": (3, 3, 1, 1), "conv2.weight": (2, 3, 1, 1)})


def test_index_select_pins_the_gathered_dim():
    m = IndexSelect(1)
    m.conv2 = nn.Conv2d(3, 2, 1)
    g = fxprune.analyze(m, torch.randn(1, 3, 3, 3)).group_of("conv1.weight", 0)
    assert g.pinned is not None and "index_select" in g.pinned


def test_unfold_fold():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.unfold = nn.Conv2d(3, 4, 1), nn.Unfold(2, stride=2)
            self.fold, self.conv2 = nn.Fold((4, 4), 2, stride=2), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.conv2(self.fold(self.unfold(self.conv1(x))))
    _prune_and_check(M(), torch.randn(1, 3, 4, 4), {"conv1.weight:0": [1]},
                     {"conv1.weight": (0, [1]), "conv1.bias": (0, [1]), "conv2.weight": (1, [1])},
                     {"conv1.weight": (3, 3, 1, 1), "conv2.weight": (2, 3, 1, 1)})


def test_fractional_max_pool():
    m = Sandwich(nn.FractionalMaxPool2d(2, output_size=3), c1=5, c2_in=5)
    x = torch.randn(1, 3, 6, 6)
    torch.manual_seed(1)
    g = fxprune.analyze(m, x).group_of("conv1.weight", 0)
    assert g.pinned is None and len(g.all_classes) == 5


def test_bilinear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bil, self.out = nn.Linear(3, 4), nn.Linear(3, 5), nn.Bilinear(4, 5, 6), \
                nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.bil(self.a(x), self.b(x)))
    small = _prune_and_check(M(), torch.randn(2, 3), {"a.weight:0": [0], "b.weight:0": [1, 2], "bil.weight:0": [3]},
                             {"a.weight": (0, [0]), "a.bias": (0, [0]), "b.weight": (0, [1, 2]),
                              "b.bias": (0, [1, 2]), "bil.weight": (0, [3]),
                              "bil.bias": (0, [3])},
                             {"bil.weight": (5, 3, 3), "out.weight": (2, 5)})
    bil = small.get_submodule("bil")
    assert (bil.in1_features, bil.in2_features, bil.out_features) == (3, 3, 5)


def test_embedding_bag():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.EmbeddingBag(10, 6, mode="sum"), nn.Linear(6, 2)

        def forward(self, ids):
            return self.fc(self.emb(ids))
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    small = _prune_and_check(M(), ids, {"emb.weight:1": [0, 4]},
                             {"emb.weight": (1, [0, 4]), "fc.weight": (1, [0, 4])},
                             {"emb.weight": (10, 4), "fc.weight": (2, 4)})
    assert small.get_submodule("emb").embedding_dim == 4


def test_cosine_similarity_reduced_dim_prunable():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.cos = nn.Linear(3, 6), nn.Linear(3, 6), nn.CosineSimilarity(dim=-1)
            self.b.weight = self.a.weight  # one class per feature, shared by both inputs

        def forward(self, x):
            return self.cos(self.a(x), self.b(x) * 0.5 + 1.0)
    x = torch.randn(4, 3)
    m = M().eval()
    small = fxprune.prune(m, fxprune.PrunePlan({"a.weight:0": [2]}), x)
    kept = torch.tensor([0, 1, 3, 4, 5])
    with torch.no_grad():
        u = F.linear(x, m.a.weight[kept], m.a.bias[kept])
        v = F.linear(x, m.a.weight[kept], m.b.bias[kept]) * 0.5 + 1.0
        assert torch.allclose(small(x), F.cosine_similarity(u, v, dim=-1), atol=1e-6)


class SwinPad(nn.Module):
    """timm Swin's window padding: channels last, H and W padded by amounts computed from the shape."""

    def __init__(self, window=4):
        super().__init__()
        self.window = window
        self.fc1, self.fc2 = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):  # x: (B, H, W, C)
        y = self.fc1(x)
        _, h, w, _ = y.shape
        ph, pw = (self.window - h % self.window) % self.window, (self.window - w % self.window) % self.window
        y = F.pad(y, (0, 0, 0, pw, 0, ph))
        return self.fc2(y[:, :h, :w, :])


def test_pad_by_computed_amounts_keeps_channels_prunable():
    m = SwinPad()
    _prune_and_check(m, torch.randn(1, 5, 6, 3), {"fc1.weight:0": [0, 4]},
                     {"fc1.weight": (0, [0, 4]), "fc1.bias": (0, [0, 4]), "fc2.weight": (1, [0, 4])},
                     {"fc1.weight": (4, 3), "fc2.weight": (2, 4)})
