"""Streamed pruning of a ~1B-parameter Llama checkpoint: wall time and peak RSS next to its size.

Writes a synthetic checkpoint of a TinyLlama-1.1B shape (hidden 2048, 22 layers, 32 heads, 4 kv heads,
intermediate 5632, vocab 32000; random bf16, written shard by shard so the whole model is never in memory),
then, each in a fresh subprocess (peak RSS = the process's VmHWM):

1. ``scores``: :func:`fxprune.hf.checkpoint_scores` streams the L2 norms of every MLP channel and
   :func:`fxprune.hf.plan_from_scores` picks 20 % of every layer's MLP width (the plan ``plan_by_ratio``
   would pick on the loaded model for those groups);
2. ``prune``: :func:`fxprune.hf.prune_checkpoint` writes the pruned shards (also recorded: the resident memory
   once the meta model is analysed, and the sampled anonymous / file-backed peaks while the shards stream);
3. ``check``: loads the source with ``AutoModelForCausalLM.from_pretrained``, prunes it in memory with
   ``fxprune.prune``, loads the streamed result with ``from_pretrained(dst)`` and compares every tensor
   bit for bit, and the logits of one batch.

Run (about 3 minutes on 2 cores; 2.2 GB + 1.8 GB on disk under ``--workdir``, removed at the end)::

    OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 10 python benchmarks/llm_scale_stream.py \\
        --out benchmarks/results/llm_scale_stream.json

``run(args)`` returns the same dict (``benchmarks/llm_scale.py --parts stream`` calls it; its extra options,
such as ``--shape tiny``, reach this parser).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}
DEFAULTS = dict(shape="1b", ratio=0.2, shard_mb=500, workdir=None, keep=False, check=True, seed=0, out=None)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception as e:  # a machine without uptime
        return f"uptime unavailable: {e}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=5).stdout.strip()
    except Exception:  # not a git checkout
        return ""


def write_synthetic(path: str, shape: str, shard_mb: int, seed: int) -> Dict[str, Any]:
    """A Llama checkpoint of ``shape`` in bf16 with random weights, written one shard at a time."""
    import torch
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, dtype="bfloat16",
                                   architectures=["LlamaForCausalLM"])
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(cfg)
    names = [(k, tuple(v.shape)) for k, v in meta.state_dict().items()]
    gen = torch.Generator().manual_seed(seed)
    limit = shard_mb * 2 ** 20
    groups, cur, size = [], [], 0
    for k, s in names:  # fill shards in state-dict order, as save_pretrained does
        n = 2 * int(torch.Size(s).numel())
        if cur and size + n > limit:
            groups.append(cur)
            cur, size = [], 0
        cur.append((k, s))
        size += n
    groups.append(cur)
    wmap, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for k, s in group:
            if "norm" in k:
                t = 1 + 0.1 * torch.randn(s, generator=gen)
            else:
                t = 0.02 * torch.randn(s, generator=gen)
            shard[k] = t.to(torch.bfloat16)
            wmap[k] = fname
            total += shard[k].numel() * 2
        save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
        del shard
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
    params = sum(int(torch.Size(s).numel()) for _, s in names)
    return {"params": params, "shards": len(groups), "total_size": total}


# every subprocess samples its anonymous and file-backed resident memory (a lower bound of their peaks: the
# sampler runs when the main thread releases the GIL, which torch ops and file writes do); VmHWM is exact
_SAMPLER = r"""
import threading, time as _t
PEAK = {"RssAnon": 0, "RssFile": 0}
def _sample():
    while True:
        for line in open("/proc/self/status"):
            k = line.split(":")[0]
            if k in PEAK:
                PEAK[k] = max(PEAK[k], int(line.split()[1]))
        _t.sleep(0.01)
threading.Thread(target=_sample, daemon=True).start()
def peaks():
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    return {"peak_rss_mb": int(hwm) / 1024, "peak_anon_mb_sampled": PEAK["RssAnon"] / 1024,
            "peak_file_mb_sampled": PEAK["RssFile"] / 1024}
"""

_SCORES = _SAMPLER + r"""
import json, sys, time, numpy as np, fxprune
src, ratio, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
sc = fxprune.hf.checkpoint_scores(src)
mlp = {k: v for k, v in sc.scores().items() if ".mlp." in k}
plan = fxprune.hf.plan_from_scores(sc.graph, mlp, ratio)
wall = time.perf_counter() - t
open(out, "w").write(plan.to_json())
print(json.dumps({"wall_s": wall, **peaks(), "groups": len(mlp), "entries": len(plan)}))
"""

_PRUNE = _SAMPLER + r"""
import json, sys, time, fxprune
src, plan, dst = sys.argv[1], sys.argv[2], sys.argv[3]
plan = fxprune.PrunePlan.from_json(open(plan).read())
from fxprune.hf import stream
_write, BEFORE = stream._write_shard, {}
def _first(*a):  # memory once the meta model is analysed, before the first tensor is read
    if not BEFORE:
        BEFORE.update({l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status")
                       if l.split(":")[0] in ("VmRSS", "RssAnon", "RssFile")})
        BEFORE["t"] = time.perf_counter() - t
        PEAK["RssAnon"] = PEAK["RssFile"] = 0  # from here on: the streaming's own peaks
    return _write(*a)
stream._write_shard = _first
t = time.perf_counter()
info = fxprune.hf.prune_checkpoint(src, plan, dst, progress=False)
wall = time.perf_counter() - t
streamed = {(k if k == "peak_rss_mb" else "streaming_" + k): v for k, v in peaks().items()}
print(json.dumps({"wall_s": wall, **streamed, "analysis_s": BEFORE["t"],
                  "before_streaming_rss_mb": BEFORE["VmRSS"], "before_streaming_anon_mb": BEFORE["RssAnon"],
                  "config": info["config"],
                  "sliced": info["sliced"], "tensors": info["tensors"], "fxprune_json": info["fxprune_json"],
                  "total_size": info["total_size"]}))
"""

_CHECK = _SAMPLER + r"""
import gc, json, sys, time, warnings, torch, transformers, fxprune
src, plan, dst = sys.argv[1], sys.argv[2], sys.argv[3]
plan = fxprune.PrunePlan.from_json(open(plan).read())
ids = torch.randint(0, int(sys.argv[4]), (1, 16), generator=torch.Generator().manual_seed(0))
t = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = fxprune.prune(m, plan, fxprune.Inputs(ids, use_cache=False))
del m
gc.collect()
back = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16).eval()
a, b = ref.state_dict(), back.state_dict()
diff = sorted(k for k in a if k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]))
diff += sorted(set(b) - set(a))
with torch.no_grad():
    same_logits = torch.equal(ref(ids).logits, back(ids).logits)
print(json.dumps({"tensors_compared": len(a), "tensors_differing": diff[:5], "n_differing": len(diff),
                  "logits_equal": same_logits, "wall_s": time.perf_counter() - t, **peaks()}))
"""


def _sub(code: str, *argv: str) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(f"subprocess failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _dir_mb(path: str, only: str = ".safetensors") -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(only)) / 2 ** 20


def run(args: Any = None) -> Dict[str, Any]:
    """Write the synthetic checkpoint, choose the plan from streamed scores, prune it streaming, check it
    against pruning the loaded model. ``args``: a Namespace or dict with the keys of ``DEFAULTS``."""
    if isinstance(args, argparse.Namespace) and hasattr(args, "extra"):
        # benchmarks/llm_scale.py: its own options, and the rest (args.extra) for its parts to read
        given = vars(_parser().parse_known_args(args.extra)[0])
    else:
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    a = SimpleNamespace(**{**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}})
    work = tempfile.mkdtemp(prefix="fxprune-stream-", dir=a.workdir)
    src, dst, plan = os.path.join(work, "src"), os.path.join(work, "dst"), os.path.join(work, "plan.json")
    res: Dict[str, Any] = {"shape": a.shape, **SHAPES[a.shape], "ratio": a.ratio, "dtype": "bfloat16",
                           "load_start": uptime(), "workdir": work, "commit": _commit()}
    try:
        t = time.perf_counter()
        res["synthetic"] = write_synthetic(src, a.shape, a.shard_mb, a.seed)
        res["synthetic"]["write_s"] = time.perf_counter() - t
        shards = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
        res["checkpoint_mb"] = _dir_mb(src)
        res["largest_shard_mb"] = max(os.path.getsize(os.path.join(src, f)) for f in shards) / 2 ** 20
        res["scores"] = _sub(_SCORES, src, str(a.ratio), plan)
        res["prune"] = _sub(_PRUNE, src, plan, dst)
        res["pruned_checkpoint_mb"] = _dir_mb(dst)
        res["largest_pruned_shard_mb"] = max(os.path.getsize(os.path.join(dst, f)) for f in shards) / 2 ** 20
        res["load_after_prune"] = uptime()
        if a.check:
            res["check"] = _sub(_CHECK, src, plan, dst, str(SHAPES[a.shape]["vocab_size"]))
            res["bit_for_bit"] = res["check"]["n_differing"] == 0 and res["check"]["logits_equal"]
        res["load_end"] = uptime()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default=DEFAULTS["shape"])
    ap.add_argument("--ratio", type=float, default=DEFAULTS["ratio"],
                    help="share of every MLP's width removed")
    ap.add_argument("--shard-mb", dest="shard_mb", type=int, default=DEFAULTS["shard_mb"])
    ap.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the in-memory comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "llm_scale_stream.json"))
    return ap


def main(argv=None) -> int:
    res = run(_parser().parse_args(argv))
    print(json.dumps(res, indent=1))
    return 0 if res.get("bit_for_bit", True) else 1


if __name__ == "__main__":
    sys.exit(main())
