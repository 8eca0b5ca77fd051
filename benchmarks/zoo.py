#!/usr/bin/env python
"""fxprune vs. the FX floor vs. Torch-Pruning 1.6.1 on a torchvision model zoo.

For every model (torchvision, ``weights=None``, eval mode, input 1x3x224x224, inception_v3 at 299):

floor
    The least any FX-based pruner must pay: ``torch.fx.symbolic_trace(model)`` + one shape propagation
    over meta tensors (fastest of several ways, all timed and reported) + one copy of the kept parameters
    (approximated by slicing out and cloning half of the rows of every parameter).
fxprune
    ``fxprune.analyze(model, inputs)``, ``fxprune.plan_by_ratio(graph, 0.5)`` and
    ``fxprune.prune(model, plan, inputs)``, each timed separately (analyze and prune both include their own
    trace); peak RSS growth and tracemalloc peak; ``fxprune.verify`` once (not timed); params/MACs.
Torch-Pruning
    ``tp.DependencyGraph().build_dependency(model, example_inputs=x)`` and
    ``MetaPruner(model, x, MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[final classifier])``
    construction + ``step()``, on a fresh deepcopy of the model each repeat (copy not timed).

Each model runs in two fresh subprocesses of the same interpreter, one after the other (floor+fxprune, then
Torch-Pruning), so a crash, hang or leak in either tool costs only that model, and both tools start from the
same cold state.  Every time is a median over ``--repeat`` runs; the raw samples are kept in the JSON.

Sweep mode (``--list all|torchvision|segmentation|video|detection|flow|timm``): every model of the catalogue in
``benchmarks/zoo_models.py`` at its smallest input, checked once (see ``benchmarks/zoo_checks.py``): fxprune
analyze/prune times, prunable groups, verify, output structure, a train step, jit.trace and ONNX wherever
the unpruned model traces/exports, params/MACs; Torch-Pruning MetaPruner time, a raw forward and params/MACs.
JSON to ``--out`` (default ``benchmarks/results/zoo_sweep.json``) and a Markdown table next to it (``.md``).

Usage::

    python benchmarks/zoo.py --list all                       # the whole zoo, one subprocess per model and tool
    python benchmarks/zoo.py --list timm --no-tp --checks verify
    python benchmarks/zoo.py --models swin_t,timm/levit_128s --list all --resume
    python benchmarks/zoo.py --list all --render              # rewrite zoo_sweep.md and docs/zoo.md from the JSON
    python benchmarks/zoo.py --list all --merge a.json,b.json --render   # rows of sweeps run apart, merged
    python benchmarks/zoo.py                                  # all 13 models, JSON -> stdout and --out
    python benchmarks/zoo.py --models resnet18,densenet121 --repeat 3 --markdown
    python benchmarks/zoo.py --no-tp --input-size 128

Progress goes to stderr; stdout carries the final JSON document (followed by the Markdown table with
``--markdown``).
"""
import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results", "zoo.json")
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121",
          "vgg11_bn", "googlenet", "inception_v3", "regnet_y_400mf", "squeezenet1_1", "shufflenet_v2_x1_0",
          "convnext_tiny"]
RATIO = 0.5

DEFINITIONS = {
    "floor_s": "median(symbolic_trace) + min over meta-tensor shape-propagation variants of median(variant) "
               "+ median(clone of half the rows of every parameter); floor.median_s has every component, and "
               "info_real_forward_interpreter (a real forward recording shapes) for context only",
    "fxprune_analyze_s": "median of fxprune.analyze(model, inputs) (includes its trace)",
    "fxprune_plan_s": "median of fxprune.plan_by_ratio(graph, 0.5)",
    "fxprune_prune_s": "median of fxprune.prune(model, plan, inputs) (includes its trace)",
    "ratio_to_floor": "(fxprune_analyze_s + fxprune_prune_s) / floor_s",
    "tp_build_s": "median of tp.DependencyGraph().build_dependency(model, example_inputs=x)",
    "tp_prune_s": "median of MetaPruner(...) construction + step() (construction builds its own DependencyGraph)",
    "speedup_vs_tp": "(tp_build_s + tp_prune_s) / (fxprune_analyze_s + fxprune_prune_s)",
    "speedup_vs_tp_incl_plan": "(tp_build_s + tp_prune_s) / (fxprune_analyze_s + fxprune_plan_s + fxprune_prune_s)",
    "peak_rss_growth_mb": "max over repeats of (VmHWM after - VmRSS before), VmHWM reset via /proc/self/clear_refs",
    "tracemalloc_peak_mb": "Python-heap peak (tracemalloc) of one analyze+plan+prune; tensor storage is not "
                           "traced by tracemalloc, see peak_rss_growth_mb for that",
    "macs": "multiply-accumulates of conv/linear/matmul for one forward at batch 1 (fxprune.count when "
            "available, else torch FlopCounterMode flops / 2); params = unique parameters",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def err(e):
    s = " ".join(f"{type(e).__name__}: {e}".split())
    return "error: " + s[:600]


def med(xs):
    return statistics.median(xs) if xs else None


def rnd(x, n=5):
    return None if x is None else round(x, n)


# ----------------------------------------------------------------------------------------------
# memory helpers (Linux /proc; silently absent elsewhere)
# ----------------------------------------------------------------------------------------------
def _proc_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mark():
    """Reset the peak-RSS counter and return the current RSS (kB), or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_kb("VmRSS")


def rss_growth_mb(before_kb):
    peak = _proc_kb("VmHWM")
    if before_kb is None or peak is None:
        return None
    return round((peak - before_kb) / 1024.0, 1)


# ----------------------------------------------------------------------------------------------
# models and counting (shared by both workers)
# ----------------------------------------------------------------------------------------------
def build_model(name, input_size):
    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = input_size or (299 if name == "inception_v3" else 224)
    x = torch.randn(1, 3, size, size)
    return model, x


def final_classifiers(model):
    from torch import nn
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == 1000)
            or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)]


def _fxprune_count():
    try:
        sys.path.insert(0, ROOT)
        import fxprune
        c = getattr(fxprune, "count", None)
        if c is not None and not callable(c):  # the submodule, not the function
            c = getattr(c, "count", None)
        if c is None:
            from fxprune.count import count as c
        return c
    except Exception:
        return None


def count(model, x):
    """(macs, params, counter-name)."""
    import torch
    c = _fxprune_count()
    why = "fxprune.count not importable"
    if c is not None:
        try:
            macs, params = c(model, (x,))
            return int(macs), int(params), "fxprune.count"
        except Exception as e:
            why = "fxprune.count failed: " + err(e)[7:200]
    from torch.utils.flop_counter import FlopCounterMode
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops() // 2), int(params), f"FlopCounterMode/2 ({why})"


# ----------------------------------------------------------------------------------------------
# worker: floor + fxprune
# ----------------------------------------------------------------------------------------------
def _meta_state(gm):
    import torch
    st = {k: torch.empty_like(v, device="meta") for k, v in gm.named_parameters(remove_duplicate=False)}
    st.update({k: torch.empty_like(v, device="meta") for k, v in gm.named_buffers(remove_duplicate=False)})
    return st


def shape_variants():
    """Ways to propagate shapes over meta tensors; each records a shape per FX node."""
    import torch
    from torch import fx
    from torch.fx.passes.shape_prop import ShapeProp
    from torch.nn.utils.stateless import _reparametrize_module

    class MetaShapes(fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if isinstance(r, torch.Tensor):
                n.meta["fx_floor_shape"] = (tuple(r.shape), r.dtype)
            return r

    def shapeprop_reparam(gm, xm):
        with _reparametrize_module(gm, _meta_state(gm)):
            ShapeProp(gm).propagate(xm)

    def interpreter_reparam(gm, xm):
        with torch.no_grad(), _reparametrize_module(gm, _meta_state(gm)):
            MetaShapes(gm).run(xm)

    def interpreter_functional_call(gm, xm):
        # functional_call swaps the state in, the Interpreter records a shape per node
        class Run(torch.nn.Module):
            def forward(self, t):
                return MetaShapes(gm).run(t)
        wrapper = Run()
        wrapper.gm = gm
        state = {"gm." + k: v for k, v in _meta_state(gm).items()}
        with torch.no_grad():
            torch.func.functional_call(wrapper, state, (xm,))

    def shapeprop_meta_copy(gm, xm):
        # deepcopy with a memo that maps every tensor to its meta twin: no data is copied
        memo = {}
        for p in gm.parameters():
            memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for b in gm.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta")
        mg = copy.deepcopy(gm, memo)
        ShapeProp(mg).propagate(xm)

    def real_forward_interpreter(gm, x):
        # not meta: a real forward that records shapes; reported for context, never part of the floor
        with torch.no_grad():
            MetaShapes(gm).run(x)

    return {"shapeprop_reparam": shapeprop_reparam, "interpreter_reparam": interpreter_reparam,
            INFO_VARIANT: real_forward_interpreter,
            "interpreter_functional_call": interpreter_functional_call,
            "shapeprop_meta_copy": shapeprop_meta_copy}


INFO_VARIANT = "info_real_forward_interpreter"


def clone_half(params):
    return [p.narrow(0, 0, max(1, p.shape[0] // 2)).clone() if p.dim() else p.clone() for p in params]


def measure_floor(model, x, repeat, res, dump):
    import torch
    from torch import fx
    fl = res["floor"] = {"trace_s": [], "clone_half_params_s": [], "shape_prop_s": {}}
    variants = shape_variants()
    for k in variants:
        fl["shape_prop_s"][k] = []
    params = [p.detach() for p in model.parameters()]
    xm = torch.empty_like(x, device="meta")
    for _ in range(repeat):
        t0 = time.perf_counter()
        gm = fx.symbolic_trace(model)
        fl["trace_s"].append(time.perf_counter() - t0)
        for k, f in variants.items():
            try:
                t0 = time.perf_counter()
                f(gm, x if k == INFO_VARIANT else xm)
                fl["shape_prop_s"][k].append(time.perf_counter() - t0)
            except Exception as e:
                fl["shape_prop_s"][k] = err(e)
        variants = {k: f for k, f in variants.items() if isinstance(fl["shape_prop_s"][k], list)}
        t0 = time.perf_counter()
        kept = clone_half(params)
        fl["clone_half_params_s"].append(time.perf_counter() - t0)
        del kept, gm
    sp = {k: med(v) for k, v in fl["shape_prop_s"].items() if isinstance(v, list) and v}
    info = sp.pop(INFO_VARIANT, None)
    if not sp:
        res["floor_s"] = "error: no shape-propagation variant worked"
        return
    best = min(sp, key=sp.get)
    fl["best_shape_prop"] = best
    fl["median_s"] = {"trace": rnd(med(fl["trace_s"])), "clone_half_params": rnd(med(fl["clone_half_params_s"])),
                      **{"shape_prop." + k: rnd(v) for k, v in sp.items()},
                      INFO_VARIANT: rnd(info)}
    res["floor_s"] = rnd(med(fl["trace_s"]) + sp[best] + med(fl["clone_half_params_s"]))
    for k in ("trace_s", "clone_half_params_s"):
        fl[k] = [rnd(t) for t in fl[k]]
    fl["shape_prop_s"] = {k: ([rnd(t) for t in v] if isinstance(v, list) else v)
                          for k, v in fl["shape_prop_s"].items()}
    dump()


def measure_fxprune(model, x, repeat, res, dump):
    fx_ = res["fxprune"] = {}
    try:
        sys.path.insert(0, ROOT)
        import fxprune
        for name in ("analyze", "plan_by_ratio", "prune"):
            getattr(fxprune, name)
    except Exception as e:
        fx_["error"] = err(e)
        dump()
        return
    inputs = (x,)
    times = {"analyze_s": [], "plan_s": [], "prune_s": []}
    fx_["times"] = times
    rss = []
    graph = plan = small = None
    for _ in range(repeat):
        graph = plan = small = None
        mark = rss_mark()
        stage = "analyze"
        try:
            t0 = time.perf_counter()
            graph = fxprune.analyze(model, inputs)
            times["analyze_s"].append(time.perf_counter() - t0)
            stage = "plan_by_ratio"
            t0 = time.perf_counter()
            plan = fxprune.plan_by_ratio(graph, RATIO)
            times["plan_s"].append(time.perf_counter() - t0)
            stage = "prune"
            t0 = time.perf_counter()
            small = fxprune.prune(model, plan, inputs)
            times["prune_s"].append(time.perf_counter() - t0)
        except Exception as e:
            fx_["stage_failed"] = stage
            fx_["error"] = err(e)
            fx_["trace"] = traceback.format_exc()[-1500:]
            break
        finally:
            rss.append(rss_growth_mb(mark))
    for k, v in times.items():
        times[k] = [rnd(t) for t in v]
        if v:
            fx_[k] = rnd(med(v))
    fx_["peak_rss_growth_mb"] = max((r for r in rss if r is not None), default=None)
    if graph is not None:
        try:
            groups = list(graph.groups)
            fx_["groups"] = len(groups)
            fx_["pinned_groups"] = sum(1 for g in groups if getattr(g, "pinned", None))
        except Exception as e:
            fx_["groups"] = err(e)
    if plan is not None:
        try:
            fx_["plan_keys"] = len(plan)
            fx_["plan_indices"] = sum(len(v) for v in plan.values())
        except Exception as e:
            fx_["plan_keys"] = err(e)
    dump()
    if small is None:
        return

    # verify once, not timed
    try:
        rep = fxprune.verify(model, small, plan, inputs)
        d = getattr(rep, "max_abs_diff", None)
        fx_["verify_max_abs_diff"] = float(d) if d is not None else repr(rep)[:300]
    except Exception as e:
        fx_["verify_max_abs_diff"] = err(e)
    try:  # randomly initialised nets can output ~1e12 (inception_v3): give the diff relative to the output
        import torch
        with torch.no_grad():
            out_max = float(model(x).abs().max())
        fx_["output_abs_max"] = out_max
        if isinstance(fx_["verify_max_abs_diff"], float) and out_max > 0:
            fx_["verify_max_rel_diff"] = fx_["verify_max_abs_diff"] / out_max
    except Exception as e:
        fx_["output_abs_max"] = err(e)
    dump()

    # counts
    try:
        macs, params, counter = count(model, x)
        fx_["macs_before"], fx_["params_before"], fx_["counter"] = macs, params, counter
    except Exception as e:
        fx_["count_before"] = err(e)
    try:
        macs, params, counter = count(small, x)
        fx_["macs_after"], fx_["params_after"] = macs, params
    except Exception as e:
        fx_["count_after"] = err(e)
    dump()

    # Python-heap peak of one full run (tracemalloc slows Python down, so never in a timed run)
    import tracemalloc
    del small
    try:
        tracemalloc.start()
        g = fxprune.analyze(model, inputs)
        s = fxprune.prune(model, fxprune.plan_by_ratio(g, RATIO), inputs)
        fx_["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1)
        del g, s
    except Exception as e:
        fx_["tracemalloc_peak_mb"] = err(e)
    finally:
        tracemalloc.stop()
    dump()


def worker_fx(name, input_size, repeat, result_path, skip_fx):
    import torch
    warnings.filterwarnings("ignore")
    res = {"model": name, "threads": torch.get_num_threads()}

    def dump():
        with open(result_path, "w") as f:
            json.dump(res, f)

    try:
        model, x = build_model(name, input_size)
        res["input_shape"] = list(x.shape)
    except Exception as e:
        res["error"] = err(e)
        dump()
        return
    dump()
    try:
        measure_floor(model, x, repeat, res, dump)
    except Exception as e:
        res["floor_s"] = err(e)
    dump()
    if not skip_fx:
        measure_fxprune(model, x, repeat, res, dump)
    dump()


# ----------------------------------------------------------------------------------------------
# worker: Torch-Pruning
# ----------------------------------------------------------------------------------------------
def worker_tp(name, input_size, repeat, result_path):
    import torch
    import torch_pruning as tp
    warnings.filterwarnings("ignore")
    res = {"model": name, "threads": torch.get_num_threads()}

    def dump():
        with open(result_path, "w") as f:
            json.dump(res, f)

    try:
        base, x = build_model(name, input_size)
    except Exception as e:
        res["error"] = err(e)
        dump()
        return
    times = {"build_s": [], "pruner_init_s": [], "step_s": [], "prune_s": []}
    res["times"] = times
    rss = []
    model = None
    for _ in range(repeat):
        model = copy.deepcopy(base)
        stage = "build_dependency"
        mark = rss_mark()
        try:
            t0 = time.perf_counter()
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
            times["build_s"].append(time.perf_counter() - t0)
            del DG
            stage = "MetaPruner"
            ignored = final_classifiers(model)
            t0 = time.perf_counter()
            pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                          pruning_ratio=RATIO, ignored_layers=ignored)
            t1 = time.perf_counter()
            stage = "step"
            pruner.step()
            t2 = time.perf_counter()
            times["pruner_init_s"].append(t1 - t0)
            times["step_s"].append(t2 - t1)
            times["prune_s"].append(t2 - t0)
            del pruner
        except Exception as e:
            res["stage_failed"] = stage
            res["error"] = err(e)
            res["trace"] = traceback.format_exc()[-1500:]
            model = None
            break
        finally:
            rss.append(rss_growth_mb(mark))
            for k, v in times.items():
                if v:
                    res[k] = rnd(med(v))
            dump()
    for k, v in times.items():
        times[k] = [rnd(t) for t in v]
    res["peak_rss_growth_mb"] = max((r for r in rss if r is not None), default=None)
    dump()
    if model is None:
        return
    try:
        macs, params, counter = count(base, x)
        res["macs_before"], res["params_before"], res["counter"] = macs, params, counter
        macs, params, _ = count(model, x)
        res["macs_after"], res["params_after"] = macs, params
        res["forward_ok"] = True
    except Exception as e:
        res["forward_ok"] = False
        res["count_error"] = err(e)
    dump()


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def run_worker(kind, name, args, timeout):
    fd, rpath = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--models", name,
           "--result", rpath, "--repeat", str(args.repeat)]
    if args.input_size:
        cmd += ["--input-size", str(args.input_size)]
    if args.no_fx:
        cmd += ["--no-fx"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    tail = ""
    try:
        p = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, cwd=ROOT, check=False)
        rc = p.returncode
        tail = " ".join((p.stderr or "").split())[-400:]
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = round(time.perf_counter() - t0, 1)
    try:
        with open(rpath) as f:
            r = json.load(f)
    except Exception:
        r = {}
    os.unlink(rpath)
    r["worker_wall_s"] = wall
    if rc == "timeout":
        r["error"] = f"error: timeout after {timeout} s (partial results kept)"
    elif rc != 0:
        r.setdefault("error", f"error: worker exited rc={rc}: {tail}")
    return r


def combine(name, fxr, tpr):
    row = {"model": name, "input_shape": fxr.get("input_shape")}
    row["floor_s"] = fxr.get("floor_s", fxr.get("error"))
    row["floor"] = fxr.get("floor")
    fx_ = fxr.get("fxprune", {})
    if "fxprune" not in fxr and fxr.get("error"):
        fx_ = {"error": fxr["error"]}
    row["fxprune"] = fx_
    row["fxprune_worker_wall_s"] = fxr.get("worker_wall_s")
    row["tp"] = tpr
    an, pl, pr = fx_.get("analyze_s"), fx_.get("plan_s"), fx_.get("prune_s")
    fl = row["floor_s"] if isinstance(row["floor_s"], (int, float)) else None
    fx_total = an + pr if isinstance(an, float) and isinstance(pr, float) else None
    tb, tpp = tpr.get("build_s"), tpr.get("prune_s")
    # a worker that timed out after finishing some repeats still gives medians over those (flagged partial)
    tp_total = tb + tpp if isinstance(tb, float) and isinstance(tpp, float) else None
    row["tp_partial"] = bool(tp_total is not None and tpr.get("error"))
    row["ratio_to_floor"] = rnd(fx_total / fl, 2) if fx_total and fl else None
    row["speedup_vs_tp"] = rnd(tp_total / fx_total, 2) if fx_total and tp_total else None
    row["speedup_vs_tp_incl_plan"] = (rnd(tp_total / (fx_total + pl), 2)
                                      if fx_total and tp_total and isinstance(pl, float) else None)
    return row


def _si(n):
    if not isinstance(n, (int, float)):
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _s(v):
    if isinstance(v, (int, float)):
        return f"{v:.3f}"
    return "–"


def _cell_err(d):
    e = d.get("error") if isinstance(d, dict) else None
    return "err" if e else "–"


def markdown(doc):
    hdr = ["model", "floor s", "fxprune analyze s", "fxprune prune s", "ratio to floor", "TP build s",
           "TP prune s", "speed-up vs TP", "params before→after", "MACs before→after", "verify max|Δ|"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    notes = []
    for r in doc["models"]:
        fx_, tp_ = r["fxprune"], r["tp"]
        an = _s(fx_.get("analyze_s")) if "analyze_s" in fx_ else _cell_err(fx_)
        pr = _s(fx_.get("prune_s")) if "prune_s" in fx_ else _cell_err(fx_)
        tb = _s(tp_.get("build_s")) if "build_s" in tp_ else _cell_err(tp_)
        star = "*" if r.get("tp_partial") else ""
        tb = tb + star if "build_s" in tp_ else tb
        tpp = _s(tp_.get("prune_s")) + star if "prune_s" in tp_ else _cell_err(tp_)
        params = (f"{_si(fx_.get('params_before'))}→{_si(fx_.get('params_after'))}"
                  if "params_after" in fx_ else "–")
        macs = f"{_si(fx_.get('macs_before'))}→{_si(fx_.get('macs_after'))}" if "macs_after" in fx_ else "–"
        v = fx_.get("verify_max_abs_diff")
        rel = fx_.get("verify_max_rel_diff")
        if isinstance(v, float):
            v = f"{v:.1e}" + (f" (rel {rel:.0e})" if v > 1e-4 and isinstance(rel, float) else "")
        else:
            v = "err" if v else "–"
        rt = f"{r['ratio_to_floor']:.2f}" if r.get("ratio_to_floor") is not None else "–"
        sp = f"{r['speedup_vs_tp']:.2f}×{star}" if r.get("speedup_vs_tp") is not None else "–"
        fl = _s(r["floor_s"]) if isinstance(r["floor_s"], (int, float)) else "err"
        lines.append("| " + " | ".join([r["model"], fl, an, pr, rt, tb, tpp, sp, params, macs, v]) + " |")
        for who, d in (("fxprune", fx_), ("TP", tp_)):
            if isinstance(d, dict) and d.get("error"):
                notes.append(f"- {r['model']} / {who}: {d['error'][:200]}")
            elif who == "fxprune" and isinstance(d.get("verify_max_abs_diff"), str):
                notes.append(f"- {r['model']} / fxprune verify: {d['verify_max_abs_diff'][:200]}")
    m = doc["meta"]
    out = "\n".join(lines)
    out += (f"\n\nMedians of {m['repeat']} runs; {m['cpu_count']} CPU cores, torch {m['torch']}, "
            f"{m['torch_threads']} threads, Torch-Pruning {m.get('torch_pruning')}.")
    plans = [f"{r['model']} {r['fxprune']['plan_s']:.3f}" for r in doc["models"]
             if isinstance(r["fxprune"].get("plan_s"), float)]
    if plans:
        out += " fxprune.plan_by_ratio s (timed apart, not in the ratios): " + ", ".join(plans) + "."
    if any(r.get("tp_partial") for r in doc["models"]):
        out += " `*`: Torch-Pruning worker stopped early (see its error); medians over the repeats it finished."
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out


def meta(args):
    import torch
    try:
        from importlib.metadata import version
        tpv = version("torch-pruning")  # tp.__version__ says 1.6.0 in the 1.6.1 wheel
    except Exception as e:
        tpv = err(e)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip() or None
    except Exception:
        commit = None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_pruning": tpv,
            "fxprune_commit": commit, "repeat": args.repeat, "ratio": RATIO, "input_size": args.input_size,
            "tp_timeout_s": args.tp_timeout, "fx_timeout_s": args.fx_timeout}


# ----------------------------------------------------------------------------------------------
# sweep mode (--list)
# ----------------------------------------------------------------------------------------------
SWEEP_OUT = os.path.join(HERE, "results", "zoo_sweep.json")


def _limit_memory(gb):
    """Cap the worker's address space so a model that would exhaust the machine fails alone."""
    if gb:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2 ** 30), int(gb * 2 ** 30)))


def run_check_worker(kind, name, args, timeout):
    fd, rpath = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--models", name, "--result", rpath,
           "--checks", args.checks, "--mem-gb", str(args.mem_gb)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    tail = ""
    try:
        p = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, cwd=ROOT, check=False)
        rc = p.returncode
        tail = " ".join((p.stderr or "").split())[-300:]
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = round(time.perf_counter() - t0, 1)
    try:
        with open(rpath) as f:
            r = json.load(f)
    except Exception:
        r = {}
    os.unlink(rpath)
    r["worker_wall_s"] = wall
    if rc == "timeout":
        r.setdefault("error", f"error: timeout after {timeout} s (partial results kept)")
    elif rc != 0:
        r.setdefault("error", f"error: worker exited rc={rc} (memory limit {args.mem_gb} GB?): {tail}")
    return r


def _status(v):
    if not isinstance(v, str):
        return "–"
    if v.startswith("ok"):
        return "ok"
    return "skip" if v.startswith("skip") else "FAIL"


def _fx_ok(fx_):
    return (not fx_.get("error") and fx_.get("verify") == "ok" and fx_.get("structure") == "ok"
            and all(_status(fx_.get(k)) in ("ok", "skip", "–") for k in ("train", "jit", "onnx")))


def _pins(fx_):
    """``14% (model output 12%)``: the share of MACs in pinned groups and the op pinning the largest share;
    ``no rule:`` before that op when it lacks a rule (a bug, not an inherent pin)."""
    share = fx_.get("pinned_macs_share")
    if not isinstance(share, (int, float)):
        return "–"
    top = fx_.get("top_pin")
    if not top:
        return f"{100 * share:.0f}%"
    top = " ".join(top.replace("|", "/").split())[:60]
    flag = "no rule: " if top in fx_.get("missing_rule", []) else ""
    return f"{100 * share:.0f}% ({flag}{top} {100 * fx_.get('top_pin_share', 0):.0f}%)"


def sweep_markdown(doc):
    hdr = ["model", "frontend", "groups (prunable/all)", "MACs pinned (largest pin)", "fxprune verified", "train", "TorchScript", "ONNX",
           "fxprune params", "fxprune MACs", "fxprune analyze+prune s", "TP forward ok", "TP params",
           "TP MACs", "TP prune s"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    notes = []
    for r in doc["models"]:
        fx_, tp_ = r["fxprune"], r["tp"]
        groups = f"{fx_['prunable_groups']}/{fx_['groups']}" if "groups" in fx_ else "–"
        ver = "ok" if fx_.get("verify") == "ok" and fx_.get("structure") == "ok" else "FAIL"
        an, pr = fx_.get("analyze_s"), fx_.get("prune_s")
        fx_t = f"{an:.2f}+{pr:.2f}" if isinstance(an, float) and isinstance(pr, float) else "–"
        params = f"{_si(fx_.get('params_before'))}→{_si(fx_.get('params_after'))}" if "params_after" in fx_ else "–"
        macs = f"{_si(fx_.get('macs_before'))}→{_si(fx_.get('macs_after'))}" if "macs_after" in fx_ else "–"
        if tp_.get("skipped"):
            tp_ok = tp_params = tp_macs = tp_t = "–"
        else:
            tp_ok = "ok" if tp_.get("forward") == "ok" else "FAIL"
            tp_params = _si(tp_.get("params_after")) if "params_after" in tp_ else "–"
            tp_macs = _si(tp_.get("macs_after")) if "macs_after" in tp_ else "–"
            tp_t = _s(tp_.get("prune_s")) if "prune_s" in tp_ else "–"
        lines.append("| " + " | ".join([
            r["model"], fx_.get("frontend") or "–", groups, _pins(fx_), ver, _status(fx_.get("train")), _status(fx_.get("jit")), _status(fx_.get("onnx")),
            params, macs, fx_t, tp_ok, tp_params, tp_macs, tp_t]) + " |")
        for k in ("error", "train", "jit", "onnx"):
            v = fx_.get(k)
            if isinstance(v, str) and not v.startswith("ok"):
                notes.append(f"- {r['model']} fxprune {k if k != 'error' else fx_.get('stage_failed', '')}: "
                             f"{v[:240]}")
        for w in fx_.get("warnings", []):
            notes.append(f"- {r['model']} fxprune warning: {w[:240]}")
        if tp_.get("error") and not tp_.get("skipped"):
            notes.append(f"- {r['model']} Torch-Pruning {tp_.get('stage_failed', '')}: {tp_['error'][7:240]}")
    m = doc["meta"]
    n = len(doc["models"])
    ok = sum(1 for r in doc["models"] if _fx_ok(r["fxprune"]))
    tp_ok = sum(1 for r in doc["models"] if r["tp"].get("forward") == "ok")
    out = (f"{ok}/{n} models pass every fxprune check (verify, output structure, train step, TorchScript and "
           f"ONNX by the route the unpruned model takes); Torch-Pruning prunes and runs a forward on "
           f"{tp_ok}/{n}.\n\n")
    out += sweep_totals(doc) + "\n\n"
    out += "\n".join(lines)
    an = [r["fxprune"]["analyze_s"] for r in doc["models"] if isinstance(r["fxprune"].get("analyze_s"), float)]
    out += (f"\n\nOne run per model on {m['cpu_count']} CPU cores ({m['cpu']}), torch {m['torch']}, "
            f"Torch-Pruning {m.get('torch_pruning')}, fxprune commit {m.get('fxprune_commit', '')[:7]}; "
            f"ratio 0.5 of every unpinned group (fxprune.plan_by_ratio) vs MetaPruner(MagnitudeImportance(p=2), "
            f"pruning_ratio=0.5, final classifier ignored). Max fxprune analyze time "
            f"{max(an, default=0):.2f} s. Times are single runs on a shared machine: compare within a row."
            + _verify_only_note(doc))
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out + "\n"


def sweep_totals(doc):
    """Per-list counts: models, fxprune verified (+ output structure, train step), TorchScript and ONNX
    ok/skipped, Torch-Pruning forward ok."""
    hdr = ["list", "models", "fxprune: verified, output structure kept, train step (where run)", "TorchScript",
           "ONNX + onnxruntime (1e-4)", "Torch-Pruning 1.6.1: prunes and runs a forward"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    sources = list(dict.fromkeys(r["source"] for r in doc["models"]))

    def cell(rows, key):
        st = [_status(r["fxprune"].get(key)) for r in rows]
        skip = st.count("skip")
        return f"{st.count('ok')}" + (f" (+{skip} skipped)" if skip else "")

    total = []
    for src in sources + ["**all**"]:
        rows = doc["models"] if src == "**all**" else [r for r in doc["models"] if r["source"] == src]
        ver = sum(1 for r in rows if r["fxprune"].get("verify") == "ok" and r["fxprune"].get("structure") == "ok"
                  and _status(r["fxprune"].get("train")) in ("ok", "–"))
        tp_ok = sum(1 for r in rows if r["tp"].get("forward") == "ok")
        total.append("| " + " | ".join([src, str(len(rows)), str(ver), cell(rows, "jit"), cell(rows, "onnx"),
                                        str(tp_ok)]) + " |")
    return "\n".join(lines + total)


ZOO_DOC = os.path.join(ROOT, "docs", "zoo.md")


def readme_table(doc):
    """The per-list totals and a compact per-model table (the body of docs/zoo.md)."""
    hdr = ["model", "list", "frontend", "MACs pinned (largest pin)", "fxprune verified", "TP forward ok",
           "params before → fxprune / TP",
           "MACs before → fxprune / TP", "analyze+prune s fxprune / TP"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in doc["models"]:
        fx_, tp_ = r["fxprune"], r["tp"]
        tp_fwd = tp_.get("forward") == "ok"
        ver = "ok" if _fx_ok(fx_) else "FAIL"
        an, pr = fx_.get("analyze_s"), fx_.get("prune_s")
        fx_t = an + pr if isinstance(an, float) and isinstance(pr, float) else None
        tp_t = _s(tp_.get("prune_s")) if tp_fwd else "–"
        lines.append("| " + " | ".join([
            r["model"], r["source"], fx_.get("frontend") or "–", _pins(fx_), ver, "ok" if tp_fwd else "FAIL",
            (f"{_si(fx_.get('params_before'))} → {_si(fx_.get('params_after'))} / "
             f"{_si(tp_.get('params_after')) if tp_fwd else '–'}"),
            (f"{_si(fx_.get('macs_before'))} → {_si(fx_.get('macs_after'))} / "
             f"{_si(tp_.get('macs_after')) if tp_fwd else '–'}"),
            f"{_s(fx_t)} / {tp_t}"]) + " |")
    return (sweep_totals(doc) + "\n\n<details><summary>Every model (fxprune verified = verify, output structure, "
            "train step, TorchScript and ONNX where the unpruned model has a route; TP = Torch-Pruning 1.6.1, "
            "a raw forward; MACs pinned = MACs of pinned groups / MACs of all groups, a conv counting in its "
            "output and its input group, with the op pinning the largest share; `no rule:` marks an op "
            "lacking a rule)</summary>\n\n" + "\n".join(lines) + "\n\n</details>")


def zoo_doc(doc):
    """The whole text of docs/zoo.md: what it is, how to regenerate it, the totals and the per-model table."""
    m = doc["meta"]
    return ("# The model zoo\n\n"
            "<!-- Generated by `python benchmarks/zoo.py --list all --render` from "
            "benchmarks/results/zoo_sweep.json; do not edit by hand. -->\n\n"
            "Every model of the catalogue in `benchmarks/zoo_models.py` (torchvision with `weights=None`, timm with "
            "`pretrained=False`), at its smallest input, pruned by `fxprune.plan_by_ratio(graph, 0.5)` and checked "
            "by `benchmarks/zoo_checks.py`; Torch-Pruning run on the same model in the same sweep. The full "
            "report with every failure and skip and its reason is "
            "[`benchmarks/results/zoo_sweep.md`](../benchmarks/results/zoo_sweep.md).\n\n"
            f"Sweep of {m['date'][:10]} on {m['cpu_count']} CPU cores, torch {m['torch']}, Torch-Pruning "
            f"{m.get('torch_pruning')}, fxprune commit {m.get('fxprune_commit', '')[:7]}"
            + (f" (rows rerun {len(m['reruns'])} times since, at later commits)" if m.get("reruns") else "")
            + ". Times are single runs on a shared machine: compare within a row." + _verify_only_note(doc) + "\n\n"
            + readme_table(doc) + "\n")


def _verify_only_note(doc):
    """Say how many rows ran verify only (no train step, TorchScript or ONNX), so their blank cells read right."""
    rows = [r["model"] for r in doc["models"] if "verify" in r["fxprune"] and "jit" not in r["fxprune"]
            and "train" not in r["fxprune"]]
    return (f" {len(rows)} rows were checked by verify only (`--checks verify`: no train step, TorchScript or "
            f"ONNX run), most of them without Torch-Pruning (`--no-tp`)." if rows else "")


def write_zoo_doc(doc, path=ZOO_DOC):
    """Write docs/zoo.md from the sweep's JSON (the same text every time for the same JSON)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(zoo_doc(doc))
    log(f"[zoo] wrote {path}")


def sweep(args):
    sys.path.insert(0, HERE)
    from zoo_models import specs
    wanted = [n for n in args.models.split(",") if n] if args.models_given else None
    todo = [s for s in specs(args.list) if wanted is None or s.name in wanted]
    doc = {"meta": meta(args), "models": []}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        done = {r["model"] for r in old.get("models", [])}
        if wanted is None:  # carry on where the last run stopped
            todo = [s for s in todo if s.name not in done]
        doc["models"] = [r for r in old.get("models", []) if r["model"] not in {s.name for s in todo}]
        rerun = {k: doc["meta"][k] for k in ("date", "fxprune_commit", "torch_threads")}
        doc["meta"] = {**old["meta"], "reruns": old["meta"].get("reruns", []) + [
            {**rerun, "models": [s.name for s in todo]}]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for spec in todo:
        log(f"[zoo] {spec.name}: fxprune ...")
        load = [round(v, 2) for v in os.getloadavg()]
        fxr = run_check_worker("check", spec.name, args, args.fx_timeout)
        log(f"[zoo] {spec.name}: analyze {fxr.get('analyze_s')} s, prune {fxr.get('prune_s')} s, "
            f"groups {fxr.get('prunable_groups')}/{fxr.get('groups')}, verify {fxr.get('verify')}, "
            f"train {_status(fxr.get('train'))}, jit {_status(fxr.get('jit'))}, onnx {_status(fxr.get('onnx'))} "
            f"{fxr.get('error', '')[:200]}")
        if args.no_tp:
            tpr = {"skipped": True, "error": "error: skipped (--no-tp)"}
        else:
            tpr = run_check_worker("tpcheck", spec.name, args, args.tp_timeout)
            log(f"[zoo] {spec.name}: Torch-Pruning {tpr.get('prune_s')} s, forward {tpr.get('forward')} "
                f"{tpr.get('error', '')[:160]}")
        doc["models"].append({"model": spec.name, "source": spec.source, "input_shape": list(spec.input_shape),
                              "loadavg_1_5_15_before": load, "fxprune": fxr, "tp": tpr})
        order = {s.name: i for i, s in enumerate(specs("all"))}
        doc["models"].sort(key=lambda r: order.get(r["model"], 1 << 30))
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(sweep_markdown(doc))
    log(f"[zoo] wrote {args.out} and {os.path.splitext(args.out)[0]}.md")
    _readme_if_full(doc, args)


PIN_FIELDS = ("frontend", "pinned_macs_share", "pins", "top_pin", "top_pin_share", "missing_rule")


def merge_sweeps(out_path, paths, pins_only=False):
    """Merge the rows of other sweep JSONs (run with ``--out`` elsewhere, e.g. two halves in parallel) into
    ``out_path``: whole rows replace the rows of the same model (keeping a Torch-Pruning result that a
    ``--no-tp`` rerun did not redo), or with ``pins_only`` only the fxprune
    frontend and pin fields are copied into rows that exist (the other checks keep their earlier run)."""
    with open(out_path) as f:
        doc = json.load(f)
    rows = {r["model"]: r for r in doc["models"]}
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        names = []
        for r in part["models"]:
            if pins_only:
                if r["model"] in rows:
                    rows[r["model"]]["fxprune"].update({k: r["fxprune"][k] for k in PIN_FIELDS if k in r["fxprune"]})
                    names.append(r["model"])
            else:
                old = rows.get(r["model"])
                if old is not None and r["tp"].get("skipped") and not old["tp"].get("skipped"):
                    r["tp"] = old["tp"]  # a --no-tp rerun keeps the Torch-Pruning result it did not redo
                rows[r["model"]] = r
                names.append(r["model"])
        pm = part["meta"]
        doc["meta"].setdefault("reruns", []).append(
            {"date": pm["date"], "fxprune_commit": pm.get("fxprune_commit"), "torch_threads": pm.get("torch_threads"),
             "models": names, "merged_from": os.path.basename(path)} | ({"pins_only": True} if pins_only else {}))
    sys.path.insert(0, HERE)
    from zoo_models import specs
    order = {s.name: i for i, s in enumerate(specs("all"))}
    doc["models"] = sorted(rows.values(), key=lambda r: order.get(r["model"], 1 << 30))
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def _readme_if_full(doc, args):
    """Only the whole catalogue at the default --out speaks for docs/zoo.md."""
    if args.list == "all" and os.path.abspath(args.out) == SWEEP_OUT:
        write_zoo_doc(doc)


def sweep_worker(args):
    sys.path.insert(0, HERE)
    _limit_memory(args.mem_gb)
    from zoo_checks import check_fx, check_tp
    from zoo_models import get_spec
    spec = get_spec(args.models)
    if args.worker == "check":
        check_fx(spec, None, tuple(c for c in args.checks.split(",") if c), args.result)
    else:
        check_tp(spec, None, args.result)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=None,
                    help="square input size for every model (default 224, inception_v3 299)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table after the JSON")
    ap.add_argument("--tp-timeout", type=int, default=120, help="seconds per model for the Torch-Pruning worker")
    ap.add_argument("--fx-timeout", type=int, default=300, help="seconds per model for the floor+fxprune worker")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads in both workers (default: leave torch's default)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--no-fx", action="store_true", help="skip fxprune (floor only)")
    ap.add_argument("--list", choices=["all", "torchvision", "segmentation", "video", "detection", "flow", "timm"],
                    help="sweep mode: check every model of this list (see benchmarks/zoo_models.py)")
    ap.add_argument("--checks", default="verify,train,jit,onnx", help="sweep mode: fxprune checks to run")
    ap.add_argument("--mem-gb", type=float, default=12.0, help="sweep mode: address-space cap per worker")
    ap.add_argument("--resume", action="store_true",
                    help="sweep mode: keep the rows of an existing --out; without --models, run only the "
                         "models it lacks, with --models, rerun those")
    ap.add_argument("--render", action="store_true",
                    help="sweep mode: only rewrite the Markdown report (and, for --list all, docs/zoo.md) "
                         "from the JSON in --out")
    ap.add_argument("--merge", help="sweep mode: comma-separated sweep JSONs whose rows replace those of --out")
    ap.add_argument("--merge-pins", help="sweep mode: comma-separated sweep JSONs whose frontend and pin fields "
                                         "are copied into the rows of --out")
    ap.add_argument("--worker", choices=["fx", "tp", "check", "tpcheck"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.models_given = args.models != ",".join(MODELS)
    if args.list and args.out == DEFAULT_OUT:
        args.out = SWEEP_OUT
    if args.list and "--fx-timeout" not in sys.argv:
        args.fx_timeout = 900

    names = [n for n in args.models.split(",") if n]
    if args.worker and args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker in ("check", "tpcheck"):
        sweep_worker(args)
        return
    if args.list and (args.merge or args.merge_pins):
        if args.merge:
            merge_sweeps(args.out, args.merge.split(","))
        if args.merge_pins:
            merge_sweeps(args.out, args.merge_pins.split(","), pins_only=True)
        log(f"[zoo] merged into {args.out}")
        if not args.render:
            return
    if args.list and args.render:
        with open(args.out) as f:
            doc = json.load(f)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(sweep_markdown(doc))
        log(f"[zoo] wrote {os.path.splitext(args.out)[0]}.md")
        _readme_if_full(doc, args)
        return
    if args.list:
        sweep(args)
        return
    if args.worker == "fx":
        worker_fx(names[0], args.input_size, args.repeat, args.result, args.no_fx)
        return
    if args.worker == "tp":
        worker_tp(names[0], args.input_size, args.repeat, args.result)
        return

    doc = {"meta": meta(args), "definitions": DEFINITIONS, "models": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for name in names:
        log(f"[zoo] {name}: floor + fxprune ...")
        load = [round(v, 2) for v in os.getloadavg()]
        fxr = run_worker("fx", name, args, args.fx_timeout)
        log(f"[zoo] {name}: floor {fxr.get('floor_s')} s, fxprune analyze {fxr.get('fxprune', {}).get('analyze_s')}"
            f" s, prune {fxr.get('fxprune', {}).get('prune_s')} s {fxr.get('fxprune', {}).get('error', '')[:120]}")
        if args.no_tp:
            tpr = {"error": "error: skipped (--no-tp)"}
        else:
            log(f"[zoo] {name}: Torch-Pruning ...")
            tpr = run_worker("tp", name, args, args.tp_timeout)
            log(f"[zoo] {name}: TP build {tpr.get('build_s')} s, prune {tpr.get('prune_s')} s "
                f"{tpr.get('error', '')[:120]}")
        row = combine(name, fxr, tpr)
        row["loadavg_1_5_15_before"] = load  # the machine may be shared: read timings against this
        doc["models"].append(row)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    print(json.dumps(doc, indent=1))
    if args.markdown:
        print()
        print(markdown(doc))
    log(f"[zoo] wrote {args.out}")


if __name__ == "__main__":
    main()
