#!/usr/bin/env python
"""Analyze + plan + prune time, fxprune vs Torch-Pruning 1.6.1, side by side in one process.

For each model (catalogue of ``benchmarks/zoo_models.py``, 224x224 unless the catalogue says otherwise):

- fxprune: ``analyze`` + ``plan_by_ratio(0.5)`` + ``prune`` (a cold analysis: the cache is cleared);
- Torch-Pruning: ``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5,
  ignored_layers=[final classifier])`` construction + ``step()`` on a deep copy (the copy is not timed);
- the floor: ``torch.fx.symbolic_trace`` + shape propagation on meta tensors + one copy of the kept parameters
  (what any FX-based pruner must do at least), for models that symbolic-trace.

Each is the median of ``--repeat`` runs with one thread; the machine's load average is recorded. A model
either library fails on is listed with the error and left out of the sums.

Usage:
    python benchmarks/speed.py --models resnet18,resnet50,densenet121,efficientnet_b0
    python benchmarks/speed.py --list torchvision --out benchmarks/results/speed.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

RATIO = 0.5


def _median_time(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def time_fxprune(model, x, repeat: int):
    import fxprune

    def run():
        fxprune.cache.clear()
        graph = fxprune.analyze(model, x)
        plan = fxprune.plan_by_ratio(graph, RATIO)
        return fxprune.prune(model, plan, x)

    return _median_time(run, repeat)


def time_floor(model, x, small, repeat: int):
    import torch
    from fxprune.frontend import normalize_inputs, propagate_shapes

    def run():
        gm = torch.fx.symbolic_trace(model)
        propagate_shapes(gm, normalize_inputs(x))
        return [p.detach().clone() for p in small.parameters()]

    return _median_time(run, repeat)[0]


def time_tp(model, x, repeat: int):
    import torch_pruning as tp
    from zoo import final_classifiers

    times = []
    for _ in range(repeat):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=final_classifiers(m))
        pruner.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, repeat: int, size: int = 224) -> dict:
    import torch
    import zoo_models

    spec = zoo_models.get_spec(name)
    if size and len(spec.input_shape) == 4 and spec.input_shape[:2] == (1, 3):
        kw = {k: size for k in ("image_size", "img_size") if k in spec.kwargs}
        if "window_size" in spec.kwargs:  # the catalogue shrank the window with the image: use the default
            kw["window_size"] = None
        spec = dataclasses.replace(spec, input_shape=(1, 3, size, size),
                                   kwargs={k: v for k, v in {**spec.kwargs, **kw}.items() if v is not None})
    model, x = zoo_models.build(spec)
    if isinstance(x, tuple) and len(x) == 1:
        x = x[0]
    row = {"model": name}
    with warnings.catch_warnings():  # no no_grad: Torch-Pruning traces through autograd
        warnings.simplefilter("ignore")
        try:
            row["fxprune_s"], small = time_fxprune(model, x, repeat)
            row["fxprune_params"] = sum(p.numel() for p in small.parameters())
        except Exception as e:
            row["fxprune_error"] = f"{type(e).__name__}: {e}"[:300]
            small = None
        try:
            if small is not None:
                row["floor_s"] = time_floor(model, x, small, repeat)
        except Exception as e:  # the model does not symbolic_trace: no fx floor
            row["floor_error"] = f"{type(e).__name__}: {e}"[:200]
        try:
            row["tp_s"] = time_tp(model, x, repeat)
        except Exception as e:
            row["tp_error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated catalogue names")
    ap.add_argument("--list", default=None, help="a catalogue list (torchvision, timm, segmentation, ...)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224, help="image side for 1x3xHxW models (0: the catalogue's)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "speed.json"))
    args = ap.parse_args(argv)
    import torch
    import zoo_models

    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else [s.name for s in zoo_models.specs(args.list or "torchvision")]
    import fxprune  # noqa: F401  (import and first-call costs are paid before timing)
    bench("resnet18", 1)
    rows, load = [], [os.getloadavg()]
    print(f"{'model':32s} {'fxprune s':>10s} {'TP s':>8s} {'TP/fx':>7s} {'floor s':>8s} {'fx/floor':>8s}")
    for name in names:
        try:
            row = bench(name, args.repeat, args.size)
        except Exception as e:
            row = {"model": name, "error": traceback.format_exception_only(type(e), e)[-1].strip()}
        rows.append(row)
        fx, tp_, fl = row.get("fxprune_s"), row.get("tp_s"), row.get("floor_s")
        ratio = f"{tp_ / fx:7.2f}" if fx and tp_ else "      -"
        fr = f"{fx / fl:8.2f}" if fx and fl else "       -"
        print(f"{name:32s} {fx or float('nan'):10.3f} {tp_ or float('nan'):8.3f} {ratio} "
              f"{fl or float('nan'):8.3f} {fr}", flush=True)
        load.append(os.getloadavg())
    both = [r for r in rows if r.get("fxprune_s") and r.get("tp_s")]
    summary = {
        "models_both": len(both), "size": args.size,
        "sum_fxprune_s": sum(r["fxprune_s"] for r in both),
        "sum_tp_s": sum(r["tp_s"] for r in both),
        "fxprune_faster_on": sum(r["fxprune_s"] < r["tp_s"] for r in both),
        "median_tp_over_fx": statistics.median([r["tp_s"] / r["fxprune_s"] for r in both]) if both else None,
    }
    if both:
        summary["sum_ratio_tp_over_fx"] = summary["sum_tp_s"] / summary["sum_fxprune_s"]
    print(json.dumps(summary, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "summary": summary, "ratio": RATIO, "threads": 1, "repeat": args.repeat,
                   "loadavg": load, "torch": torch.__version__}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
