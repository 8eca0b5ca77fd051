"""``fxprune.recalibrate_bn``: running statistics against hand-computed batch statistics."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fxprune
from helpers import assert_state_unchanged, state_snapshot


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.bn = nn.Conv2d(3, 6, 3), nn.Dropout(0.5), nn.BatchNorm2d(6, momentum=0.3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.bn(self.drop(self.conv(x))).mean((2, 3)))


def _hand_stats(conv, batches):
    """Per-channel mean and unbiased variance of each batch, averaged over the batches (dropout must be off:
    these statistics do not apply it)."""
    ys = [conv(b) for b in batches]
    means = torch.stack([y.mean((0, 2, 3)) for y in ys])
    vars_ = torch.stack([y.transpose(0, 1).reshape(y.shape[1], -1).var(1, unbiased=True) for y in ys])
    return means.mean(0), vars_.mean(0)


def test_statistics_are_the_average_over_all_batches():
    m = Net().train()
    batches = [torch.randn(4, 3, 7, 7) * 2 + 1 for _ in range(3)]
    out = fxprune.recalibrate_bn(m, batches)
    assert out is m and m.training and m.bn.momentum == 0.3  # flags and momentum restored
    with torch.no_grad():
        mean, var = _hand_stats(m.conv, batches)
    assert torch.allclose(m.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(m.bn.running_var, var, rtol=1e-4)
    assert int(m.bn.num_batches_tracked) == 3


def test_pruned_model_recalibrated():
    m = Net().eval()
    x = torch.randn(2, 3, 7, 7)
    small = fxprune.prune(m, fxprune.PrunePlan({"conv.weight:0": [1, 4]}), x)
    batches = [torch.randn(5, 3, 7, 7) + 0.5 for _ in range(2)]
    before = small.get_submodule("bn").running_mean.clone()
    fxprune.recalibrate_bn(small, batches)
    bn, conv = small.get_submodule("bn"), small.get_submodule("conv")
    with torch.no_grad():
        mean, var = _hand_stats(conv, batches)
    assert bn.running_mean.shape == (4,) and not torch.allclose(before, bn.running_mean)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
    assert not small.training


def test_max_batches():
    m = Net()
    batches = [torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5) + 100.0]
    fxprune.recalibrate_bn(m, iter(batches), max_batches=1)
    with torch.no_grad():
        mean, _ = _hand_stats(m.conv, batches[:1])
    assert torch.allclose(m.bn.running_mean, mean, atol=1e-5)


def test_bad_batch_leaves_model_untouched():
    m = Net()
    fxprune.recalibrate_bn(m, [torch.randn(2, 3, 5, 5)])
    snap = state_snapshot(m)
    with pytest.raises(fxprune.ShapeInfoError, match="batch 1"):
        fxprune.recalibrate_bn(m, [torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5)])
    assert_state_unchanged(m, snap)
    with pytest.raises(fxprune.ShapeInfoError, match="no calibration batches"):
        fxprune.recalibrate_bn(m, [])
    assert_state_unchanged(m, snap)
    assert m.bn.momentum == 0.3


def test_no_batchnorm_is_told(caplog):
    m = nn.Sequential(nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="fxprune.recalibrate"):
        assert fxprune.recalibrate_bn(m, [torch.randn(1, 2)]) is m
    assert any("no BatchNorm" in r.getMessage() for r in caplog.records)


def test_cli_calibrate_images(tmp_path, capsys):
    PIL = pytest.importorskip("PIL.Image")
    from fxprune.cli import main
    for i in range(3):
        PIL.new("RGB", (40, 36), (40 * i, 90, 200 - 50 * i)).save(tmp_path / f"{i}.png")
    rc = main(["prune", "resnet18", "--input-size", "32", "--ratio", "0.3", "--calibrate-images", str(tmp_path),
               "-q", "--repeat", "1", "--warmup", "0"])
    assert rc == 0
    assert "recalibrated BatchNorm statistics" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prune", "resnet18", "--input-size", "32", "--calibrate-images", str(empty), "-q",
                 "--repeat", "1", "--warmup", "0"]) == 2
    assert "no .jpg" in capsys.readouterr().err
