#!/usr/bin/env python
"""Analyze + plan + prune time, fxprune vs Torch-Pruning 1.6.1, side by side in one process.

For each model (catalogue of ``benchmarks/zoo_models.py``, 224x224 unless the catalogue says otherwise):

- fxprune: ``analyze`` + ``plan_by_ratio(0.5)`` + ``prune`` (a cold analysis: the cache is cleared);
- Torch-Pruning: ``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5,
  ignored_layers=[final classifier])`` construction + ``step()`` on a deep copy (the copy is not timed);
- the floor: ``torch.fx.symbolic_trace`` + shape propagation on meta tensors + one copy of the kept parameters
  (what any FX-based pruner must do at least), for models that symbolic-trace: with torch's own shape
  propagation (the fastest stock variant of ``zoo.py``), and with fxprune's own ``propagate_shapes`` (the
  "fx-shapes floor": its direct shapes make it the lower one on most models).

Each is the median of ``--repeat`` runs with one thread, as wall time and as this process's CPU time (the
machine is shared: CPU time is what the load average inflates least); the load average is recorded per
model. A model either library fails on is listed with the error and left out of the sums.

``--budget resnet50`` also times a ``target_macs`` budget search against one plain prune of the same model:
``Pruner(target_macs=0.5).step()``, ``Pruner(pruning_ratio=0.5).step()`` and analyze + plan_by_ratio + prune,
each from a cold analysis cache.

Usage:
    python benchmarks/speed.py --models resnet18,resnet50,densenet121,efficientnet_b0
    python benchmarks/speed.py --list torchvision --out benchmarks/results/speed.json --budget resnet50
    python benchmarks/speed.py --render benchmarks/results/speed.json   # markdown again from the JSON
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


def _median_time(fn, repeat: int, setup=None, once_over: float = float("inf")):
    """Median wall and CPU seconds of ``fn()`` over ``repeat`` runs (``setup()`` before each, untimed);
    one run only when the first takes more than ``once_over`` seconds."""
    wall, cpu, out = [], [], None
    for i in range(repeat):
        if i and wall[0] > once_over:
            break
        arg = setup() if setup is not None else None
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(arg) if setup is not None else fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def time_fxprune(model, x, repeat: int):
    import fxprune

    def run():
        fxprune.cache.clear()
        graph = fxprune.analyze(model, x)
        plan = fxprune.plan_by_ratio(graph, RATIO)
        return fxprune.prune(model, plan, x)

    return _median_time(run, repeat)


def time_budget(name: str, repeat: int, size: int = 224) -> dict:
    """``target_macs`` budget search vs one plain prune of the same model, cold analysis cache each."""
    import fxprune

    model, x = _build(name, size)
    row = {"model": name, "target_macs": RATIO}

    def step(**kw):
        def run():
            fxprune.cache.clear()
            return fxprune.Pruner(model, x, **kw).step()
        return run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["plain_s"], row["plain_cpu_s"], _ = time_fxprune(model, x, repeat)
        row["pruner_ratio_s"], row["pruner_ratio_cpu_s"], _ = _median_time(step(pruning_ratio=RATIO), repeat)
        row["pruner_target_macs_s"], row["pruner_target_macs_cpu_s"], small = _median_time(
            step(target_macs=RATIO), repeat)
    from fxprune.count import count
    row["macs_before"], row["macs_after"] = count(model, x)[0], count(small, x)[0]
    row["loadavg"] = os.getloadavg()
    return row


def time_floor(model, x, small, repeat: int):
    import torch
    from fxprune.frontend import normalize_inputs, propagate_shapes

    def run():
        gm = torch.fx.symbolic_trace(model)
        propagate_shapes(gm, normalize_inputs(x))
        return [p.detach().clone() for p in small.parameters()]

    return _median_time(run, repeat)[:2]


def time_floor_stock(model, x, small, repeat: int):
    """The floor as ``zoo.py`` defines it: ``symbolic_trace`` + torch's own shape propagation over meta
    tensors (the fastest of its stock variants: ``ShapeProp`` or a shape-recording ``Interpreter``, under
    ``_reparametrize_module``, ``functional_call`` or on a meta deepcopy) + one copy of the kept parameters.
    ``time_floor`` uses fxprune's ``propagate_shapes`` instead, whose direct shapes make it lower on most models.
    Returns ``(wall, cpu, variant)`` of the fastest variant."""
    import torch
    from zoo import INFO_VARIANT, shape_variants

    xm = torch.empty_like(x, device="meta")
    best = None
    for name, prop in shape_variants().items():
        if name == INFO_VARIANT:
            continue

        def run():
            gm = torch.fx.symbolic_trace(model)
            prop(gm, xm)
            return [p.detach().clone() for p in small.parameters()]

        try:
            wall, cpu, _ = _median_time(run, repeat)
        except Exception:  # a variant that cannot run this model is not the floor
            continue
        if best is None or wall < best[0]:
            best = (wall, cpu, name)
    if best is None:
        raise RuntimeError("no stock shape-propagation variant ran on meta tensors")
    return best


TP_ONCE_OVER_S = 5.0  # Torch-Pruning runs of more than this are not repeated (densenet161: 77 s at load 15)


def time_tp(model, x, repeat: int):
    import torch_pruning as tp
    from zoo import final_classifiers

    def run(m):
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=final_classifiers(m))
        pruner.step()

    # the copy is not timed
    return _median_time(run, repeat, setup=lambda: copy.deepcopy(model), once_over=TP_ONCE_OVER_S)[:2]


def _build(name: str, size: int):
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
    return model, x


def bench(name: str, repeat: int, size: int = 224) -> dict:
    model, x = _build(name, size)
    row = {"model": name, "loadavg_before": os.getloadavg()}
    with warnings.catch_warnings():  # no no_grad: Torch-Pruning traces through autograd
        warnings.simplefilter("ignore")
        try:
            row["fxprune_s"], row["fxprune_cpu_s"], small = time_fxprune(model, x, repeat)
            row["fxprune_params"] = sum(p.numel() for p in small.parameters())
        except Exception as e:
            row["fxprune_error"] = f"{type(e).__name__}: {e}"[:300]
            small = None
        try:
            if small is not None:
                row["floor_s"], row["floor_cpu_s"] = time_floor(model, x, small, repeat)
                row["floor_stock_s"], row["floor_stock_cpu_s"], row["floor_stock_variant"] = \
                    time_floor_stock(model, x, small, repeat)
        except Exception as e:  # the model does not symbolic_trace: no fx floor
            row["floor_error"] = f"{type(e).__name__}: {e}"[:200]
        try:
            row["tp_s"], row["tp_cpu_s"] = time_tp(model, x, repeat)
        except Exception as e:
            row["tp_error"] = f"{type(e).__name__}: {e}"[:300]
    row["loadavg_after"] = os.getloadavg()
    return row


FLOOR_MODELS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0")


def summarize(rows: list) -> dict:
    """Sums, counts and ratios over the models both libraries take; fxprune / floor on FLOOR_MODELS."""
    both = [r for r in rows if r.get("fxprune_s") and r.get("tp_s")]
    out: dict = {"models_both": len(both)}
    for unit, fx, tp in (("wall", "fxprune_s", "tp_s"), ("cpu", "fxprune_cpu_s", "tp_cpu_s")):
        sfx, stp = sum(r[fx] for r in both), sum(r[tp] for r in both)
        out[unit] = {
            "sum_fxprune_s": sfx, "sum_tp_s": stp, "sum_ratio_tp_over_fx": stp / sfx if sfx else None,
            "fxprune_faster_on": sum(r[fx] < r[tp] for r in both),
            "slower_on": [r["model"] for r in both if r[fx] >= r[tp]],
            "median_tp_over_fx": statistics.median([r[tp] / r[fx] for r in both]) if both else None,
        }
    out["floor_ratio"] = {r["model"]: {"wall": r["fxprune_s"] / r["floor_s"],
                                       "cpu": r["fxprune_cpu_s"] / r["floor_cpu_s"]}
                          for r in rows if r["model"] in FLOOR_MODELS and r.get("floor_s")}
    out["floor_stock_ratio"] = {r["model"]: {"wall": r["fxprune_s"] / r["floor_stock_s"],
                                             "cpu": r["fxprune_cpu_s"] / r["floor_stock_cpu_s"]}
                                for r in rows if r["model"] in FLOOR_MODELS and r.get("floor_stock_s")}
    return out


def _f(v, fmt="{:.3f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "-"


def _load(avg) -> str:
    return "/".join(f"{v:.1f}" for v in avg)


def _budget_line(b: dict) -> str:
    if "error" in b:
        return f"- `target_macs` on {b['model']}: {b['error']}"
    t, tc = b["pruner_target_macs_s"], b["pruner_target_macs_cpu_s"]
    return (f"- `target_macs={b['target_macs']}` on {b['model']}: Pruner step {t:.3f} s ({tc:.3f} s CPU); "
            f"Pruner(pruning_ratio={b['target_macs']}) step {b['pruner_ratio_s']:.3f} s "
            f"({b['pruner_ratio_cpu_s']:.3f} s CPU): {t / b['pruner_ratio_s']:.2f}x wall, "
            f"{tc / b['pruner_ratio_cpu_s']:.2f}x CPU; analyze + plan_by_ratio + prune {b['plain_s']:.3f} s "
            f"({b['plain_cpu_s']:.3f} s CPU): {t / b['plain_s']:.2f}x wall, "
            f"{tc / b['plain_cpu_s']:.2f}x CPU. "
            f"MACs {b['macs_before']:,} -> {b['macs_after']:,}")


def render_md(data: dict) -> str:
    """The results as markdown: conditions, summary lines, one table row per model."""
    s = data["summary"]
    lines = [f"# Analyze + plan + prune: fxprune vs Torch-Pruning {data.get('torch_pruning', '')}", "",
             f"`{data['command']}` — {data['date']}, torch {data['torch']}, one thread, median of "
             f"{data['repeat']} runs, ratio {data['ratio']}, {data['size']}x{data['size']} inputs. "
             f"Load average (1/5/15 min) {_load(data['loadavg'][0])} at the start, "
             f"{_load(data['loadavg'][-1])} at the end, on "
             f"a {os.cpu_count()}-core machine shared with other jobs: wall times are inflated, so this "
             "process's CPU time is given beside them.", "",
             f"Models both libraries take: {s['models_both']}."]
    for unit in ("wall", "cpu"):
        u = s.get(unit)
        if not u or u["sum_ratio_tp_over_fx"] is None:
            continue
        slower = f" (slower on {', '.join(u['slower_on'])})" if u["slower_on"] else ""
        lines.append(f"- {unit}: fxprune faster on {u['fxprune_faster_on']}/{s['models_both']}{slower}; sum "
                     f"{u['sum_fxprune_s']:.1f} s vs {u['sum_tp_s']:.1f} s = "
                     f"{u['sum_ratio_tp_over_fx']:.2f}x; "
                     f"median TP/fxprune {u['median_tp_over_fx']:.2f}x")
    if s.get("floor_stock_ratio"):
        lines.append("- fxprune / floor (symbolic_trace + torch's shape propagation on meta tensors + one "
                     "copy of the kept parameters, as in `zoo.py`): "
                     + ", ".join(f"{k} {v['wall']:.2f}x wall, {v['cpu']:.2f}x CPU"
                                 for k, v in s["floor_stock_ratio"].items()))
    if s.get("floor_ratio"):
        lines.append("- fxprune / fx-shapes floor (the same with fxprune's own `propagate_shapes`, which "
                     "computes the commonest ops' shapes directly; lower than the floor on most models): "
                     + ", ".join(f"{k} {v['wall']:.2f}x wall, {v['cpu']:.2f}x CPU"
                                 for k, v in s["floor_ratio"].items()))
    lines += [_budget_line(b) for b in data.get("budget", [])]
    lines += ["", "| model | fxprune s | TP s | TP/fx | fxprune CPU s | TP CPU s | TP/fx CPU | floor s | "
              "fx/floor | fx-shapes floor s | fx/fx-shapes | load 1 min | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        fx, tp, fxc, tpc, fls, fl = (r.get(k) for k in ("fxprune_s", "tp_s", "fxprune_cpu_s", "tp_cpu_s",
                                                          "floor_stock_s", "floor_s"))
        note = r.get("error") or r.get("fxprune_error") or r.get("tp_error") or r.get("floor_error") or ""
        note = note.replace("|", "/").replace("\n", " ")[:90]
        ratio = _f(tp / fx if fx and tp else None, "{:.2f}")
        ratio_cpu = _f(tpc / fxc if fxc and tpc else None, "{:.2f}")
        lines.append(f"| {r['model']} | {_f(fx)} | {_f(tp)} | {ratio} | "
                     f"{_f(fxc)} | {_f(tpc)} | {ratio_cpu} | {_f(fls)} | "
                     f"{_f(fx / fls if fx and fls else None, '{:.2f}')} | {_f(fl)} | "
                     f"{_f(fx / fl if fx and fl else None, '{:.2f}')} | "
                     f"{_f((r.get('loadavg_before') or [None])[0], '{:.1f}')} | {note} |")
    return "\n".join(lines) + "\n"


def _cap_memory() -> None:
    """An address-space cap for a row's process (70 % of RAM): Torch-Pruning's index maps on Swin and
    MaxViT at 224x224 outgrow the machine, and the kernel's OOM killer then took fxprune's figures of that
    row with it; under the cap it raises MemoryError, which the row records as Torch-Pruning's error."""
    import resource

    cap = int(0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _isolated(name: str, args: argparse.Namespace) -> dict:
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--row", name, "--repeat", str(args.repeat),
           "--size", str(args.size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=_cap_memory)
    rows = [ln[4:] for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if rows:
        return json.loads(rows[-1])
    why = f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else "")
    tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return {"model": name, "error": "; ".join([why] + tail)[:300]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated catalogue names")
    ap.add_argument("--list", default=None, help="a catalogue list (torchvision, timm, segmentation, ...)")
    ap.add_argument("--skip", default="", help="comma-separated names to leave out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224,
                    help="image side for 1x3xHxW models (0: the catalogue's)")
    ap.add_argument("--budget", default="", help="comma-separated models for the target_macs comparison")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "speed.json"))
    ap.add_argument("--render", metavar="JSON", help="only write the markdown of an earlier run's JSON")
    ap.add_argument("--isolate", action="store_true",
                    help="each model in a fresh process (a model killed for memory becomes an error row)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine earlier runs' JSON (rows in run order, a later row of a model wins) "
                         "into --out")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # child of --isolate: one model, its row on stdout
    args = ap.parse_args(argv)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as f:
                runs.append(json.load(f))
        rows = {r["model"]: r for run in runs for r in run["rows"]}
        data = {**runs[0], "rows": list(rows.values()),
                "budget": [b for run in runs for b in run.get("budget", [])],
                "loadavg": [a for run in runs for a in run["loadavg"]],
                "command": "; ".join(run["command"] for run in runs)
                + " (merged: python benchmarks/speed.py --merge)",
                "repeat": " or ".join(str(r) for r in sorted({run["repeat"] for run in runs}, reverse=True))
                + " (per run, see its command)"}
        data["summary"] = summarize(data["rows"])
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(render_md(data))
        return 0
    if args.row:
        import torch
        torch.set_num_threads(1)
        bench("resnet18", 1, 32)  # first-call costs (imports, rule registration) paid before timing
        print("ROW " + json.dumps(bench(args.row, args.repeat, args.size)), flush=True)
        return 0
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        data["summary"] = summarize(data["rows"])
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(render_md(data))
        return 0
    import datetime

    import torch
    import zoo_models

    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else [s.name for s in
                                                         zoo_models.specs(args.list or "torchvision")]
    names = [n for n in names if n not in set(args.skip.split(","))]
    import fxprune  # noqa: F401  (import and first-call costs are paid before timing)
    try:
        from importlib.metadata import version
        tp_version = version("torch-pruning")
    except Exception:
        tp_version = "?"
    bench("resnet18", 1)
    data = {"command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "rows": [], "summary": {}, "budget": [], "ratio": RATIO, "threads": 1, "repeat": args.repeat,
            "size": args.size, "loadavg": [os.getloadavg()], "torch": torch.__version__,
            "torch_pruning": tp_version}
    md = os.path.splitext(args.out)[0] + ".md"

    def save() -> None:
        data["summary"] = summarize(data["rows"])
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
        with open(md, "w") as f:
            f.write(render_md(data))

    for name in [b for b in args.budget.split(",") if b]:
        try:
            row = time_budget(name, args.repeat, args.size)
        except Exception as e:
            row = {"model": name, "error": traceback.format_exception_only(type(e), e)[-1].strip()}
        data["budget"].append(row)
        print(json.dumps(row), flush=True)
    print(f"{'model':32s} {'fxprune s':>10s} {'TP s':>8s} {'TP/fx':>7s} {'fx cpu':>7s} {'TP cpu':>7s} "
          f"{'floor s':>8s} {'fx/floor':>8s} {'load':>5s}")
    for name in names:
        try:
            row = _isolated(name, args) if args.isolate else bench(name, args.repeat, args.size)
        except Exception as e:
            row = {"model": name, "error": traceback.format_exception_only(type(e), e)[-1].strip()}
        data["rows"].append(row)
        fx, tp_, fl = row.get("fxprune_s"), row.get("tp_s"), row.get("floor_stock_s")
        ratio = f"{tp_ / fx:7.2f}" if fx and tp_ else "      -"
        fr = f"{fx / fl:8.2f}" if fx and fl else "       -"
        print(f"{name:32s} {fx or float('nan'):10.3f} {tp_ or float('nan'):8.3f} {ratio} "
              f"{row.get('fxprune_cpu_s') or float('nan'):7.3f} {row.get('tp_cpu_s') or float('nan'):7.3f} "
              f"{fl or float('nan'):8.3f} {fr} {os.getloadavg()[0]:5.1f}", flush=True)
        data["loadavg"].append(os.getloadavg())
        save()
    save()
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
