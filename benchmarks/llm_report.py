"""Markdown table, plot and files of ``benchmarks/llm.py``."""
from __future__ import annotations

import json
import os

TP_VARIANT = {(False, None): "as shipped", (True, None): "RoPE cat rewritten", (True, "eager"):
              "RoPE cat rewritten, eager attention"}


def _tp_variant(r: dict) -> str:
    return TP_VARIANT.get((bool(r.get("patch_rope")), r.get("attn")), "?")


def _ppl(r: dict | None, dense: float) -> str:
    if r is None:
        return "—"
    if "ppl" not in r:
        return "error"
    stale = (" (config stale)" if "config_stale" in r else
             " (per-layer widths)" if r.get("per_layer_widths") else "")
    return f"{r['ppl']:.2f} ({r['ppl'] / dense:.2f}×){stale}"


def best_tp(doc: dict, budget: str) -> dict | None:
    """Torch-Pruning's lowest perplexity on ``budget`` among runs that produced the budget's structure."""
    rows = [r for r in doc["smollm"]["tp"] if r["budget"] == budget and "ppl" in r and "note" not in r]
    return min(rows, key=lambda r: r["ppl"]) if rows else None


def best_fx(doc: dict, budget: str) -> dict | None:
    rows = [r for r in doc["smollm"]["rows"]
            if r["budget"] == budget and "ppl" in r and "config_stale" not in r]
    return min(rows, key=lambda r: r["ppl"]) if rows else None


def smollm_markdown(doc: dict) -> list[str]:
    s = doc["smollm"]
    dense = s["dense"]["ppl"]
    d = s["data"]
    lines = [f"### SmolLM2-135M-Instruct (Q4_1 GGUF, float32) — perplexity on {d['eval'][0]} × "
             f"{d['eval'][1]} tokens of {d['text']}",
             "",
             f"Dense: perplexity **{dense:.2f}**, {s['dense']['params']:,} parameters. Calibration: "
             f"{d['calib'][0]} × {d['calib'][1]} tokens from the start of the text (evaluation windows at "
             "its end). No fine-tuning. '+comp' = bias compensation (mean contribution of the removed "
             "channels folded into the next layer's bias).", ""]
    budgets = [b for b in s.get("budgets", {}) if any(r["budget"] == b for r in s["rows"] + s["tp"])]
    lines += ["| budget | MLP ratio / heads | criterion | params removed | fxprune | fxprune +comp |",
              "|---|---|---|---:|---:|---:|"]
    crits = list(dict.fromkeys(r["criterion"] for r in s["rows"]))
    for b in budgets:
        w = s["budgets"][b]
        heads = f" + {w['head_ratio'] * 9:.0f}/9 q heads" if w["head_ratio"] else ""
        shape = f"{w['mlp_ratio']:.1%}{heads}"
        for c in crits:
            mine = [r for r in s["rows"] if r["budget"] == b and r["criterion"] == c]
            plain = next((r for r in mine if not r["compensate"]), None)
            comp = next((r for r in mine if r["compensate"]), None)
            share = next((f"{r['removed_share']:.1%}" for r in mine if "removed_share" in r), "—")
            lines.append(f"| {b} | {shape} | {c} | {share} | {_ppl(plain, dense)} | {_ppl(comp, dense)} |")
    if s["tp"]:
        lines += ["", "Torch-Pruning 1.6.1 (its LLM recipe, `benchmarks/llm_tp.py`):", "",
                  "| budget | criterion | variant | params removed | perplexity | "
                  "time s (build / calib / prune) |",
                  "|---|---|---|---:|---:|---|"]
        for r in s["tp"]:
            if "ppl" in r:
                res = _ppl(r, dense) + (f" — {r['note']}" if "note" in r else "")
                t = f"{r['build_s']:.1f} / {r['calib_s']:.1f} / {r['prune_s']:.1f}"
                share = f"{r['removed_share']:.1%}"
            else:
                res = "**fails**: " + r["error"].splitlines()[0][:160]
                t, share = f"{r['wall_s']:.0f} (wall)", "—"
            lines.append(f"| {r['budget']} | {r['criterion']} | {_tp_variant(r)} | {share} | {res} | {t} |")
    lines += ["", "Targets:", ""]
    fx20 = best_fx(doc, "mlp20")
    if fx20:
        ok = fx20["ppl"] <= 1.5 * dense
        lines.append(f"- mlp20, perplexity ≤ 1.5× dense ({1.5 * dense:.2f}): best fxprune {fx20['ppl']:.2f} "
                     f"({fx20['criterion']}{' +comp' if fx20['compensate'] else ''}) — "
                     f"**{'met' if ok else 'not met'}**")
    for b in budgets:
        fx, tp = best_fx(doc, b), best_tp(doc, b)
        if fx is None:
            lines.append(f"- {b}: no fxprune result")
            continue
        if tp is None:
            lines.append(f"- {b}: Torch-Pruning has no result with this structure (see its rows); best "
                         f"fxprune {fx['ppl']:.2f}")
            continue
        ok = fx["ppl"] < tp["ppl"]
        lines.append(f"- {b}: best fxprune {fx['ppl']:.2f} ({fx['criterion']}"
                     f"{' +comp' if fx['compensate'] else ''}) vs best Torch-Pruning {tp['ppl']:.2f} "
                     f"({tp['criterion']}) — **{'below' if ok else 'NOT below'}**")
    errs = [r for r in s["rows"] if "error" in r]
    for r in errs:
        kind = "comp" if r["compensate"] else "plain"
        lines.append(f"- fxprune error {r['criterion']}/{r['budget']}/{kind}: "
                     f"{r['error'].splitlines()[0][:200]}")
    return lines


def minilm_markdown(doc: dict) -> list[str]:
    m = doc["minilm"]
    dense = m["dense"]["pearson"]
    lines = ["", f"### all-MiniLM-L6-v2 — Lee document similarity (Pearson vs. human ratings, "
                 f"{m['data']['n_docs']} documents, {m['data']['n_pairs']} pairs)", "",
             f"Dense: Pearson **{dense:.3f}**, {m['dense']['params']:,} parameters. Pruned: FFN "
             f"{m['ffn_ratio']:.0%} and {m['heads_removed']} of 12 heads per layer; target ≥ 0.95× dense "
             f"({0.95 * dense:.3f}).", "",
             "| criterion | params removed | Pearson | ×dense | +comp Pearson | +comp ×dense |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in dict.fromkeys(r["criterion"] for r in m["rows"]):
        cells = []
        share = "—"
        for comp in (False, True):
            r = next((r for r in m["rows"] if r["criterion"] == c and r["compensate"] == comp), None)
            if r is None:
                cells += ["—", "—"]
            elif "pearson" not in r:
                cells += ["error", "—"]
            else:
                share = f"{r['removed_share']:.1%}"
                cells += [f"{r['pearson']:.3f}", f"{r['pearson'] / dense:.3f}"]
        lines.append(f"| {c} | {share} | " + " | ".join(cells) + " |")
    for r in m["rows"]:
        if "error" in r:
            lines.append(f"\n- error {r['criterion']}{' +comp' if r['compensate'] else ''}: "
                         f"{r['error'].splitlines()[0][:200]}")
    return lines


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = [f"LLM pruning quality (benchmarks/llm.py), {meta['date']}, commit {meta['commit']}, "
             f"{meta['cpu_count']} cores, {meta['threads']} thread(s), wall {meta.get('wall_s', 0):.0f} s.",
             f"Load at start: `{meta['uptime_start']}`; at end: `{meta.get('uptime_end', '?')}`.", ""]
    for r in meta.get("runs", []):
        taken = f" ({r['budgets_taken']} rows)" if r.get("budgets_taken", "all") != "all" else ""
        lines += [f"- merged from `{r['path']}`{taken}: {r['date']}, commit {r['commit']}, fxprune "
                  f"`{r.get('fxprune_file', '?')}`, wall {r.get('wall_s', 0):.0f} s, load `{r['uptime_start']}`"]
    if meta.get("runs"):
        lines.append("")
    if "tp_from" in meta:
        t = meta["tp_from"]
        lines += [f"Torch-Pruning rows from an earlier run of the same script on the same windows: "
                  f"`{t['path']}` ({t['date']}, commit {t['commit']}, load at start "
                  f"`{t['uptime_start']}`).", ""]
    if "smollm" in doc:
        lines += smollm_markdown(doc)
    if "minilm" in doc:
        lines += minilm_markdown(doc)
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["smollm"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cmap = plt.get_cmap("tab10")
    crits = list(dict.fromkeys(r["criterion"] for r in s["rows"]))
    for i, c in enumerate(crits):
        for comp, style in ((False, "-o"), (True, ":^")):
            rows = [r for r in s["rows"] if r["criterion"] == c and r["compensate"] == comp and "ppl" in r]
            mlp = sorted((r["removed_share"], r["ppl"]) for r in rows if r["budget"].startswith("mlp"))
            if mlp:
                xs, ys = zip(*mlp)
                ax.plot([100 * x for x in xs], ys, style, color=cmap(i), ms=4,
                        label=f"fxprune {c}{' +comp' if comp else ''}")
            for r in rows:
                if r["budget"].startswith("all"):
                    ax.plot(100 * r["removed_share"], r["ppl"], "P" if comp else "*", color=cmap(i), ms=10)
    for j, c in enumerate(dict.fromkeys(r["criterion"] for r in s["tp"])):
        rows = sorted((r["removed_share"], r["ppl"]) for r in s["tp"]
                      if r["criterion"] == c and "ppl" in r and "note" not in r)
        if rows:
            xs, ys = zip(*rows)
            ax.plot([100 * x for x in xs], ys, "--s", color=cmap(len(crits) + j), ms=4,
                    label=f"Torch-Pruning {c}")
    ax.axhline(s["dense"]["ppl"], color="k", lw=0.8, label=f"dense ({s['dense']['ppl']:.1f})")
    ax.axhline(1.5 * s["dense"]["ppl"], color="k", lw=0.8, ls=":", label="1.5× dense")
    ax.set_yscale("log")
    ax.set_xlabel("parameters removed (%)   [lines: MLP width only; stars: heads + MLP]")
    ax.set_ylabel("perplexity (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("SmolLM2-135M on held-out text, no fine-tuning: fxprune vs. Torch-Pruning 1.6.1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(doc: dict, out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)
    md = markdown(doc)
    stem = os.path.splitext(out)[0]
    with open(stem + ".md", "w") as f:
        f.write(md)
    if "smollm" in doc and doc["smollm"].get("rows"):
        try:
            plot(doc, stem + ".png")
        except Exception as e:  # the plot is a convenience; the JSON and table are the record
            print(f"[plot] failed: {type(e).__name__}: {e}", flush=True)
    return md
