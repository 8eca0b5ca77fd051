"""The test helpers that decide pass/fail on their own: detections compared as a set."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_outputs_close, flatten_outputs, matched_detections


def _detections(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return [{"boxes": torch.cat([xy, xy + 10], 1), "labels": torch.randint(1, 3, (n,), generator=g),
             "scores": torch.full((n,), 0.5) + torch.rand(n, generator=g) * 1e-7,  # near-ties
             "masks": torch.rand(n, 1, 4, 4, generator=g)}]


def test_matched_detections_undoes_a_permutation():
    out = _detections(50)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    other = [t[perm] for t in flatten_outputs(out)]
    got = matched_detections(out, other)
    for a, b in zip(flatten_outputs(out), got):
        assert torch.equal(a, b)


def test_matched_detections_still_fails_on_a_different_set():
    out = _detections(20)
    other = [t.clone() for t in flatten_outputs(out)]
    other[0][3] += 5.0  # one box moved: no assignment can hide it
    got = matched_detections(out, other)
    with pytest.raises(AssertionError, match="output 0"):
        assert_outputs_close(flatten_outputs(out), got, 1e-4, "detections")


def test_matched_detections_leaves_a_different_count_to_the_shape_check():
    out = _detections(10)
    other = [t[:8] for t in flatten_outputs(out)]
    assert [tuple(t.shape) for t in matched_detections(out, other)] == [tuple(t.shape) for t in other]
