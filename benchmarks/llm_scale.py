"""LLM scale (issue 12): 7B-shaped models analysed on the meta device; streamed and distributed parts.

    python benchmarks/llm_scale.py                      # every part present
    python benchmarks/llm_scale.py --parts meta --shapes llama2-7b

``meta``: for each shape, a fresh subprocess builds the model with ``torch.device("meta")``
(``AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")``, ``use_cache=False``), times
``fxprune.analyze(model, input_ids[1, 8] on meta)`` and reads the process's peak RSS (``ru_maxrss`` and
``VmHWM``; the whole process: Python, torch, transformers and the meta model included), counts what the
analysis finds prunable (MLPs, heads per layer, kv groups, the hidden size), then times a structure-only
plan (``plan_by_ratio(graph, 0.2, importance="structure")``) and one ``Pruner`` step on the meta model
(``importance="structure"``, 20 % of every group, 25 % of the heads), whose config it reports.
JSON goes to ``benchmarks/results/llm_scale_meta_s21.json`` with the machine load (``uptime``). The export
frontend exports three decoder layers and repeats the last one's graph (:mod:`fxprune.frontend.repeat`);
``--whole-export`` exports all of them instead (the path before session 21), for comparison.

``stream`` and ``dist`` are other modules (``benchmarks/llm_scale_stream.py``, ``llm_scale_dist.py``) with a
``run(args)`` function; they run when present.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SHAPES = {
    # Llama-2-7B: multi-head attention
    "llama2-7b": dict(family="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
    # Qwen2-7B: GQA, 28 heads over 4 kv heads, q/k/v biases
    "qwen2-7b": dict(family="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, intermediate_size=18944, vocab_size=152064),
    # Mistral-7B: GQA, 32 heads over 8 kv heads
    "mistral-7b": dict(family="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=32000),
}


def _peak_mb() -> dict:
    import resource

    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0] + "_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def child(shape: str) -> dict:
    """One shape in this (fresh) process: build on meta, analyse, plan, prune; numbers as a dict."""
    import warnings

    import torch
    import transformers

    import fxprune

    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}[family]
    cfg = cfg_cls(**spec, use_cache=False)
    from fxprune.frontend import repeat
    repeat.ENABLED = not os.environ.get("LLM_SCALE_WHOLE_EXPORT")  # --whole-export: the session-20 path
    rss_import = _peak_mb()
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    t_build = time.perf_counter() - t0
    x = torch.zeros(1, 8, dtype=torch.long, device="meta")
    rss_before = _peak_mb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        graph = fxprune.analyze(model, x)
        groups = graph.groups
        t_analyze, c_analyze = time.perf_counter() - t0, time.process_time() - c0
    rss_after = _peak_mb()
    n_layers, kv = spec["num_hidden_layers"], spec["num_key_value_heads"]
    found = {"mlp": 0, "vo": 0, "head_parts": 0, "kv_groups": 0}
    for i in range(n_layers):
        found["mlp"] += graph.group_of(f"model.layers.{i}.mlp.up_proj.weight", 0).pinned is None
        found["vo"] += graph.group_of(f"model.layers.{i}.self_attn.v_proj.weight", 0).pinned is None
    per_layer = set()
    for g in groups:
        if g.pinned is None:
            for p in g.head_parts():
                found["head_parts"] += 1
                per_layer.add(len(p.all_classes))
                # a class that removes k_proj rows removes a kv head (with its query group under GQA)
                found["kv_groups"] += len({int(c) for name, dim, pos in p.index_classes()
                                           if name.endswith("k_proj.weight") and dim == 0
                                           for c in pos if c >= 0})
    found["head_classes_per_layer"] = sorted(per_layer)
    found["hidden"] = graph.group_of("model.embed_tokens.weight", 1).pinned is None
    with warnings.catch_warnings(record=True) as caught_prune:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        plan = fxprune.plan_by_ratio(graph, 0.2, importance="structure")
        t_plan = time.perf_counter() - t0
        # the Pruner keeps head dims of a transformers model (its attention holds one head_dim), so the
        # result stays the model's own class with a config that describes it
        t0 = time.perf_counter()
        pruner = fxprune.Pruner(model, x, importance="structure", pruning_ratio=0.2, prune_num_heads=True,
                                head_pruning_ratio=0.25)
        small = pruner.step()
        t_prune = time.perf_counter() - t0
    c = getattr(small, "config", None)
    return {
        "shape": shape, "config": SHAPES[shape], "params": sum(p.numel() for p in model.parameters()),
        "repeated_layers": repeat.ENABLED,
        "build_s": round(t_build, 2), "analyze_s": round(t_analyze, 2),
        "analyze_cpu_s": round(c_analyze, 2), "groups": len(groups),
        "unpinned_groups": sum(g.pinned is None for g in groups), "found": found,
        "expected": {"mlp": n_layers, "vo": n_layers, "head_parts": n_layers, "kv_groups": n_layers * kv,
                     "hidden": True},
        "warnings": sorted({str(w.message)[:200] for w in caught}),
        "rss_after_import_mb": rss_import, "rss_before_analyze_mb": rss_before, "rss_peak_mb": rss_after,
        "plan_by_ratio_0.2_s": round(t_plan, 2),
        "plan_by_ratio_0.2_removed": sum(len(v) for v in plan.values()),
        "pruner_step_s": round(t_prune, 2),
        "pruner_warnings": sorted({str(w.message)[:300] for w in caught_prune}),
        "pruned": {"type": type(small).__name__, "hidden_size": getattr(c, "hidden_size", None),
                   "intermediate_size": getattr(c, "intermediate_size", None),
                   "num_attention_heads": getattr(c, "num_attention_heads", None),
                   "num_key_value_heads": getattr(c, "num_key_value_heads", None),
                   "params": sum(p.numel() for p in small.parameters()),
                   "all_meta": all(p.is_meta for p in small.parameters())},
    }


def run_meta(args: argparse.Namespace) -> list:
    rows = []
    for shape in args.shapes.split(","):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if args.whole_export:
            env["LLM_SCALE_WHOLE_EXPORT"] = "1"
        else:
            env.pop("LLM_SCALE_WHOLE_EXPORT", None)
        for rep in range(args.repeat):
            load = os.getloadavg()
            res = subprocess.run([sys.executable, __file__, "--child", shape], capture_output=True, text=True,
                                 env=env, cwd=ROOT)
            if res.returncode:
                print(res.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{shape}: the child process failed ({res.returncode})")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["rep"], row["loadavg_before"], row["loadavg_after"] = rep, load, os.getloadavg()
            rows.append(row)
            f = row["found"]
            print(f"{shape:11s} rep {rep}: analyze {row['analyze_s']:6.2f} s "
                  f"(CPU {row['analyze_cpu_s']:.2f} s)  peak RSS "
                  f"{row['rss_peak_mb'].get('VmHWM_mb', row['rss_peak_mb']['ru_maxrss_mb']):7.0f} MB  "
                  f"(before analyze {row['rss_before_analyze_mb'].get('VmRSS_mb', 0):.0f} MB)  "
                  f"mlp {f['mlp']}  v/o {f['vo']}  head parts {f['head_parts']}  kv groups {f['kv_groups']}  "
                  f"hidden {f['hidden']}  load {load[0]:.1f}", flush=True)
    out = {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "cpus": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\n{'shape':11s} {'params':>7s} {'analyze s':>10s} {'CPU s':>6s} {'peak MB':>8s} {'plan s':>7s} "
          f"{'step s':>8s}  Pruner(0.2, heads 0.25) on meta")
    for r in rows:
        p = r["pruned"]
        print(f"{r['shape']:11s} {r['params'] / 1e9:6.2f}B {r['analyze_s']:10.2f} {r['analyze_cpu_s']:6.2f} "
              f"{r['rss_peak_mb'].get('VmHWM_mb', r['rss_peak_mb']['ru_maxrss_mb']):8.0f} "
              f"{r['plan_by_ratio_0.2_s']:7.2f} {r['pruner_step_s']:8.2f}  {p['type']}: "
              f"hidden {p['hidden_size']}, intermediate {p['intermediate_size']}, "
              f"heads {p['num_attention_heads']}/{p['num_key_value_heads']}, "
              f"{p['params'] / 1e9:.2f}B")
    print(f"-> {path}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="meta,stream,dist", help="comma-separated: meta, stream, dist")
    ap.add_argument("--shapes", default="llama2-7b,qwen2-7b", help=f"meta part: any of {', '.join(SHAPES)}")
    ap.add_argument("--repeat", type=int, default=1, help="meta part: fresh processes per shape")
    ap.add_argument("--whole-export", action="store_true",
                    help="meta part: export every decoder layer (no repeated-layer export)")
    ap.add_argument("--out", default=str(HERE / "results" / "llm_scale_meta_s21.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args, args.extra = ap.parse_known_args()  # the other parts read their own options from args.extra
    if args.child:
        print(json.dumps(child(args.child)))
        return
    for part in args.parts.split(","):
        if part == "meta":
            run_meta(args)
            continue
        sys.path.insert(0, str(HERE))
        try:
            mod = importlib.import_module(f"llm_scale_{part}")
        except ModuleNotFoundError:
            print(f"part {part!r}: benchmarks/llm_scale_{part}.py is not present; skipped")
            continue
        mod.run(args)


if __name__ == "__main__":
    main()
