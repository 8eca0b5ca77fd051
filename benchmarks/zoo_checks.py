"""Workers of ``benchmarks/zoo.py --list``: check one model with fxprune, or prune it with Torch-Pruning.

Each runs in its own subprocess (started by ``zoo.py``) and writes a JSON dict to ``result_path`` after
every step, so a crash, a hang or an out-of-memory kill still leaves what was measured.

fxprune (``check_fx``)
    analyze, ``plan_by_ratio(graph, 0.5)``, prune (timed once each); groups (prunable/total); output
    structure and shapes; ``fxprune.verify``; one train step; ``torch.jit.trace`` and ``torch.onnx.export``
    + onnxruntime (1e-4) of the pruned model wherever the unpruned model traces/exports (an export the
    unpruned model fails is reported as ``skip: <error>``); params/MACs before and after.
Torch-Pruning (``check_tp``)
    ``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[final classifier])``
    (construction builds the dependency graph) + ``step()``, timed once; then one raw forward of the pruned
    model (no comparison with the original is possible: Torch-Pruning has no verify) and params/MACs.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

RATIO = 0.5
CHECKS = ("verify", "train", "jit", "onnx")


def err(e: BaseException) -> str:
    s = " ".join(f"{type(e).__name__}: {e}".split())
    return "error: " + s[:600]


def _dumper(res: dict, path: str):
    def dump() -> None:
        with open(path, "w") as f:
            json.dump(res, f)
    return dump


def final_classifiers(model):
    """The last Linear/1x1-conv layers that produce class scores (kept whole by Torch-Pruning)."""
    from torch import nn
    mods = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
    outs = {1000, 400, 21}  # ImageNet, Kinetics-400, VOC segmentation classes
    heads = [m for m in mods if getattr(m, "out_features", getattr(m, "out_channels", 0)) in outs]
    return heads or mods[-1:]


def count(model, inputs):
    from fxprune.count import count as fx_count
    macs, params = fx_count(model, inputs)
    return int(macs), int(params)


def _structure(out):
    import torch
    from torch.utils._pytree import tree_flatten
    leaves, spec = tree_flatten(out)
    return spec, [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in leaves]


def _can(fn, *args) -> str | None:
    """None when ``fn(*args)`` works, else the error (used on the unpruned model)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args)
        return None
    except Exception as e:  # noqa: BLE001 - any failure of the unpruned model means "not applicable"
        return err(e)[7:300]


def _jit_trace(model, inputs):
    import torch
    return torch.jit.trace(model.eval(), inputs, strict=False, check_trace=False)


def _onnx_export(model, inputs):
    import torch
    with tempfile.TemporaryDirectory() as d:
        torch.onnx.export(model.eval(), inputs, os.path.join(d, "m.onnx"))


def check_fx(spec, inputs_shape, checks, result_path: str) -> None:
    import torch
    from helpers import check_jit_trace, check_onnx, check_train_step
    from zoo_models import build

    import fxprune

    warnings.filterwarnings("ignore")
    res = {"model": spec.name, "threads": torch.get_num_threads()}
    dump = _dumper(res, result_path)
    stage = "build"
    try:
        model, inputs = build(spec)
        if inputs_shape is not None:
            inputs = (torch.randn(*inputs_shape),)
        res["input_shape"] = [list(t.shape) for t in inputs]
        with torch.no_grad():
            ref_out = model(*inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stage = "analyze"
            t0 = time.perf_counter()
            graph = fxprune.analyze(model, inputs)
            res["analyze_s"] = round(time.perf_counter() - t0, 3)
            groups = graph.groups
            res["groups"] = len(groups)
            res["prunable_groups"] = sum(1 for g in groups if g.pinned is None)
            stage = "plan_by_ratio"
            t0 = time.perf_counter()
            plan = fxprune.plan_by_ratio(graph, RATIO)
            res["plan_s"] = round(time.perf_counter() - t0, 3)
            stage = "prune"
            t0 = time.perf_counter()
            small = fxprune.prune(model, plan, inputs)
            res["prune_s"] = round(time.perf_counter() - t0, 3)
        res["warnings"] = sorted({" ".join(str(w.message).split())[:500] for w in caught
                                  if "fxprune" in str(w.message)})
        dump()
        stage = "structure"
        with torch.no_grad():
            out = small(*inputs)
        want, got = _structure(ref_out), _structure(out)
        res["structure"] = "ok" if want == got else f"error: {got} != {want}"
        if "verify" in checks:
            stage = "verify"
            rep = fxprune.verify(model, small, plan, inputs)
            res["verify"] = "ok"
            res["verify_max_abs_diff"] = float(rep.max_abs_diff)
            res["recomputed"] = len(rep.recomputed)
        dump()
        stage = "count"
        res["macs_before"], res["params_before"] = count(model, inputs)
        res["macs_after"], res["params_after"] = count(small, inputs)
        dump()
    except Exception as e:  # noqa: BLE001 - recorded in the result, the sweep goes on
        res["stage_failed"] = stage
        res["error"] = err(e)
        res["trace"] = traceback.format_exc()[-2000:]
        dump()
        return
    if "train" in checks:
        res["train"] = _run(lambda: check_train_step(small, inputs))
        dump()
    if "jit" in checks:
        why = _can(_jit_trace, model, inputs)
        res["jit"] = f"skip: unpruned model does not jit.trace: {why}" if why else \
            _run(lambda: check_jit_trace(small, inputs))
        dump()
    if "onnx" in checks:
        why = _can(_onnx_export, model, inputs)
        if why:
            res["onnx"] = f"skip: unpruned model does not export to ONNX: {why}"
        else:
            with tempfile.TemporaryDirectory() as d:
                res["onnx"] = _run(lambda: check_onnx(small, inputs, d, atol=1e-4))
        dump()


def _run(fn) -> str:
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as e:  # noqa: BLE001 - recorded, not raised: the sweep goes on
        return err(e)
    return f"ok ({time.perf_counter() - t0:.1f} s)"


def check_tp(spec, inputs_shape, result_path: str) -> None:
    import torch
    import torch_pruning as tp
    from zoo_models import build

    warnings.filterwarnings("ignore")
    res = {"model": spec.name}
    dump = _dumper(res, result_path)
    stage = "build"
    try:
        model, inputs = build(spec)
        if inputs_shape is not None:
            inputs = (torch.randn(*inputs_shape),)
        res["macs_before"], res["params_before"] = count(model, inputs)
        x = inputs[0]
        stage = "MetaPruner"
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=final_classifiers(model))
        t1 = time.perf_counter()
        res["init_s"] = round(t1 - t0, 3)
        dump()
        stage = "step"
        pruner.step()
        res["step_s"] = round(time.perf_counter() - t1, 3)
        res["prune_s"] = round(time.perf_counter() - t0, 3)
        dump()
        stage = "forward"
        with torch.no_grad():
            model(*inputs)
        res["forward"] = "ok"
        res["macs_after"], res["params_after"] = count(model, inputs)
    except Exception as e:  # noqa: BLE001 - recorded in the result, the sweep goes on
        res["stage_failed"] = stage
        res["error"] = err(e)
        res["trace"] = traceback.format_exc()[-1500:]
    dump()
