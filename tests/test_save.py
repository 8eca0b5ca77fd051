"""fxprune.save / fxprune.load: a pruned model that loads without fxprune, and a plan + weights replay."""
import json
import os
import subprocess
import sys
import sysconfig
import warnings

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.count import count

from test_cli import resnet18_params

X = torch.randn(1, 3, 64, 64)

# Runs in a fresh interpreter without site processing (so no editable-install finder) and with only
# site-packages on the path: fxprune must not be importable there, torch must.
_LOADER = """
import importlib.util, json, sys
assert importlib.util.find_spec("fxprune") is None, "fxprune is importable in the clean interpreter"
import torch
d = sys.argv[1]
m = torch.export.load(d + "/model.pt2").module()
x = torch.load(d + "/x.pt", weights_only=True)
with torch.no_grad():
    y = m(x)
torch.save(y, d + "/y.pt")
params = sum(v.numel() for k, v in m.state_dict().items() if "running" not in k and "num_batches" not in k)
json.dump({"params": params, "modules": sorted(k for k in sys.modules if k.startswith("fxprune"))},
          open(d + "/info.json", "w"))
"""


def _run_without_fxprune(d):
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join(sorted(paths))
    # -S: no site, so no .pth files (the editable install of fxprune is one); cwd is the save directory.
    res = subprocess.run([sys.executable, "-S", "-c", _LOADER, str(d)], cwd=d, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((d / "info.json").read_text())


@pytest.fixture(scope="module")
def pruned_resnet18():
    model = torchvision.models.resnet18().eval()
    plan = fxprune.plan_by_ratio(fxprune.analyze(model, X), 0.5)
    return model, fxprune.prune(model, plan, X), plan


def test_saved_program_loads_in_a_fresh_interpreter_without_fxprune(tmp_path, pruned_resnet18):
    model, small, plan = pruned_resnet18
    fxprune.save(small, tmp_path, X)
    assert sorted(os.listdir(tmp_path)) == ["model.pt2", "model.safetensors", "plan.json"]
    torch.save(X, tmp_path / "x.pt")
    info = _run_without_fxprune(tmp_path)
    assert info["modules"] == []
    # Widths by hand: every stage halved (64..512 -> 32..256), stem input and the 1000 logits kept.
    assert info["params"] == resnet18_params(32) == count(small, X)[1]
    with torch.no_grad():
        want = small(X)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), want, atol=1e-5)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert [fxprune.PrunePlan(p) for p in saved["applied"]] == [plan]
    assert saved["inputs"] == [{"shape": [1, 3, 64, 64], "dtype": "float32"}]


def test_load_replays_the_plan_and_restores_fine_tuned_weights(tmp_path, pruned_resnet18):
    model, small, plan = pruned_resnet18
    tuned = fxprune.prune(model, plan, X)
    with torch.no_grad():  # stand-in for fine-tuning: weights that differ from the pruned originals
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    fxprune.save(tuned, tmp_path)  # example inputs from the graph's recorded shapes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = fxprune.load(tmp_path, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # user's model untouched
    sd_again, sd_tuned = again.state_dict(), tuned.state_dict()
    assert sd_again.keys() == sd_tuned.keys()
    assert all(torch.equal(sd_again[k], sd_tuned[k]) for k in sd_tuned)
    assert not torch.equal(sd_again["conv1.weight"], small.state_dict()["conv1.weight"])
    with torch.no_grad():
        assert torch.allclose(again(X), tuned(X), atol=1e-5)
    # Without the model: the ExportedProgram, same numbers.
    with torch.no_grad():
        assert torch.allclose(fxprune.load(tmp_path)(X), tuned(X), atol=1e-5)


def test_iterative_pruner_steps_replay_in_order(tmp_path):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(4, 6)
    pruner = fxprune.Pruner(model, x, pruning_ratio=0.5, iterative_steps=2)
    small = model
    for _ in range(2):
        small = pruner.step()
    assert (small.get_submodule("0").out_features, small.get_submodule("2").out_features) == (8, 6)
    fxprune.save(small, tmp_path, x)
    assert len(json.loads((tmp_path / "plan.json").read_text())["applied"]) == 2
    again = fxprune.load(tmp_path, model=model)
    assert (again.get_submodule("0").out_features, again.get_submodule("2").out_features) == (8, 6)
    with torch.no_grad():
        assert torch.allclose(again(x), small(x), atol=1e-6)


class _ValueBranch(nn.Module):
    """A forward that branches on a tensor's value: symbolic_trace and torch.export both refuse it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))

    def forward(self, x):
        y = self.body(x)
        return y if bool(y.sum() > 0) else -y


def test_model_torch_export_refuses_is_saved_with_a_warning_and_rebuilt_from_the_plan(tmp_path):
    model = _ValueBranch().eval()
    x = torch.randn(1, 3, 10, 10)
    plan = fxprune.PrunePlan({"body.0.weight:0": [1, 2, 5]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fxprune.FallbackWarning)
        small = fxprune.prune(model, plan, x)
        with pytest.warns(UserWarning, match="torch.export could not export"):
            fxprune.save(small, tmp_path, x, plan=plan)
        assert not (tmp_path / "model.pt2").exists()
        with pytest.raises(fxprune.SerializationError, match="model.pt2"):
            fxprune.load(tmp_path)
        again = fxprune.load(tmp_path, model=model)
    assert again.body[0].out_channels == 5
    assert torch.equal(again.body[0].weight, model.body[0].weight[[0, 3, 4, 6, 7]])
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_bad_paths_raise_serialization_errors(tmp_path, pruned_resnet18):
    _, small, _ = pruned_resnet18
    with pytest.raises(fxprune.SerializationError, match="not a directory written by fxprune.save"):
        fxprune.load(tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(fxprune.SerializationError, match="is a file"):
        fxprune.save(small, f, X)
    with pytest.raises(fxprune.SerializationError, match="no fxprune plan"):
        fxprune.save(nn.Linear(2, 2), tmp_path / "lin", torch.randn(1, 2))
