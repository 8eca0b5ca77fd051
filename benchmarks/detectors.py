#!/usr/bin/env python
"""Detectors through the parts frontend (stitched, with regions recorded by the autograd frontend): fxprune vs
Torch-Pruning 1.6.1 in one process.

For each detector of ``benchmarks/zoo_models.py`` named on the command line: Torch-Pruning's MetaPruner with
the zoo sweep's settings (``zoo_checks.check_tp``: L2 magnitude, ratio 0.5, output layers left whole) and
fxprune's ``plan_by_ratio(0.5)`` + ``prune`` + ``verify``; parameters before/after, how many part interfaces
were stitched and which regions were recorded below Python (``graph.recorded``; absent before the autograd
frontend).

Usage:
    python benchmarks/detectors.py retinanet_resnet50_fpn fcos_resnet50_fpn ssd300_vgg16
    python benchmarks/detectors.py --out benchmarks/results/detectors_fasterrcnn_mobilenet.json \
        fasterrcnn_mobilenet_v3_large_320_fpn
    python benchmarks/detectors.py --out /tmp/rcnn.json --no-tp fasterrcnn_resnet50_fpn  # fxprune only
"""
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fxprune  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_checks import check_tp  # noqa: E402
from zoo_models import build, get_spec  # noqa: E402


def _commit() -> str:
    """The commit of the fxprune tree measured (or "unknown" outside a git checkout)."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(names: list[str], tp_too: bool = True) -> dict:
    torch.set_num_threads(1)
    commit = _commit()  # the code imported now is what every row measures
    out = {"load_average": os.getloadavg(), "fxprune_commit": commit}
    for name in names:
        spec = get_spec(name)
        tp: dict = {"error": "skipped (--no-tp)"}
        if tp_too:
            tmp = f"/tmp/fxprune_tp_{name}.json"
            check_tp(spec, None, tmp)  # Torch-Pruning first, on its own copy of the model
            with open(tmp) as f:
                tp = json.load(f)
        model, args = build(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = fxprune.analyze(model, args)
            plan = fxprune.plan_by_ratio(graph, 0.5)
            small = fxprune.prune(model, plan, args)
            report = fxprune.verify(model, small, plan, args)
        out[name] = {"params_before": sum(p.numel() for p in model.parameters()),
                     "fxprune_params": sum(p.numel() for p in small.parameters()),
                     "tp_params": tp.get("params_after"), "tp_error": tp.get("error"),
                     "fxprune_verify_max_abs_diff": report.max_abs_diff, "stitched": graph.stitched,
                     "recorded": getattr(graph, "recorded", None), "frontend": graph.frontend,
                     "fxprune_commit": commit}
        print(name, out[name], flush=True)
    return out


if __name__ == "__main__":
    argv = sys.argv[1:]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "detectors.json")
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    tp_too = "--no-tp" not in argv
    result = main([a for a in argv if a != "--no-tp"], tp_too)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
