"""all-MiniLM-L6-v2 part of ``benchmarks/llm.py``: FFN 50 % and 4 of 12 heads per layer removed; Lee
document-similarity Pearson."""
from __future__ import annotations

import time
import traceback
import warnings

import torch

import llm_data

FFN_RATIO, HEADS_REMOVED, MAX_LEN, CALIB_LEN = 0.5, 4, 256, 128


def _batches(tok, docs, max_len: int, bs: int = 10) -> list[dict]:
    return [dict(tok(docs[i:i + bs], padding=True, truncation=True, max_length=max_len, return_tensors="pt"))
            for i in range(0, len(docs), bs)]


def embedding_loss(model, batch) -> torch.Tensor:
    """Taylor's loss for an embedding model without a task head: the mean squared last hidden state."""
    return model(**batch).last_hidden_state.pow(2).mean()


def run(args, make_importance, calibrate, log) -> dict:
    import fxprune
    t0 = time.time()
    model, tok = llm_data.load_minilm()
    docs = llm_data.lee_documents()
    human = llm_data.lee_human_similarities()
    evals = _batches(tok, docs, MAX_LEN)
    calib = _batches(tok, llm_data.lee_documents("lee_background.cor")[:args.minilm_calib], CALIB_LEN, bs=8)
    ex = {k: v[:1, :16] for k, v in calib[0].items()}
    inputs = fxprune.Inputs(**ex)
    params = sum(p.numel() for p in model.parameters())
    out = {"dense": {"params": params, "pearson": llm_data.lee_pearson(model, evals, human),
                     "load_s": time.time() - t0},
           "data": {"n_docs": len(docs), "n_pairs": int(human.numel()), "max_len": MAX_LEN,
                    "calib_docs": args.minilm_calib, "calib_len": CALIB_LEN},
           "ffn_ratio": FFN_RATIO, "heads_removed": HEADS_REMOVED, "rows": []}
    log(f"[minilm] dense Pearson {out['dense']['pearson']:.4f}, {params:,} params")
    ffn = [L.intermediate.dense for L in model.encoder.layer]
    means = None
    if args.compensation and hasattr(fxprune, "calibrate"):
        means = fxprune.calibrate(model, calib, "activation", progress=False).input_means()
    for crit in args.criteria:
        try:
            imp, how = calibrate(model, make_importance(crit), crit, calib, loss_fn=embedding_loss)
        except Exception as e:
            out["rows"].append({"criterion": crit, "compensate": False, "error": f"{type(e).__name__}: {e}"})
            log(f"[minilm/{crit}] ERROR {type(e).__name__}: {e}")
            continue
        for comp in ([False, True] if args.compensation else [False]):
            row = {"criterion": crit, "compensate": comp, "calibration": how}
            try:
                if comp and means is None:
                    raise RuntimeError("no bias compensation: no fxprune.calibrate / input_means here")
                t1 = time.time()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pr = fxprune.Pruner(model, inputs, importance=imp, pruning_ratio=0.0,
                                        pruning_ratio_dict={tuple(ffn): FFN_RATIO}, prune_num_heads=True,
                                        head_pruning_ratio=HEADS_REMOVED / 12, prune_head_dims=False)
                    small = pr.step()
                    if comp:
                        small = fxprune.prune(model, pr.plan, inputs, compensate=means)
                row["prune_s"] = time.time() - t1
                row["warnings"] = sorted({str(w.message)[:300] for w in caught})
                row["params"] = sum(p.numel() for p in small.parameters())
                row["removed_share"] = 1 - row["params"] / params
                att = small.encoder.layer[0].attention.self
                row["heads"] = [L.attention.self.query.out_features // att.attention_head_size
                                for L in small.encoder.layer]
                row["ffn"] = [L.intermediate.dense.out_features for L in small.encoder.layer]
                row["config"] = {k: getattr(small.config, k)
                                 for k in ("num_attention_heads", "intermediate_size")}
                row["pearson"] = llm_data.lee_pearson(small, evals, human)
                row["ratio"] = row["pearson"] / out["dense"]["pearson"]
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc()[-2000:]
            out["rows"].append(row)
            log(f"[minilm/{crit}/{'comp' if comp else 'plain'}] " + (
                f"Pearson {row['pearson']:.4f} ({row['ratio']:.3f}x), removed {row['removed_share']:.1%}, "
                f"heads {row['heads'][0]}, ffn {row['ffn'][0]}" if "pearson" in row
                else f"ERROR {row['error']}"))
    return out
