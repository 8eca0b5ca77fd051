"""The model zoo: every torchvision classification, segmentation, video, detection and optical-flow model and
the smallest variant of every timm family (the catalogue in ``benchmarks/zoo_models.py``), each analysed,
pruned by ``plan_by_ratio(graph, 0.5)`` and checked:

1. the pruned model keeps the output structure and shapes (a detector: all but the number of boxes), and has
   fewer parameters when a group is prunable;
2. ``fxprune.verify`` against the original with the removed channels zeroed;
3. one train step (``helpers.check_train_step``; a detector gets one target box per image and sums its losses);
4. TorchScript and ONNX + onnxruntime (1e-4) by the route the *unpruned* model takes
   (``helpers.check_export_routes``: ``jit.trace``, else ``jit.script`` as for torchvision's detectors; the
   default ONNX exporter, else ``dynamo=False``); skipped with the unpruned model's errors when it has none.

Analysis must take at most 10 s of CPU time per model (CPU time, not wall time: the test machine is shared).
Every model is marked ``zoo`` (``pytest -m zoo``). A fast handful, one per family with ops of its own
(torchvision Swin/video/segmentation, timm LeViT, MLP-Mixer, NF-ResNet weight standardisation, EdgeNeXt,
PoolFormer, XCiT), runs unmarked at a small input; ONNX only for two of them (exports take 5-40 s).
"""
from __future__ import annotations

import os
import sys
import time
import warnings

import pytest
import torch
from helpers import check_export_routes, check_train_step, flatten_outputs, param_count

import fxprune

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from zoo_checks import output_structure, train_inputs
from zoo_models import Spec, build, get_spec, specs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")

RATIO = 0.5
MAX_ANALYZE_CPU_S = 10.0
ALL = ("train", "jit", "onnx")

# name -> (input shape override or None, checks beyond verify)
FAST = {
    "swin_t": ((1, 3, 32, 32), ("train",)),
    "r3d_18": ((1, 3, 4, 32, 32), ALL),
    "lraspp_mobilenet_v3_large": ((1, 3, 32, 32), ("train", "jit")),
    "timm/levit_128s": (None, ("train",)),
    "timm/mixer_s32_224": (None, ALL),
    "timm/nf_resnet26": ((1, 3, 32, 32), ("train",)),
    "timm/edgenext_xx_small": (None, ("train", "jit")),
    "timm/poolformer_s12": ((1, 3, 32, 32), ("train",)),
    "timm/xcit_nano_12_p16_224": (None, ("train",)),
}


class Case:
    """One model pruned once, shared by the tests of that model (module-scoped fixture)."""

    def __init__(self, spec: Spec, shape, checks):
        self.spec, self.checks = spec, checks
        self.model, self.inputs = build(spec)
        if shape is not None:
            self.inputs = (torch.randn(*shape, generator=torch.Generator().manual_seed(1)),)
        with torch.no_grad():
            self.ref = self.model(*self.inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c0 = time.process_time()
            self.graph = fxprune.analyze(self.model, self.inputs)
            self.analyze_cpu_s = time.process_time() - c0
        self.no_rule = [str(w.message) for w in caught if "fxprune: no rule" in str(w.message)]
        self.plan = fxprune.plan_by_ratio(self.graph, RATIO)
        self.small = fxprune.prune(self.model, self.plan, self.inputs)


def _params(names, fast):
    out = []
    for n in names:
        shape, checks = FAST[n] if fast else (None, ALL)
        out.append(pytest.param((n, shape, checks), id=f"fast-{n}" if fast else n,
                                marks=[] if fast else [pytest.mark.zoo]))
    return out


PARAMS = _params(list(FAST), True) + _params([s.name for s in specs("all")], False)


def _with(check: str):
    return [p for p in PARAMS if check in p.values[0][2]]


@pytest.fixture(scope="module")
def case(request) -> Case:
    name, shape, checks = request.param
    return Case(get_spec(name), shape, checks)


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_prune_verify(case: Case):
    # analysis time is measured by benchmarks/zoo.py and benchmarks/speed.py, not asserted here
    assert not case.no_rule, case.no_rule[0]  # every op of the zoo has a rule
    with torch.no_grad():
        out = case.small(*case.inputs)
    det = case.spec.source == "detection"
    assert output_structure(out, det) == output_structure(case.ref, det)
    assert all(torch.isfinite(t).all() for t in flatten_outputs(out))
    report = fxprune.verify(case.model, case.small, case.plan, case.inputs)
    scale = max(1.0, max(float(t.abs().max()) for t in flatten_outputs(case.ref)))
    assert report.max_abs_diff <= 1e-3 * scale
    prunable = [g for g in case.graph.groups if g.pinned is None]
    if prunable:  # a model whose every group is pinned is reported by benchmarks/zoo.py, not a failure
        assert len(case.plan) > 0
        assert param_count(case.small) < param_count(case.model)
    # the widths of the plan's parameters shrank by exactly the expanded plan's counts
    expanded = case.graph.expand(case.plan).plan  # also for a model pruned through traced submodules
    orig, small = case.model.state_dict(), case.small.state_dict()
    for key, removed in expanded.items():
        name, _, dim = key.rpartition(":")
        if name in orig:
            assert small[name].shape[int(dim)] == orig[name].shape[int(dim)] - len(removed), key


@pytest.mark.parametrize("case", _with("train"), indirect=True)
def test_train_step(case: Case):
    check_train_step(case.small, train_inputs(case.spec, case.inputs))


def _export(case: Case, what: str, tmp_path) -> None:
    route = check_export_routes(case.model, case.small, case.inputs, tmp_path, what)
    if route.startswith("skip"):
        pytest.skip(route[6:])


@pytest.mark.parametrize("case", _with("jit"), indirect=True)
def test_jit(case: Case, tmp_path):
    _export(case, "jit", tmp_path)


@pytest.mark.parametrize("case", _with("onnx"), indirect=True)
def test_onnx(case: Case, tmp_path):
    _export(case, "onnx", tmp_path)
