"""Workers of ``benchmarks/zoo.py --list``: check one model with fxprune, or prune it with Torch-Pruning.

Each runs in its own subprocess (started by ``zoo.py``) and writes a JSON dict to ``result_path`` after
every step, so a crash, a hang or an out-of-memory kill still leaves what was measured.

fxprune (``check_fx``)
    analyze, ``plan_by_ratio(graph, 0.5)``, prune (timed once each); groups (prunable/total); output
    structure and shapes (for detectors, all but the number of boxes); ``fxprune.verify``; one train step
    (detectors: two images with one target box each, backward of the sum of the losses); TorchScript and ONNX +
    onnxruntime (1e-4) of the pruned model by the route the unpruned model takes (``helpers.
    check_export_routes``: jit.trace, else jit.script; the default ONNX exporter, else ``dynamo=False``);
    ``skip: <error>`` when the unpruned model has no route; params/MACs before and after; the frontend that
    captured the model and what pins it (:func:`pin_summary`).
Torch-Pruning (``check_tp``)
    ``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[final classifier])``
    (the output layers of every head for detectors, RAFT's flow and mask predictors; construction builds the
    dependency graph) + ``step()``, timed once; then one raw forward of the pruned
    model (no comparison with the original is possible: Torch-Pruning has no verify) and params/MACs.
"""
from __future__ import annotations

import json
import os
import re
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


# Output layers of torchvision's detection heads: their widths are the output format (classes, 4 box
# coordinates, masks, keypoints), so Torch-Pruning must keep them whole, as its own detection example does
# (which for Faster R-CNN also keeps the FPN and the RoI heads whole: without that its forward fails).
_DETECTION_OUTPUTS = ("rpn.head.cls_logits", "rpn.head.bbox_pred", "box_predictor", "mask_predictor",
                      "keypoint_predictor", "classification_head.cls_logits", "regression_head.bbox_reg",
                      "regression_head.bbox_ctrness")


def tp_ignored(spec, model):
    """Layers Torch-Pruning must keep whole for the model's output format to stay valid."""
    if spec.source == "detection":
        if spec.name.startswith("ssd"):
            return [model.head]
        keep = [m for n, m in model.named_modules() if n.endswith(_DETECTION_OUTPUTS)]
        if spec.name.startswith("fasterrcnn"):  # Torch-Pruning's own Faster R-CNN recipe also keeps these
            keep += [model.backbone.fpn, model.roi_heads]
        return keep
    if spec.source == "flow":  # RAFT predicts 2 flow channels and a fixed-size upsampling mask
        return [m for n, m in model.named_modules() if n.endswith(("flow_head.conv2", "mask_predictor"))]
    return final_classifiers(model)


def count(model, inputs):
    from fxprune.count import count as fx_count
    macs, params = fx_count(model, inputs)
    return int(macs), int(params)


def output_structure(out, per_detection: bool = False):
    """The output's container structure and leaf shapes; ``per_detection`` drops the leading dim (the number
    of boxes a detector keeps depends on its scores, which pruning changes)."""
    import torch
    from torch.utils._pytree import tree_flatten
    leaves, spec = tree_flatten(out)
    cut = 1 if per_detection else 0
    return spec, [tuple(t.shape[cut:]) if isinstance(t, torch.Tensor) else None for t in leaves]


_PIN_OP = re.compile(r"^dim \d+ (?:of an input to|produced by) (.+) \((\w+)\)$")


def pin_op(reason: str) -> str:
    """The op a pin reason names: the rule (or, for an op with no rule, the node's op label) in
    ``dim d of an input to <op> (<node>)``; ``constant tensor`` for any constant; the reason itself otherwise
    (``model input``, ``model output``, a rule's own words).

        >>> pin_op("dim 1 of an input to call_function torch.roll (roll_1)")
        'call_function torch.roll'
        >>> pin_op("constant tensor pos_embed"), pin_op("model output")
        ('constant tensor', 'model output')
        >>> pin_op("its indices go only with whole heads (grid slices) named in attn.qkv.weight:0")
        'whole heads only'
    """
    m = _PIN_OP.match(reason)
    if m:
        return m.group(1)
    if reason.startswith("its indices go only with whole heads"):
        return "whole heads only"
    return "constant tensor" if reason.startswith("constant tensor") else reason


def pin_summary(graph, model, inputs) -> dict:
    """The share of MACs in pinned groups and the op that pins the largest share.

    A group's MACs are those of the modules owning a parameter with a member dim in it
    (``fxprune.inspect.group_rows``; a conv counts in its output and its input group), so the pinned share is
    ``sum(MACs of pinned groups) / sum(MACs of all groups)``: a conv whose input group is pinned and output
    group free counts half. Pins are summed per op (:func:`pin_op`); ``missing_rule`` names the ops among
    them that have no rule (the analysis' ``no rule`` list), which is a bug to fix rather than an inherent pin.
    """
    from fxprune.inspect import group_rows
    rows = group_rows(graph, model, inputs)
    total = sum(r.macs for r in rows)
    by_op: dict = {}
    for r in rows:
        if r.pinned:
            op = pin_op(r.pinned)
            by_op[op] = by_op.get(op, 0) + r.macs
    unknown = set(getattr(getattr(graph, "ctx", None), "unknown", {}) or {})
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    share = (lambda n: round(n / total, 4) if total else 0.0)
    return {"pinned_macs_share": share(sum(by_op.values())),
            "pins": [[op, share(n)] for op, n in top[:5]],
            "top_pin": top[0][0] if top else None, "top_pin_share": share(top[0][1]) if top else 0.0,
            "missing_rule": sorted(op for op in by_op if op in unknown) + sorted(unknown - set(by_op))}


def train_inputs(spec, inputs):
    """Inputs of a training forward: a detector also takes its targets (and then returns its losses)."""
    from zoo_models import detection_targets
    if spec.source == "detection":  # two images: BatchNorm in train mode needs > 1 value per channel
        images = [inputs[0][0], inputs[0][0].flip(-1)]
        return (images, detection_targets(spec, images))
    return inputs


def check_fx(spec, inputs_shape, checks, result_path: str) -> None:
    import torch
    from helpers import check_export_routes, check_train_step
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
        res["input_shape"] = [list(t.shape) if isinstance(t, torch.Tensor) else [list(i.shape) for i in t]
                              for t in inputs]
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
            res["frontend"] = getattr(graph, "frontend", None)
            stage = "pins"
            res.update(pin_summary(graph, model, inputs))
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
        det = spec.source == "detection"
        want, got = output_structure(ref_out, det), output_structure(out, det)
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
        res["train"] = _run(lambda: check_train_step(small, train_inputs(spec, inputs)))
        dump()
    for what in ("jit", "onnx"):
        if what in checks:
            with tempfile.TemporaryDirectory() as d:
                res[what] = _run(lambda d=d, what=what: check_export_routes(model, small, inputs, d, what))
            dump()


def _run(fn) -> str:
    """``ok (<route>, <seconds> s)``, the skip reason ``fn`` returned, or the error."""
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            how = fn()
    except Exception as e:  # noqa: BLE001 - recorded, not raised: the sweep goes on
        return err(e)
    if isinstance(how, str) and how.startswith("skip"):
        return how
    route = f"{how}, " if isinstance(how, str) else ""
    return f"ok ({route}{time.perf_counter() - t0:.1f} s)"


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
        # Torch-Pruning first tries model(*x): detectors and RAFT get the whole inputs tuple (an image list,
        # two frames); classifiers keep the single tensor the earlier sweeps used
        x = inputs if spec.source in ("detection", "flow") else inputs[0]
        stage = "MetaPruner"
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=tp_ignored(spec, model))
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
