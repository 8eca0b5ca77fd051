"""The repeated-layer export (``fxprune.frontend.repeat``) against the whole export on each ``hf`` zoo family.

    python benchmarks/repeat_sweep.py [--layers 5] [--only llama,qwen2] [--out results/repeat_sweep_s21.json]

Each family is built tiny (``benchmarks/zoo_hf.py``) with ``--layers`` layers (``num_hidden_layers`` and the
other layer counts its config has) on the meta device, and traced twice with ``frontend="export"``: once with
the fast path (``repeat.ENABLED``), once without. Per family: ``repeated`` (the fast path was taken and the
graphs are equal node for node: names, targets, arguments, shapes, module stacks, parameters),
``whole`` (the fast path declined; its log line is kept), ``MISMATCH`` (taken but the graphs differ: a bug),
or the error both paths raised. Prints a table and writes JSON with the load (``uptime``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _sig(gm) -> tuple:
    from fxprune.frontend.repeat import _val_sig
    nodes = [(n.op, n.name, str(n.target), str(n.args), str(n.kwargs), _val_sig(n.meta.get("val")),
              str(n.meta.get("nn_module_stack"))) for n in gm.graph.nodes]
    return nodes, [(k, tuple(p.shape)) for k, p in gm.named_parameters()], \
        [(k, tuple(b.shape)) for k, b in gm.named_buffers()], gm.code


def one(spec, layers: int) -> dict:
    import torch

    import fxprune
    import zoo_hf
    from fxprune.frontend import repeat

    tiny = dict(zoo_hf.HF_TINY)
    for k in ("num_hidden_layers", "decoder_layers", "encoder_layers", "max_window_layers"):
        zoo_hf.HF_TINY[k] = layers
    said = _Said()
    log = logging.getLogger("fxprune.frontend.repeat")
    log.addHandler(said)
    log.setLevel(logging.INFO)
    try:
        out = {}
        for fast in (True, False):
            repeat.ENABLED = fast
            with torch.device("meta"):
                model, inputs = zoo_hf.build_hf(spec)
            inputs = fxprune.Inputs(*[a.to("meta") if isinstance(a, torch.Tensor) else a
                                      for a in inputs.args],
                                    **{k: v.to("meta") if isinstance(v, torch.Tensor) else v
                                       for k, v in inputs.kwargs.items()})
            t0 = time.perf_counter()
            try:
                out[fast] = (_sig(fxprune.trace(model, inputs, frontend="export")), time.perf_counter() - t0)
            except Exception as e:  # recorded per family: the sweep goes on
                out[fast] = (f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", 0.0)
    finally:
        zoo_hf.HF_TINY.clear()
        zoo_hf.HF_TINY.update(tiny)
        repeat.ENABLED = True
        log.removeHandler(said)
    taken = any("repeated the last" in s for s in said.lines)
    (fs, ft), (ws, wt) = out[True], out[False]
    if isinstance(fs, str) or isinstance(ws, str):
        status = "error" if fs == ws or not taken else "MISMATCH"
        return {"family": spec.family, "status": status, "error": fs if isinstance(fs, str) else ws,
                "log": said.lines}
    status = ("repeated" if fs == ws else "MISMATCH") if taken else ("whole" if fs == ws else "MISMATCH")
    return {"family": spec.family, "status": status, "fast_s": round(ft, 2), "whole_s": round(wt, 2),
            "nodes": len(fs[0]), "log": said.lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated families")
    ap.add_argument("--out", default=str(HERE / "results" / "repeat_sweep_s21.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import zoo_hf
    specs = zoo_hf.hf_specs()
    if args.only:
        specs = [s for s in specs if s.family in args.only.split(",")]
    rows = []
    for spec in specs:
        row = one(spec, args.layers)
        rows.append(row)
        _write(args, rows)  # as it goes: a sweep cut short keeps its rows
        why = row["log"][-1] if row["status"] != "repeated" and row["log"] else row.get("error", "")
        print(f"{spec.family:28s} {row['status']:9s} {row.get('fast_s', ''):>6} {row.get('whole_s', ''):>6}  "
              f"{why[:110]}", flush=True)
    print(_write(args, rows))
    print(f"-> {args.out}")


def _write(args: argparse.Namespace, rows: list) -> dict:
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    res = {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "layers": args.layers, "counts": counts, "rows": rows, "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return counts


if __name__ == "__main__":
    main()
