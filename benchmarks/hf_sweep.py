#!/usr/bin/env python
"""Sweep the ``hf`` list of the zoo catalogue (``benchmarks/zoo_hf.py``): every transformers causal-LM family
that builds tiny, plus BERT, ViT and T5, through fxprune's export frontend.

Per family: the frontend used and the analysis time (it includes ``torch.export``), groups and unpinned
groups, whether the MLP width of every layer, whole heads (``Group.head_parts()``) and the hidden size are
prunable, then ``plan_by_ratio(graph, 0.25, heads=True)`` -> ``prune``: the type of the result (the model's
own class or a GraphModule, with fxprune's warning), parameters before/after, ``fxprune.verify``'s max
difference, whether greedy ``generate`` runs on the pruned model and whether ``fxprune.hf.config_mismatches``
is empty. Errors are recorded per family, with the stage that failed.

Families run one after the other in a worker process, each under ``signal.alarm(--timeout)``; a worker that
crashes or hangs past the timeout is killed and a new one goes on with the next family. Results go to
``--out`` (JSON, default ``benchmarks/results/hf_sweep.json``) and a Markdown report next to it.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hf_sweep.py                     # the whole hf list
    OMP_NUM_THREADS=1 python benchmarks/hf_sweep.py --models llama,gpt2 --out /tmp/x.json
    python benchmarks/hf_sweep.py --render                               # Markdown from the JSON
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
DEFAULT_OUT = os.path.join(HERE, "results", "hf_sweep.json")
RATIO = 0.25
# a parameter of a layer's MLP (a dense FFN or an expert): the word after the layer index
_MLP = re.compile(r"(^|\.)(mlp|feed_forward|ffn|intermediate|DenseReluDense|experts?|fc1|fc2|c_fc|w[123]|"
                  r"dense_h_to_4h|dense_4h_to_h|ff|moe|block_sparse_moe|shared_experts?|lin[12])(\.|$)"
                  r"|^output\.dense\.")
_LAYER = re.compile(r"^((?:.*?\.)?(?:layers|layer|h|block|blocks|decoder_layers|ffns)\.\d+\.)(.*)$")


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def mlp_layers(model, graph, hidden: int) -> tuple[int, int, list[str]]:
    """``(layers whose MLP width is prunable, layers with an MLP, the pins of the others)``. A layer's MLP
    width is prunable when some dim of one of its MLP weights (a dim that is not the hidden size and holds
    at least 16 channels) is in an unpinned group."""
    have: dict[str, bool] = {}
    why: dict[str, str] = {}
    for name, p in model.named_parameters():
        m = _LAYER.match(name)
        if m is None or p.ndim < 2 or not _MLP.search(m.group(2)):
            continue
        layer = m.group(1)
        have.setdefault(layer, False)
        for d, n in enumerate(p.shape):
            if n == hidden or n < 16 or have[layer]:
                continue
            try:
                g = graph.group_of(name, d)
            except Exception as e:  # noqa: BLE001 - a dim the graph does not use
                why.setdefault(layer, _err(e))
                continue
            if g.pinned is None:
                have[layer] = True
            else:
                why.setdefault(layer, f"{name}:{d} pinned: {g.pinned}")
    pins = [f"{k}: {why.get(k, '?')}" for k, ok in have.items() if not ok]
    return sum(have.values()), len(have), pins


def _hidden(model, graph) -> str:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    name = next((n for n, p in model.named_parameters() if w is not None and p is w), None)
    if name is None:
        return "no input embedding"
    try:
        g = graph.group_of(name, 1)
    except Exception as e:  # noqa: BLE001
        return _err(e)
    return "yes" if g.pinned is None else f"pinned: {g.pinned}"[:300]


def mlp_heads_plan(graph, ratio: float = RATIO, skip: tuple = ()):
    """What ``Pruner(prune_num_heads=True, prune_head_dims=False)`` removes: ``ratio`` of every unpinned
    group's classes by L2 magnitude, whole heads (per attention, ``Group.head_parts()``) in a group that
    holds heads, and nothing from the groups those heads span (head dims: q/k rows, v rows), whose sizes a
    model class usually cannot take apart from its head count; nor from the groups keyed in ``skip``."""
    import numpy as np

    from fxprune import PrunePlan
    from fxprune.importance import MagnitudeImportance
    from fxprune.select import valid_prefix
    inside = {graph.groups[j].key for g in graph.groups if g.head_classes
              for span in g.head_span for j in span}
    imp, picks = MagnitudeImportance(p=2), []
    for g in graph.groups:
        if g.pinned or (g.key in inside and not g.head_classes) or g.key in skip:
            continue
        for view in g.head_parts() if g.head_classes else [g]:
            n = int(np.floor(ratio * len(view.all_classes)))
            if n:
                order = np.argsort(np.asarray(imp(view, graph.gm), dtype=np.float64), kind="stable")
                picks += valid_prefix(graph, [view.all_classes[i] for i in order[:n]], view.key)
    return PrunePlan.union(picks)


def _prune(model, plan, inputs) -> tuple:
    import fxprune
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = fxprune.prune(model, plan, inputs)
    said = sorted({" ".join(str(w.message).split())[:600] for w in caught
                   if str(w.message).startswith("fxprune")})
    return small, said


def check_family(spec, res: dict) -> None:
    """Fill ``res`` for one family; raises on the first failing stage (``res['stage']`` names it)."""
    import torch

    import fxprune
    from zoo_models import build
    res["stage"] = "build"
    model, inputs = build(spec)
    res["class"] = type(model).__name__
    res["params_before"] = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model(*inputs.args, **inputs.kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res["stage"] = "analyze"
            t0 = time.perf_counter()
            try:
                graph = fxprune.analyze(model, inputs)
            except Exception:
                try:  # the fx fallback's error hides the export error: ask the export frontend for it
                    fxprune.analyze(model, inputs, frontend="export")
                except Exception as e:  # noqa: BLE001 - recorded
                    res["export_error"] = _err(e)
                raise
            res["export_s"] = round(time.perf_counter() - t0, 2)
            res["frontend"] = graph.frontend
            groups = graph.groups
            res["groups"], res["unpinned"] = len(groups), sum(g.pinned is None for g in groups)
            hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", 64)
            res["mlp_prunable"], res["mlp_layers"], res["mlp_pins"] = mlp_layers(model, graph, hidden)
            res["head_parts"] = sum(len(g.head_parts()) for g in groups
                                    if g.head_classes and g.pinned is None)
            res["hidden"] = _hidden(model, graph)
            res["stage"] = "plan"
            plan = fxprune.plan_by_ratio(graph, RATIO, heads=True)
            res["plan_keys"] = len(plan)
        finally:  # the export error a fallback hides is in these warnings
            res["warnings"] = sorted({" ".join(str(w.message).split())[:600] for w in caught
                                      if str(w.message).startswith("fxprune")})
    res["stage"] = "prune"
    small, said = _prune(model, plan, inputs)
    res["warnings"] += said
    res["result"] = "own class" if type(small) is type(model) else type(small).__name__
    res["params_after"] = sum(p.numel() for p in small.parameters())
    res["stage"] = "verify"
    res["verify_max_diff"] = float(fxprune.verify(model, small, plan, inputs).max_abs_diff)
    own = small if type(small) is type(model) else None
    if own is None:  # the same without head dims: what a config can usually say
        res["stage"] = "prune without head dims"
        b_plan = mlp_heads_plan(graph)
        b_small, b_said = _prune(model, b_plan, inputs)
        res["result_no_head_dims"] = "own class" if type(b_small) is type(model) else type(b_small).__name__
        res["warnings_no_head_dims"] = b_said
        res["params_after_no_head_dims"] = sum(p.numel() for p in b_small.parameters())
        res["stage"] = "verify without head dims"
        res["verify_no_head_dims"] = float(fxprune.verify(model, b_small, b_plan, inputs).max_abs_diff)
        own = b_small if type(b_small) is type(model) else None
    res["stage"] = "generate"  # on the pruned model of its own class (either plan)
    if spec.family in ("vit", "bert_model"):
        res["generate"] = "n/a (no LM head)"
    elif own is None:
        res["generate"] = "n/a (GraphModule)"
    else:
        try:
            ids = inputs.args[0][:1, :4]
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = own.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            grew = out.shape[-1] > (0 if spec.family == "t5" else 4)
            res["generate"] = "ok" if grew else f"shape {out.shape}"
        except Exception as e:  # noqa: BLE001 - recorded
            res["generate"] = "error: " + _err(e)
    res["stage"] = "config"
    if own is not None:
        res["config_mismatches"] = fxprune.hf.config_mismatches(own)[:5]
    res["stage"] = "done"


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout("timed out")


def worker(names: list[str], jsonl: str, timeout: int) -> None:
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging
    logging.disable(logging.WARNING)  # transformers' kernel fallbacks: one line per family, not data
    from zoo_models import get_spec
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        with open(jsonl, "a") as f:
            f.write(json.dumps({"start": name}) + "\n")
        res: dict = {"model": name}
        t0 = time.perf_counter()
        signal.alarm(timeout)
        try:
            check_family(get_spec(name), res)
        except BaseException as e:  # noqa: BLE001 - recorded, the sweep goes on
            res["error"] = _err(e)
            res["trace"] = traceback.format_exc()[-1500:]
        finally:
            signal.alarm(0)
        res["total_s"] = round(time.perf_counter() - t0, 2)
        with open(jsonl, "a") as f:
            f.write(json.dumps(res, default=str) + "\n")


def _read(jsonl: str) -> tuple[dict, str | None]:
    done, current = {}, None
    if os.path.exists(jsonl):
        for line in open(jsonl):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "start" in r:
                current = r["start"]
            else:
                done[r["model"]] = r
                current = None
    return done, current


def sweep(names: list[str], jsonl: str, timeout: int) -> dict:
    """Run ``names`` in worker processes, restarting after a crash or hang."""
    todo = list(names)
    while True:
        done, _ = _read(jsonl)
        todo = [n for n in todo if n not in done]
        if not todo:
            return done
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", ",".join(todo), "--jsonl", jsonl,
               "--timeout", str(timeout)]
        proc = subprocess.Popen(cmd, start_new_session=True)
        last, since = None, time.time()
        while proc.poll() is None:
            time.sleep(1)
            done, cur = _read(jsonl)
            if cur != last:
                last, since = cur, time.time()
                print(f"[{len(done)}/{len(names)}] {cur}", file=sys.stderr, flush=True)
            elif cur is not None and time.time() - since > timeout + 60:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        done, cur = _read(jsonl)
        if cur is not None and cur not in done:  # the worker died inside this family
            with open(jsonl, "a") as f:
                f.write(json.dumps({"model": cur, "error": f"worker died or hung (exit {proc.returncode})",
                                    "stage": "?"}) + "\n")


def _short(n) -> str:
    return "–" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k")


def _verified(r: dict) -> bool:
    return r.get("verify_max_diff") is not None


def _mlp_ok(r: dict) -> bool:
    return bool(r.get("mlp_layers")) and r.get("mlp_prunable") == r.get("mlp_layers")


def _own(r: dict) -> bool:
    return "own class" in (r.get("result"), r.get("result_no_head_dims"))


def counts(rows: list[dict]) -> dict:
    """Headline counts of a sweep."""
    return {"families": len(rows), "exported": sum(r.get("frontend") is not None for r in rows),
            "pruned": sum("result" in r for r in rows),
            "own_class": sum(r.get("result") == "own class" for r in rows),
            "own_class_either_plan": sum(_own(r) for r in rows),
            "verified_no_head_dims": sum(r.get("verify_no_head_dims") is not None for r in rows),
            "verified": sum(_verified(r) for r in rows),
            "mlp_every_layer": sum(_mlp_ok(r) for r in rows),
            "whole_heads": sum(bool(r.get("head_parts")) for r in rows),
            "hidden": sum(r.get("hidden") == "yes" for r in rows),
            "generate_ok": sum(r.get("generate") == "ok" for r in rows),
            "config_describes": sum(r.get("config_mismatches") == [] for r in rows)}


def render(doc: dict) -> str:
    rows = sorted(doc["rows"].values(), key=lambda r: r["model"])
    c = counts(rows)
    out = ["# Hugging Face families through fxprune (`benchmarks/hf_sweep.py`)", "",
           f"Sweep of {doc['date']} (fxprune commit {doc['commit']}, torch {doc['torch']}, transformers "
           f"{doc['transformers']}, load before: {doc['load']}; one worker process, OMP_NUM_THREADS=1, "
           f"{doc['timeout']} s per family): `{doc['command']}`. Every family of the `hf` list in "
           "`benchmarks/zoo_hf.py` (tiny random configs), analysed by `fxprune.analyze`, pruned by "
           f"`plan_by_ratio(graph, {RATIO}, heads=True)` and checked by `fxprune.verify`.", "",
           f"- families: {c['families']}; exported and analysed: {c['exported']}; pruned: {c['pruned']}",
           f"- pruned model of its own class: {c['own_class']}; verified: {c['verified']}; own class when "
           f"head dims are left alone (`mlp_heads_plan`: MLP, whole heads, hidden size): "
           f"{c['own_class_either_plan']} (that plan verified: {c['verified_no_head_dims']} of the families "
           "it ran on, those whose first result was a GraphModule)",
           f"- MLP width prunable in every layer: {c['mlp_every_layer']}; whole heads: {c['whole_heads']}; "
           f"hidden size: {c['hidden']}",
           f"- greedy `generate` on the pruned model: {c['generate_ok']}; `config_mismatches` empty: "
           f"{c['config_describes']}", "",
           "| family | class | frontend | export s | groups (unpinned) | MLP layers prunable | attentions "
           "with whole heads | hidden | result | params before → after | verify max\\|Δ\\| | generate | "
           "config.json describes it |", "|---" * 13 + "|"]
    for r in rows:
        fam = r["model"][3:]
        if "error" in r and "frontend" not in r:
            out.append(f"| {fam} | {r.get('class', '–')} | **failed at {r.get('stage')}** |" + " |" * 10)
            continue
        vd = r.get("verify_max_diff")
        cfg = r.get("config_mismatches")
        out.append("| " + " | ".join([
            fam, r.get("class", "–"), r.get("frontend", "–"), str(r.get("export_s", "–")),
            f"{r.get('groups', '–')} ({r.get('unpinned', '–')})",
            f"{r.get('mlp_prunable', 0)}/{r.get('mlp_layers', 0)}" if r.get("mlp_layers") else "no MLP found",
            str(r.get("head_parts", "–")), "yes" if r.get("hidden") == "yes" else "no",
            r.get("result", f"**failed at {r.get('stage')}**") + (
                f" (without head dims: {r['result_no_head_dims']})" if "result_no_head_dims" in r else ""),
            f"{_short(r.get('params_before'))} → {_short(r.get('params_after'))}",
            f"{vd:.1e}" if vd is not None else ("**failed**" if "result" in r else "–"),
            (r.get("generate") or "–")[:40],
            "–" if cfg is None else ("yes" if not cfg else "no")]) + " |")
    out += ["", "## Why: every family that failed, came back as a GraphModule, or left an MLP pinned", ""]
    for r in rows:
        notes = []
        if "error" in r:
            notes.append(f"failed at `{r.get('stage')}`: {r['error']}")
        if "export_error" in r:
            notes.append(f"with `frontend=\"export\"`: {r['export_error']}")
        if r.get("result") not in (None, "own class"):
            notes += [w for w in r.get("warnings", []) if "GraphModule" in w][:1]
        if r.get("result_no_head_dims") not in (None, "own class"):
            notes += ["without head dims: " + w for w in r.get("warnings_no_head_dims", [])
                      if "GraphModule" in w][:1]
        if r.get("mlp_layers") and not _mlp_ok(r):
            notes.append(f"MLP pinned in {r['mlp_layers'] - r['mlp_prunable']} of {r['mlp_layers']} layers: "
                         + "; ".join(r.get("mlp_pins", [])[:2]))
        notes += [w for w in r.get("warnings", []) if "no rule" in w][:1]
        if r.get("config_mismatches"):
            notes.append("config mismatches: " + "; ".join(r["config_mismatches"][:2]))
        if notes:
            out.append(f"- **{r['model'][3:]}**: " + " — ".join(n.replace("|", "\\|") for n in notes))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated families (llama,gpt2) or hf/<family>; default: all")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--timeout", type=int, default=120, help="seconds per family")
    ap.add_argument("--resume", action="store_true", help="keep the families already in --out's .jsonl")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from --out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker.split(","), a.jsonl, a.timeout)
        return 0
    md = os.path.splitext(a.out)[0] + ".md"
    if a.render:
        with open(a.out) as f:
            doc = json.load(f)
    else:
        from zoo_models import specs
        names = [s.name for s in specs("hf")]
        if a.models:
            want = {m if m.startswith("hf/") else "hf/" + m for m in a.models.split(",")}
            names = [n for n in names if n in want]
        jsonl = os.path.splitext(a.out)[0] + ".jsonl"
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        if not a.resume and os.path.exists(jsonl):
            os.remove(jsonl)
        load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
        t0 = time.time()
        rows = sweep(names, jsonl, a.timeout)
        import torch
        import transformers
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": commit, "torch": torch.__version__, "transformers": transformers.__version__,
               "load": " ".join(load), "timeout": a.timeout, "wall_s": round(time.time() - t0),
               "command": "python benchmarks/hf_sweep.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "rows": {n: rows[n] for n in names if n in rows}}
        doc["counts"] = counts(list(doc["rows"].values()))
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    with open(md, "w") as f:
        f.write(render(doc))
    print(json.dumps(doc["counts"]), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
