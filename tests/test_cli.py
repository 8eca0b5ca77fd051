"""The `fxprune prune` command line, end to end on resnet18 and on a factory file."""
import json
import signal
import subprocess
import sys
import time

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
    out = tmp_path / "m"
    plan_path = tmp_path / "plan.json"
    rc = main(["prune", "resnet18", "--ratio", "0.5", "--input-size", "64", "--out", str(out),
               "--plan-out", str(plan_path), *FAST])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "model.safetensors", "plan.json"]
    small = torch.export.load(out / "model.pt2").module()  # torch alone reads it
    assert isinstance(small, torch.fx.GraphModule)

    x = torch.randn(1, 3, 64, 64)
    original = torchvision.models.resnet18(weights=None).eval()
    macs0, params0 = count(original, x)
    macs1, params1 = count(fxprune.load(out, model=original), x)  # the plan replayed in resnet18's class
    assert params1 == sum(p.numel() for p in small.parameters())
    # Ratio 0.5 halves every unpinned group: all stage widths 64..512 -> 32..256; the 3 input channels
    # and the 1000 logits are the model's interface and stay.
    assert params1 == resnet18_params(32)
    assert params0 - params1 == resnet18_params(64) - resnet18_params(32)
    assert macs1 < macs0 / 2
    assert f"{params0:,}" in stdout and f"{params1:,}" in stdout
    assert "max |Δ|" in stdout

    with torch.no_grad():
        assert small(x).shape == original(x).shape == (1, 1000)
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
    out = tmp_path / "small"
    rc = main(["prune", f"{src}:build", "--ratio", "0.5", "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    small = fxprune.load(out)
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
    plan_path, a, b = tmp_path / "plan.json", tmp_path / "a", tmp_path / "b"
    assert main(["prune", "resnet18", "--input-size", "32", "--target-macs", "0.5", "--global",
                 "--plan-out", str(plan_path), "--out", str(a), *FAST]) == 0
    assert main(["prune", "resnet18", "--input-size", "32", "--plan-in", str(plan_path),
                 "--out", str(b), *FAST]) == 0
    x = torch.randn(1, 3, 32, 32)
    macs0, _ = count(torchvision.models.resnet18(), x)
    sa, sb = fxprune.load(a), fxprune.load(b)
    assert count(fxprune.load(a, model=torchvision.models.resnet18()), x)[0] <= macs0 // 2
    assert {k: v.shape for k, v in sa.state_dict().items()} == {k: v.shape for k, v in sb.state_dict().items()}
    assert "target MACs 0.5" in capsys.readouterr().out


def test_round_to_and_iterative(tmp_path):
    out = tmp_path / "m"
    assert main(["prune", "resnet18", "--input-size", "32", "--ratio", "0.5", "--round-to", "24",
                 "--iterative", "2", "--importance", "l1", "--out", str(out), *FAST]) == 0
    small = fxprune.load(out, model=torchvision.models.resnet18())  # both steps replayed
    # ratio 0.5 of 64/128/256/512 is 32/64/128/256, rounded down to multiples of 24
    assert [small.get_submodule(f"layer{i}.0.conv1").out_channels for i in range(1, 5)] == [24, 48, 120, 240]


# ----------------------------------------------------------------------------------------- exit codes

UNPRUNABLE = (  # every group pinned: fft2 has no rule, the input and output dims are the interface
    "import torch\n"
    "from torch import nn\n"
    "class Net(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.conv = nn.Conv2d(3, 8, 3)\n"
    "    def forward(self, x):\n"
    "        return torch.fft.fft2(self.conv(x)).real\n"
    "def build():\n"
    "    return Net(), torch.randn(1, 3, 8, 8)\n"
)
NOISY = (  # not deterministic: the pruned model cannot equal the masked original, verify must fail
    "import torch\n"
    "from torch import nn\n"
    "def build():\n"
    "    class Noisy(nn.Module):\n"
    "        def __init__(self):\n"
    "            super().__init__()\n"
    "            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)\n"
    "        def forward(self, x):\n"
    "            y = self.a(x)\n"
    "            return self.b(y + torch.randn_like(y))\n"
    "    return Noisy(), torch.randn(1, 3, 10, 10)\n"
)
SLOW = (  # tells the test it is running, then blocks until interrupted
    "import pathlib, time\n"
    "def build():\n"
    "    pathlib.Path(__file__).with_suffix('.started').write_text('1')\n"
    "    time.sleep(120)\n"
)


def _cli(*argv, cwd):
    """Run ``python -m fxprune.cli`` in a subprocess: (exit status, stdout, stderr lines)."""
    res = subprocess.run([sys.executable, "-m", "fxprune.cli", *argv], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    return res.returncode, res.stdout, [ln for ln in res.stderr.splitlines() if ln.strip()]


def test_exit_3_when_nothing_can_be_pruned(tmp_path):
    (tmp_path / "net.py").write_text(UNPRUNABLE)
    rc, out, err = _cli("prune", "net.py:build", "--out", "saved", *FAST, cwd=tmp_path)
    assert rc == 3, err
    assert err[-1].startswith("fxprune: error: nothing could be pruned: all 2 groups are pinned")
    assert "fft_fft2" in err[-1]
    # the op without a rule is reported once, in one line; no traceback; nothing written
    assert sum("no rule" in ln and "fft_fft2" in ln for ln in err) == 1
    assert all(ln.startswith("fxprune: ") for ln in err)
    assert not any("Traceback" in ln for ln in err)
    assert not (tmp_path / "saved").exists() and out == ""


def test_exit_4_when_verification_fails(tmp_path):
    (tmp_path / "noisy.py").write_text(NOISY)
    rc, _, err = _cli("prune", "noisy.py:build", *FAST, cwd=tmp_path)
    assert rc == 4, err
    assert len(err) == 1 and err[0].startswith("fxprune: error: verification failed:") and "randn_like" in err[0]


def test_exit_2_one_line_for_user_errors(tmp_path):
    (tmp_path / "bad.py").write_text("def build():\n    raise ValueError('no weights here')\n")
    rc, _, err = _cli("prune", "bad.py:build", *FAST, cwd=tmp_path)
    assert (rc, err) == (2, ["fxprune: error: bad.py:build: build() raised ValueError: no weights here"])
    rc, _, err = _cli("prune", "bad.py:build", "--debug", *FAST, cwd=tmp_path)
    assert rc == 1 and "Traceback (most recent call last):" in err  # --debug shows it


def test_exit_130_on_ctrl_c(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "fxprune.cli", "prune", "slow.py:build", *FAST],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "slow.started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["fxprune: error: interrupted"]


def test_version():
    rc = subprocess.run([sys.executable, "-m", "fxprune.cli", "--version"], capture_output=True, text=True)
    assert rc.returncode == 0
    assert rc.stdout.strip() == (f"fxprune {fxprune.__version__} (torch {torch.__version__}, "
                                 f"torchvision {torchvision.__version__})")


@pytest.mark.parametrize("argv, needle", [
    (["--ratio", "0.3", "--target-macs", "0.5"], "--ratio cannot be combined with --target-macs"),
    (["--target-macs", "0.5", "--target-params", "0.5"], "cannot be combined; give one budget"),
    (["--plan-in", "PLAN", "--ratio", "0.3"], "cannot be combined with --ratio"),
    (["--plan-in", "PLAN", "--importance", "l1", "--global"], "cannot be combined with --global, --importance"),
    (["--onnx-atol", "0.1"], "--onnx-atol needs --onnx"),
    (["--out", "NOWHERE/sub/dir"], "does not exist"),
    (["--plan-out", "NOWHERE/plan.json"], "does not exist"),
    (["--onnx", "NOWHERE/m.onnx"], "does not exist"),
    (["--plan-out", "TMP"], "is a directory"),
    (["--out", "FILE"], "is a file"),
    (["--out", "FILE/x", "--plan-out", "FILE/x"], "name the same path"),
    (["--plan-in", "FILE"], "cannot read plan"),
])
def test_conflicts_and_bad_paths_refused_before_any_work(argv, needle, tmp_path, capsys, monkeypatch):
    (tmp_path / "plan.json").write_text('{"conv1.weight:0": [0]}')
    (tmp_path / "file").write_text("not json")
    subst = {"PLAN": str(tmp_path / "plan.json"), "TMP": str(tmp_path), "FILE": str(tmp_path / "file"),
             "NOWHERE": str(tmp_path / "nowhere")}
    argv = [next((a.replace(k, v) for k, v in subst.items() if a.startswith(k)), a) for a in argv]
    built = []
    monkeypatch.setattr("fxprune.cli.load_model", lambda *a, **k: built.append(1))  # no work may start
    assert main(["prune", "resnet18", *argv, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fxprune: error:") and needle in err[0], err
    assert built == []


def test_inspect_table_and_drawings(tmp_path, capsys):
    dot, png = tmp_path / "g.dot", tmp_path / "g.png"
    assert main(["inspect", "resnet18", "--input-size", "32", "--dot", str(dot), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # resnet18: 12 free groups (stem + 11 residual/conv widths), the 3 input channels and 1000 logits pinned
    assert "14 groups: 12 free, 2 pinned" in out
    row = next(ln.split() for ln in lines if " layer4.0.conv2.weight:0 " in f" {ln} ")
    # the last stage's residual group holds layer4.0.conv2, layer4.0.downsample.0, layer4.1.conv2 (outputs),
    # three BatchNorms (weight, bias), layer4.1.conv1 and fc (inputs); written out by hand
    held = 512 * 512 * 9 + 512 * 256 + 512 * 512 * 9 + 3 * 2 * 512 + 512 * 512 * 9 + 1000 * 512
    assert row[2:5] == ["512", "512", "29"] and row[5] == f"{100 * held / 11_689_512:.1f}%"
    assert "fc.weight:0: model output" in out
    assert dot.read_text().startswith('graph "layer4.0.conv2.weight:0" {') and png.stat().st_size > 10_000
    # The pin's node and source line are named for a model whose op has no rule
    src = tmp_path / "net.py"
    src.write_text(UNPRUNABLE)
    assert main(["inspect", f"{src}:build"]) == 0
    out = capsys.readouterr().out
    assert "conv.weight:0: dim 1 of an input to" in out
    assert f'File "{src}", line 8, in forward: return torch.fft.fft2(self.conv(x)).real' in out


def test_fallback_model_warns_once_without_torch_log_noise(tmp_path):
    """A forward that branches on a value: torch.export's failed attempt logs warnings (symbolic_shapes); the
    CLI keeps torch's logging quiet and shows its own one-line warning about the fallback, once, and exits 0
    (the submodules are pruned and verified)."""
    (tmp_path / "branch.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class VB(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))\n"
        "    def forward(self, x):\n"
        "        y = self.body(x)\n"
        "        return y if bool(y.sum() > 0) else -y\n"
        "def build():\n"
        "    return VB(), torch.randn(1, 3, 10, 10)\n")
    rc, out, err = _cli("prune", "branch.py:build", *FAST, cwd=tmp_path)
    assert rc == 0, err
    assert sum("falling back to tracing its submodules" in ln for ln in err) == 1
    assert [ln for ln in err if ln.startswith("fxprune:")] == [ln for ln in err if "falling back" in ln]
    assert not any("symbolic_shapes" in ln or "Traceback" in ln for ln in err), err
    # conv 8 -> 4 filters: (3*9*8+8) + (8*9*4+4) = 516 before, (3*9*4+4) + (4*9*4+4) = 260 after, by hand
    assert next(ln for ln in out.splitlines() if ln.startswith("params")).split()[1:3] == ["516", "260"]


def test_taylor_scores_each_sample(tmp_path):
    """--importance taylor: one backward per example sample (loss: mean square of the output), so a hidden unit
    scores the mean over samples of (sum W * dW)^2 over its row of layer 0 and its column of layer 2, averaged
    over the two layers (Molchanov 2019), written out here; the 4 lowest of 8 go at --ratio 0.5. One summed
    .grad would remove another set (checked: the expectation tells the two apart)."""
    src = tmp_path / "mlp.py"
    src.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(1)\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), torch.randn(6, 4)\n"
    )
    plan_path = tmp_path / "plan.json"
    assert main(["prune", f"{src}:build", "--importance", "taylor", "--ratio", "0.5",
                 "--plan-out", str(plan_path), *FAST]) == 0
    ns: dict = {}
    exec(src.read_text(), ns)
    m, x = ns["build"]()

    def unit_terms(xb):  # sum over each unit's weights of W * dW, per layer: [2, 8]
        m.zero_grad()
        m(xb).pow(2).mean().backward()
        return torch.stack([(m[0].weight * m[0].weight.grad).sum(1), (m[2].weight * m[2].weight.grad).sum(0)])

    per_sample = torch.stack([unit_terms(xi[None]) for xi in x]).pow(2).mean(0).mean(0)
    expected = sorted(per_sample.argsort()[:4].tolist())
    m.zero_grad()
    m(x).pow(2).mean().backward()
    summed = torch.stack([(m[0].weight * m[0].weight.grad).abs().sum(1),
                          (m[2].weight * m[2].weight.grad).abs().sum(0)]).mean(0)
    assert expected != sorted(summed.argsort()[:4].tolist())
    assert fxprune.PrunePlan.from_json(plan_path.read_text())["0.weight:0"] == expected
