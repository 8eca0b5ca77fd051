"""The `fxprune prune` command line, end to end on resnet18 and on a factory file."""
import json
import sys

import pytest
import torch
import torchvision

import fxprune
from fxprune.cli import main
from fxprune.count import count

FAST = ["--warmup", "1", "--repeat", "2", "-q"]


def resnet18_params(w: int, num_classes: int = 1000) -> int:
    """Parameter count of torchvision's resnet18 with stage widths w, 2w, 4w, 8w, written out by hand."""
    total = 3 * w * 7 * 7 + 2 * w                                # stem conv (no bias) + bn
    cin = w
    for cout in (w, 2 * w, 4 * w, 8 * w):
        for block in range(2):
            total += 9 * cin * cout + 2 * cout                   # conv1 + bn1
            total += 9 * cout * cout + 2 * cout                  # conv2 + bn2
            if block == 0 and cin != cout:
                total += cin * cout + 2 * cout                   # 1x1 downsample + bn
            cin = cout
    return total + 8 * w * num_classes + num_classes             # fc


def test_hand_formula_matches_torchvision():
    assert resnet18_params(64) == 11_689_512
    assert count(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))[1] == 11_689_512


def test_prune_resnet18(tmp_path, capsys):
    out = tmp_path / "m.pt"
    plan_path = tmp_path / "plan.json"
    rc = main(["prune", "resnet18", "--ratio", "0.5", "--input-size", "64", "--out", str(out),
               "--plan-out", str(plan_path), *FAST])
    stdout = capsys.readouterr().out
    assert rc == 0
    small = torch.load(out, weights_only=False)
    assert isinstance(small, torch.fx.GraphModule)

    x = torch.randn(1, 3, 64, 64)
    original = torchvision.models.resnet18(weights=None).eval()
    macs0, params0 = count(original, x)
    macs1, params1 = count(small, x)
    # Ratio 0.5 halves every unpinned group: all stage widths 64..512 -> 32..256; the 3 input channels
    # and the 1000 logits are the model's interface and stay.
    assert params1 == resnet18_params(32)
    assert params0 - params1 == resnet18_params(64) - resnet18_params(32)
    assert macs1 < macs0 / 2
    assert f"{params0:,}" in stdout and f"{params1:,}" in stdout
    assert "max |Δ|" in stdout

    with torch.no_grad():
        assert small.eval()(x).shape == original(x).shape == (1, 1000)
    plan = fxprune.PrunePlan.from_json(plan_path.read_text())
    assert len(plan) > 0 and json.loads(plan_path.read_text())


def test_prune_factory_file(tmp_path, capsys):
    src = tmp_path / "mymodel.py"
    src.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                      nn.Flatten(), nn.Linear(6, 5))\n"
        "    return m, torch.randn(2, 3, 16, 16)\n"
    )
    out = tmp_path / "small.pt"
    rc = main(["prune", f"{src}:build", "--ratio", "0.5", "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    small = torch.load(out, weights_only=False)
    # Hand-written widths: 8 -> 4 and 6 -> 3 output channels; the 5 logits stay.
    weights = {k: tuple(v.shape) for k, v in small.state_dict().items() if k.endswith("weight")}
    assert weights == {"0.weight": (4, 3, 3, 3), "1.weight": (4,), "3.weight": (3, 4, 3, 3), "7.weight": (5, 3)}
    assert "input 2x3x16x16" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["prune", "resnet_does_not_exist"], "unknown model"),
    (["prune", "resnet18", "--ratio", "1.5"], "--ratio"),
    (["prune", "no_such_file.py:build"], "not found"),
    (["prune", "resnet18", "--importance", "l7"], "unknown importance"),
    (["prune", "resnet18", "--iterative", "0"], "--iterative"),
    (["prune", "resnet18", "--plan-in", "missing.json"], "cannot read plan"),
])
def test_bad_input_exit_2(argv, needle, capsys):
    assert main(argv + FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fxprune: error:") and needle in err[0]


def test_fxprune_error_exit_2(monkeypatch, capsys):
    def boom(self, interactive=False):
        raise fxprune.PlanError("no removable classes\nsecond line")

    monkeypatch.setattr(fxprune.Pruner, "step", boom)
    assert main(["prune", "resnet18", "--input-size", "32", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fxprune: error: PlanError: no removable classes second line"]


def test_argparse_usage_error_returns_2(capsys):
    assert main(["prune"]) == 2
    assert main([]) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="onnxruntime file locking")
def test_onnx_export(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    rc = main(["prune", "resnet18", "--ratio", "0.25", "--input-size", "32", "--onnx", str(path), *FAST])
    out = capsys.readouterr().out
    assert rc == 0 and path.is_file()
    assert "onnxruntime max |Δ|" in out


def test_target_macs_then_plan_in_replays(tmp_path, capsys):
    """--target-macs 0.5 --global lands at or below half the MACs; --plan-in rebuilds the same model."""
    plan_path, a, b = tmp_path / "plan.json", tmp_path / "a.pt", tmp_path / "b.pt"
    assert main(["prune", "resnet18", "--input-size", "32", "--target-macs", "0.5", "--global",
                 "--plan-out", str(plan_path), "--out", str(a), *FAST]) == 0
    assert main(["prune", "resnet18", "--input-size", "32", "--plan-in", str(plan_path),
                 "--out", str(b), *FAST]) == 0
    x = torch.randn(1, 3, 32, 32)
    macs0, _ = count(torchvision.models.resnet18(), x)
    sa, sb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert count(sa, x)[0] <= macs0 // 2
    assert {k: v.shape for k, v in sa.state_dict().items()} == {k: v.shape for k, v in sb.state_dict().items()}
    assert "target MACs 0.5" in capsys.readouterr().out


def test_round_to_and_iterative(tmp_path):
    out = tmp_path / "m.pt"
    assert main(["prune", "resnet18", "--input-size", "32", "--ratio", "0.5", "--round-to", "24",
                 "--iterative", "2", "--importance", "l1", "--out", str(out), *FAST]) == 0
    small = torch.load(out, weights_only=False)
    # ratio 0.5 of 64/128/256/512 is 32/64/128/256, rounded down to multiples of 24
    assert [small.get_submodule(f"layer{i}.0.conv1").out_channels for i in range(1, 5)] == [24, 48, 120, 240]
