#!/usr/bin/env python
"""analyze + plan_by_ratio(0.5) + prune with this checkout's fxprune and an older copy, in one process.

The older copy is a checkout's ``fxprune/`` renamed to ``fxprune_base`` (relative imports keep it whole), so
both run side by side, interleaved, on a fresh model each repetition (a cold analysis cache in both):

    git archive 829f91c fxprune | tar -x -C /tmp/base && mv /tmp/base/fxprune /tmp/base/fxprune_base
    python benchmarks/versions.py --base /tmp/base --models resnet18,resnet50 --repeat 7

Each figure is the median of ``--repeat`` runs, wall and process CPU time, one thread; ``base / now`` > 1
means this checkout is faster. The load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _run(lib, model, x):
    graph = lib.analyze(model, x)
    plan = lib.plan_by_ratio(graph, 0.5)
    return lib.prune(model, plan, x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="directory holding the older copy as package fxprune_base")
    ap.add_argument("--models", default="resnet18", help="torchvision model names, comma separated")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import torch
    import torchvision

    torch.set_num_threads(1)
    sys.path.insert(0, args.base)
    import fxprune
    import fxprune_base

    libs = {"base": fxprune_base, "now": fxprune}
    rows = []
    for name in args.models.split(","):
        x = torch.randn(1, 3, args.size, args.size)
        times = {k: {"wall": [], "cpu": []} for k in libs}
        for rep in range(args.repeat):
            order = list(libs) if rep % 2 == 0 else list(libs)[::-1]
            for k in order:
                model = getattr(torchvision.models, name)().eval()
                w0, c0 = time.perf_counter(), time.process_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    small = _run(libs[k], model, x)
                times[k]["wall"].append(time.perf_counter() - w0)
                times[k]["cpu"].append(time.process_time() - c0)
                del small, model
        med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
        rows.append({"model": name, **{f"{k}_{m}_s": med[k][m] for k in libs for m in ("wall", "cpu")},
                     "ratio_cpu": med["base"]["cpu"] / med["now"]["cpu"],
                     "ratio_wall": med["base"]["wall"] / med["now"]["wall"]})
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.repeat}, 1 thread, "
          f"{args.size}x{args.size}")
    print("| model | base wall s | now wall s | base cpu s | now cpu s | base/now (cpu) | base/now (wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['base_wall_s']:.3f} | {r['now_wall_s']:.3f} | {r['base_cpu_s']:.3f} | "
              f"{r['now_cpu_s']:.3f} | {r['ratio_cpu']:.2f} | {r['ratio_wall']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"load": load, "repeat": args.repeat, "size": args.size, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
