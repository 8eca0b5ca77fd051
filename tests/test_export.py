"""Pruned small models survive what users do next: train, save/load, torch.jit, ONNX + onnxruntime.

The ``Constants`` model has hard-coded ``split`` sizes, slice bounds and ``view``/``reshape`` sizes that
the rewrite must fix; its expected widths are written by hand.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_state_unchanged,
    check_jit,
    check_jit_trace,
    check_onnx,
    check_save_load,
    check_train_step,
    flatten_outputs,
    param_count,
    state_snapshot,
)
from torch import nn

import fxprune


class ConvBnReluLinear(nn.Module):
    """conv-bn-relu x2, flatten (a block map into the Linear), two linears."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):                      # x: [N, 3, 8, 8]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))    # [N, 16, 4, 4]
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class Constants(nn.Module):
    """Hard-coded constants everywhere: split sizes, slice bounds, view and reshape sizes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_a = nn.Conv2d(6, 8, 1)       # gets channels 0..5 of conv1
        self.conv_b = nn.Conv2d(10, 8, 1)      # gets channels 6..15
        self.conv_c = nn.Conv2d(8, 8, 1)       # gets channels 4..11 (a slice overlapping both)
        self.fc_flat = nn.Linear(8 * 16, 10)
        self.fc_mean = nn.Linear(8, 10)

    def forward(self, x):                      # x: [1, 3, 4, 4]
        y = F.relu(self.conv1(x))
        a, b = torch.split(y, [6, 10], dim=1)
        c = y[:, 4:12]
        s = self.conv_a(a) + self.conv_b(b) + self.conv_c(c)    # [1, 8, 4, 4]
        t = s.view(1, 8, 16).mean(-1)                           # [1, 8]
        u = s.reshape(1, 8 * 16)                                 # [1, 128]
        return self.fc_flat(u) + self.fc_mean(t)


class TwoOutputs(nn.Module):
    """A tuple output with a dict inside it: the checks must flatten outputs generically."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.head1 = nn.Conv2d(12, 4, 1)
        self.head2 = nn.Linear(12, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        m = self.head1(y)
        return m, {"vec": self.head2(y.mean((2, 3))), "peak": torch.tanh(m).amax(1)}


def _bn_stats(model):
    """Give BatchNorms non-trivial running stats so pruning the wrong channel would show."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


CASES = {
    "conv_bn_relu_linear": (ConvBnReluLinear, (1, 3, 8, 8)),
    "constants": (Constants, (1, 3, 4, 4)),
    "two_outputs": (TwoOutputs, (1, 3, 6, 6)),
}


def _setup(name, plan=None):
    cls, shape = CASES[name]
    torch.manual_seed(0)
    model = _bn_stats(cls()).eval()
    inputs = (torch.randn(*shape),)
    snap = state_snapshot(model)
    if plan is None:
        plan = fxprune.plan_by_ratio(fxprune.analyze(model, inputs), 0.5)
    small = fxprune.prune(model, plan, inputs)
    fxprune.verify(model, small, plan, inputs)
    assert_state_unchanged(model, snap)
    assert param_count(small) < param_count(model)
    with torch.no_grad():
        ref = flatten_outputs(model(*inputs))
        out = flatten_outputs(small(*inputs))
    assert [t.shape for t in out] == [t.shape for t in ref]
    return model, small, inputs, plan


# Hand-picked plan for `Constants`: channel 1 is in `a` only, 5 in `a` and the slice `c`, 7 in `b` and `c`,
# 13 in `b` only. So a: 6 -> 4, b: 10 -> 8, c: 8 -> 6 (conv_c columns 1 and 3).
CONSTANTS_PLAN = {"conv1.weight:0": [1, 5, 7, 13]}


def test_constants_hand_widths():
    model, small, inputs, _ = _setup("constants", fxprune.PrunePlan(CONSTANTS_PLAN))
    sd = small.state_dict()
    assert sd["conv1.weight"].shape == (12, 3, 3, 3)
    assert sd["conv_a.weight"].shape == (8, 4, 1, 1)
    assert sd["conv_b.weight"].shape == (8, 8, 1, 1)
    assert sd["conv_c.weight"].shape == (8, 6, 1, 1)
    keep = [i for i in range(16) if i not in CONSTANTS_PLAN["conv1.weight:0"]]
    assert torch.equal(sd["conv1.weight"], model.conv1.weight.detach()[keep])
    assert torch.equal(sd["conv_a.weight"], model.conv_a.weight.detach()[:, [0, 2, 3, 4]])
    assert torch.equal(sd["conv_b.weight"], model.conv_b.weight.detach()[:, [0, 2, 3, 4, 5, 6, 8, 9]])
    assert torch.equal(sd["conv_c.weight"], model.conv_c.weight.detach()[:, [0, 2, 4, 5, 6, 7]])
    # conv_{a,b,c} outputs (8 channels, summed) are one group; the view/reshape constants follow it.
    plan2 = fxprune.PrunePlan({"conv_a.weight:0": [0, 7]})
    small2 = fxprune.prune(model, plan2, inputs)
    fxprune.verify(model, small2, plan2, inputs)
    sd2 = small2.state_dict()
    assert sd2["conv_b.weight"].shape[0] == sd2["conv_c.weight"].shape[0] == 6
    assert sd2["fc_mean.weight"].shape == (10, 6)
    assert sd2["fc_flat.weight"].shape == (10, 6 * 16)
    keep_cols = [c * 16 + j for c in range(1, 7) for j in range(16)]
    assert torch.equal(sd2["fc_flat.weight"], model.fc_flat.weight.detach()[:, keep_cols])
    with torch.no_grad():
        assert small2(*inputs).shape == (1, 10)


@pytest.mark.parametrize("name", list(CASES))
def test_train_step(name):
    _, small, inputs, _ = _setup(name)
    check_train_step(small, inputs)


@pytest.mark.parametrize("name", list(CASES))
def test_save_load(name, tmp_path):
    _, small, inputs, _ = _setup(name)
    check_save_load(small, inputs, tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_jit_script(name):
    model, small, inputs, _ = _setup(name)
    how = check_jit(small, inputs, reference=fxprune.trace(model, inputs))
    assert how == "script", "small models with no control flow must script"


@pytest.mark.parametrize("name", list(CASES))
def test_jit_trace(name):
    _, small, inputs, _ = _setup(name)
    check_jit_trace(small, inputs)


@pytest.mark.parametrize("name", list(CASES))
def test_onnx(name, tmp_path):
    model, small, inputs, _ = _setup(name)
    how = check_onnx(small, inputs, tmp_path, reference=fxprune.trace(model, inputs))
    assert how == "default"


def test_constants_plan_exports(tmp_path):
    """The hand plan rewrites split/slice/view constants; the rewritten constants must export too."""
    model, small, inputs, _ = _setup("constants", fxprune.PrunePlan(CONSTANTS_PLAN))
    check_jit(small, inputs, reference=fxprune.trace(model, inputs))
    check_onnx(small, inputs, tmp_path)
    check_save_load(small, inputs, tmp_path)
    check_train_step(small, inputs)


def test_plan_json_replay_on_fresh_model():
    """A plan serialised to JSON and replayed on a fresh copy gives the same pruned model."""
    model, small, inputs, plan = _setup("conv_bn_relu_linear")
    plan2 = fxprune.PrunePlan.from_json(plan.to_json())
    fresh = _bn_stats(ConvBnReluLinear()).eval()
    fresh.load_state_dict(model.state_dict())
    small2 = fxprune.prune(fresh, plan2, inputs)
    sd, sd2 = small.state_dict(), small2.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k


def test_timm_vit_pruned_exports_with_torchscript_onnx(tmp_path):
    """timm's ViT forward has ``attn_mask=None, is_causal=False``: traced, they are constants, not graph
    inputs, so the TorchScript-based exporter (``dynamo=False``) sees one tensor input (issue 15)."""
    timm = pytest.importorskip("timm")
    ort = pytest.importorskip("onnxruntime")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = fxprune.plan_by_ratio(fxprune.analyze(model, x), 0.5)
    small = fxprune.prune(model, plan, x)
    assert [n.target for n in small.graph.find_nodes(op="placeholder")] == ["x"]
    # hand widths: the MLP hidden size 768 -> 384 in both blocks
    assert [small.get_submodule(f"blocks.{i}.mlp.fc1").out_features for i in range(2)] == [384, 384]
    path = str(tmp_path / "vit.onnx")
    torch.onnx.export(small, (x,), path, dynamo=False, input_names=["x"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]  # one input: no is_causal/attn_mask
    got = torch.as_tensor(sess.run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        want = small(x)
        ref = model(x)
    assert got.shape == ref.shape == (2, 1000)
    assert torch.allclose(got, want, atol=1e-4)
    fxprune.verify(model, small, plan, x)  # and the pruned model is the masked original
    traced = torch.jit.trace(small, (x,))  # TorchScript sees only the tensor input too
    with torch.no_grad():
        assert torch.allclose(traced(x), want, atol=1e-5)
