#!/usr/bin/env python
"""Accuracy after structural pruning: fxprune vs. Torch-Pruning on Fashion-MNIST (real data, offline).

1. Data: Debian's ``dataset-fashion-mnist`` (idx ``.gz`` files, located with ``dpkg -L``; installed with
   ``apt-get install -y dataset-fashion-mnist`` -- through ``sudo -n`` when not root -- if missing).
   Read by a small numpy idx reader, normalised with the training-set mean/std.
2. Model: a CIFAR-style ResNet-8 (stem conv 16, one BasicBlock per stage, widths 16/32/64, strides 1/2/2,
   global average pool, linear classifier), channels_last, trained for ``--epochs`` (default 15) with SGD
   (momentum 0.9, nesterov, weight decay 5e-4, lr 0.1, cosine), random crop (pad 2) + horizontal flip.
   The checkpoint is cached under ``benchmarks/results/`` (gitignored) keyed by the training configuration.
3. For every criterion and library: a deepcopy of the trained model is pruned to at most ``--target-macs``
   (default 0.5) of its MACs, evaluated right away (no fine-tune), then fine-tuned for ``--finetune-epochs``
   (default 3) with the same optimizer/schedule/augmentation/data order for both libraries
   (SGD lr 0.01, cosine) and evaluated again.

   fxprune:       ``fxprune.Pruner(model, x, importance=imp, target_macs=0.5, ignored_layers=[model.fc],
                  global_pruning=False).step()``
   Torch-Pruning: ``tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=r, ignored_layers=[model.fc],
                  global_pruning=False).step()``; TP has no MAC target, so ``r`` is the smallest ratio whose
                  result has MACs <= target (bisection, once, with ``MagnitudeImportance``: with local pruning the
                  per-layer widths depend only on ``r``, not on the criterion).

   MACs and params of both libraries' models are counted with the same counter, ``fxprune.count``.

   Data-dependent criteria get identical data for both libraries (the model is in eval mode while collecting):
   taylor -- the ``--taylor-batches`` x 128 first training images: fxprune one backward per image, each added with
   ``imp.accumulate_grad(model)`` (mean of the squared per-sample ``sum W * dW``); Torch-Pruning, whose criterion
   reads ``.grad``, mean-loss gradients of the batches of 128 summed (``loss.backward()`` each);
   hessian -- ``--hessian-samples`` single-sample backward passes, ``imp.accumulate_grad(model)`` after each
   (``model.zero_grad()`` before each); activation -- one forward of ``--calib-samples`` training images inside
   ``imp.compute_importance(model)``.  Random: fxprune ``RandomImportance(seed)``, TP ``torch.manual_seed(seed)``.

Usage::

    python benchmarks/accuracy.py                                    # full run (15 + 18x3 epochs)
    python benchmarks/accuracy.py --subset 2000 --epochs 1 --finetune-epochs 1   # smoke run
    python benchmarks/accuracy.py --criteria l2,taylor --libraries fxprune

Writes ``--out`` (default ``benchmarks/results/accuracy.json``, rewritten after every row) and next to it
``accuracy.md`` (Markdown table) and ``accuracy.png`` (accuracy vs. MACs).  The JSON also goes to stdout at
the end; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gzip
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import traceback
import warnings

import numpy as np

# Under CPU contention (a shared machine), OpenMP's default spin-waiting makes 2 threads several times slower
# than 1 (measured 1.3-1.5 s vs 0.2 s per ResNet-8 step at load 7 on 2 cores); passive waiting avoids that.
# Must be set before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DEFAULT_OUT = os.path.join(RESULTS, "accuracy.json")
DPKG_NAME = "dataset-fashion-mnist"
CRITERIA = ["l1", "l2", "bn", "lamp", "fpgm", "taylor", "hessian", "random", "activation"]
LIBRARIES = ["fxprune", "torch-pruning"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- data

def _dpkg_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return []
    return out.stdout.split() if out.returncode == 0 else []


def _install(package: str) -> str:
    """Try ``apt-get install -y package`` (directly as root, else via ``sudo -n``); return the log."""
    cmd = ["apt-get", "install", "-y", package]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "not root and no sudo available"
        cmd = ["sudo", "-n"] + cmd
    log(f"[data] {package} not installed; running: {' '.join(cmd)}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    return f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


def find_data_dir(data_dir: str | None, install: bool = True) -> str:
    """Directory holding the four Fashion-MNIST idx .gz files; installs the Debian package if needed."""
    if data_dir:
        missing = [f for f in FILES.values() if not os.path.exists(os.path.join(data_dir, f))]
        if missing:
            sys.exit(f"error: --data-dir {data_dir} lacks {missing}")
        return data_dir

    def locate():
        hits = {os.path.basename(p): os.path.dirname(p) for p in _dpkg_files(DPKG_NAME)
                if os.path.basename(p) in FILES.values()}
        return hits[FILES["train_images"]] if len(hits) == len(FILES) else None

    where = locate()
    if where is None and install:
        detail = _install(DPKG_NAME)
        where = locate()
        if where is None:
            sys.exit(
                f"error: Fashion-MNIST is not available and could not be installed.\n"
                f"The benchmark needs Debian's '{DPKG_NAME}' package (idx .gz files). Install it with\n"
                f"    sudo apt-get install -y {DPKG_NAME}\n"
                f"or pass --data-dir DIR holding {sorted(FILES.values())}.\n"
                f"apt-get said: {detail.strip()}")
    elif where is None:
        sys.exit(f"error: '{DPKG_NAME}' is not installed (apt-get install -y {DPKG_NAME}), "
                 f"or pass --data-dir")
    return where


def read_idx(path: str) -> np.ndarray:
    """Minimal idx reader: big-endian header (0, 0, dtype code, ndim), ndim uint32 dims, raw data."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in dtypes:
        raise ValueError(f"{path}: not an idx file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[code], offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_fashion_mnist(data_dir: str, subset: int | None = None):
    """Return (x_train, y_train, x_test, y_test, stats): float32 N x 1 x 28 x 28, normalised; int64 labels."""
    arr = {k: read_idx(os.path.join(data_dir, f)) for k, f in FILES.items()}
    xtr = arr["train_images"].astype(np.float32) / 255.0
    xte = arr["test_images"].astype(np.float32) / 255.0
    ytr = arr["train_labels"].astype(np.int64)
    yte = arr["test_labels"].astype(np.int64)
    mean, std = float(xtr.mean()), float(xtr.std())  # full training set, also with --subset
    if subset:
        xtr, ytr = xtr[:subset], ytr[:subset]
        n_test = min(len(xte), max(1000, subset // 2))
        xte, yte = xte[:n_test], yte[:n_test]
    xtr = torch.from_numpy((xtr - mean) / std).unsqueeze(1)
    xte = torch.from_numpy((xte - mean) / std).unsqueeze(1)
    return xtr, torch.from_numpy(ytr), xte, torch.from_numpy(yte), {"mean": mean, "std": std}


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding (in normalised space: the background value) + horizontal flip."""
    b, c, h, w = x.shape
    background = float(x.amin())  # pixel 0 after normalisation
    xp = F.pad(x, (pad, pad, pad, pad), value=background)
    sy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    sx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (sy[:, None] + torch.arange(h))[:, None, :, None]        # b,1,h,1
    cols = (sx[:, None] + torch.arange(w))[:, None, None, :]        # b,1,1,w
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    out = xp[bi, ci, rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


# -------------------------------------------------------------------------------------------------- model

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8: conv3x3(16) + 3 stages x 1 BasicBlock (16/32/64) + GAP + fc."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ training

@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(cl(x[i:i + bs])).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int,
          bs: int = 128, wd: float = 5e-4, aug: bool = True, desc: str = "train",
          eval_fn=None) -> dict:
    """SGD (momentum 0.9, nesterov) with a per-step cosine schedule; a fixed seed fixes order + augmentation."""
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    steps_per_epoch = math.ceil(len(x) / bs)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    history = []
    t_start = time.perf_counter()
    for ep in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=gen)
        loss_sum, n_seen, correct = 0.0, 0, 0
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            xb, yb = x[idx], y[idx]
            if aug:
                xb = augment(xb, gen)
            out = model(cl(xb))
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            n_seen += len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        rec = {"epoch": ep + 1, "loss": loss_sum / n_seen, "train_acc": correct / n_seen,
               "epoch_s": time.perf_counter() - t0}
        if eval_fn is not None:
            rec["test_acc"] = eval_fn(model)
        history.append(rec)
        log(f"[{desc}] epoch {ep + 1}/{epochs} loss {rec['loss']:.4f} train {rec['train_acc']:.4f}"
            + (f" test {rec['test_acc']:.4f}" if "test_acc" in rec else "") + f" ({rec['epoch_s']:.1f} s)")
    return {"history": history, "train_s": time.perf_counter() - t_start}


# ---------------------------------------------------------------------------------- importance data

def taylor_grads(model, xtr, ytr, n_batches: int, bs: int = 128, imp=None):
    """Taylor's data: the first ``n_batches * bs`` training images. With a criterion that accumulates samples
    (fxprune's ``accumulate_grad``): one backward per image, added to ``imp``; otherwise (Torch-Pruning reads
    ``.grad``) mean-loss gradients of the ``n_batches`` batches summed into ``p.grad``."""
    model.eval()
    model.zero_grad(set_to_none=True)
    if imp is not None and hasattr(imp, "accumulate_grad"):
        imp.zero_grad()
        for i in range(n_batches * bs):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(cl(xtr[i:i + 1])), ytr[i:i + 1]).backward()
            imp.accumulate_grad(model)
        model.zero_grad(set_to_none=True)
        return
    for i in range(n_batches):
        xb, yb = xtr[i * bs:(i + 1) * bs], ytr[i * bs:(i + 1) * bs]
        F.cross_entropy(model(cl(xb)), yb).backward()


def hessian_accumulate(model, imp, xtr, ytr, n_samples: int):
    """Single-sample backward passes; ``imp.accumulate_grad(model)`` after each (OBD's grad**2)."""
    model.eval()
    imp.zero_grad()
    for i in range(n_samples):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(cl(xtr[i:i + 1])), ytr[i:i + 1]).backward()
        imp.accumulate_grad(model)


# ------------------------------------------------------------------------------------------- libraries

def fx_importance(name: str, seed: int):
    import fxprune
    if name == "random":
        try:
            return fxprune.importance.RandomImportance(seed=seed)
        except (AttributeError, TypeError):
            pass
    return fxprune.importance.get_importance(name)


def tp_importance(name: str):
    import torch_pruning as tp
    ti = tp.importance
    return {
        "l1": lambda: ti.MagnitudeImportance(p=1),
        "l2": lambda: ti.MagnitudeImportance(p=2),
        "bn": lambda: ti.BNScaleImportance(),
        "lamp": lambda: ti.LAMPImportance(),
        "fpgm": lambda: ti.FPGMImportance(),
        "taylor": lambda: ti.TaylorImportance(),
        "hessian": lambda: ti.HessianImportance(),
        "random": lambda: ti.RandomImportance(),
        "activation": lambda: ti.ActivationImportance(),
    }[name]()


def fxprune_recal(model, batches):
    import fxprune
    return fxprune.recalibrate_bn(model, batches)


def macs_params(model, example_inputs):
    import fxprune
    return fxprune.count(model, example_inputs)


def tp_prune(model, example_inputs, imp, ratio: float):
    import torch_pruning as tp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=ratio,
                                      ignored_layers=[model.fc], global_pruning=False)
        pruner.step()
    return model


def tp_search_ratio(base_model, example_inputs, target_macs: int, iters: int = 14) -> dict:
    """Smallest pruning_ratio whose TP result has MACs <= target (bisection; local widths are criterion-free)."""
    import torch_pruning as tp
    t0 = time.perf_counter()
    cache = {}

    def macs_at(r):
        if r not in cache:
            m = tp_prune(copy.deepcopy(base_model), example_inputs, tp.importance.MagnitudeImportance(p=2), r)
            cache[r] = macs_params(m, example_inputs)[0]
        return cache[r]

    lo, hi = 0.0, 0.95
    if macs_at(hi) > target_macs:
        raise RuntimeError(f"Torch-Pruning cannot reach {target_macs} MACs (ratio 0.95 -> {macs_at(hi)})")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if macs_at(mid) <= target_macs:
            hi = mid
        else:
            lo = mid
    return {"ratio": hi, "macs": macs_at(hi), "search_s": time.perf_counter() - t0,
            "evaluations": len(cache)}


def run_row(lib: str, crit: str, base, data, args, example_inputs, base_stats, tp_ratio) -> dict:
    xtr, ytr, xte, yte = data
    row = {"library": lib, "criterion": crit, "macs_before": base_stats["macs"],
           "params_before": base_stats["params"], "acc_before": base_stats["acc"]}
    model = copy.deepcopy(base)
    model.eval()
    torch.manual_seed(args.seed)
    # importance object + its data (not timed as pruning; timed separately)
    t0 = time.perf_counter()
    if lib == "fxprune":
        import fxprune
        imp = fx_importance(crit, args.seed)
    else:
        imp = tp_importance(crit)
    if crit == "taylor":
        taylor_grads(model, xtr, ytr, args.taylor_batches, imp=imp)
    elif crit == "hessian":
        hessian_accumulate(model, imp, xtr, ytr, args.hessian_samples)
    elif crit == "activation":
        with torch.no_grad(), imp.compute_importance(model):
            model(cl(xtr[:args.calib_samples]))
    row["importance_data_s"] = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if lib == "fxprune":
        pruner = fxprune.Pruner(model, example_inputs, importance=imp, target_macs=args.target_macs,
                                ignored_layers=[model.fc], global_pruning=False)
        small = pruner.step()
        row["prune_s"] = time.perf_counter() - t0
        try:
            rep = fxprune.verify(model, small, pruner.plan, example_inputs)
            row["verify_max_abs_diff"] = float(getattr(rep, "max_abs_diff", float("nan")))
        except Exception as e:  # sanity only
            row["verify_error"] = f"{type(e).__name__}: {e}"[:500]
        try:
            row["plan"] = json.loads(pruner.plan.to_json())
        except Exception:
            pass
    else:
        small = tp_prune(model, example_inputs, imp, tp_ratio["ratio"])
        row["prune_s"] = time.perf_counter() - t0
        row["tp_pruning_ratio"] = tp_ratio["ratio"]
        row["tp_ratio_search_s"] = tp_ratio["search_s"]
    del model
    small = channels_last(small)
    small.zero_grad(set_to_none=True)
    macs, params = macs_params(small, example_inputs)
    row.update(macs_after=macs, params_after=params, macs_reduction=base_stats["macs"] / macs,
               macs_target_met=macs <= args.target_macs * base_stats["macs"])
    row["widths"] = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    row["acc_pruned"] = evaluate(small, xte, yte)
    if args.recal_images > 0:  # BatchNorm statistics re-estimated on unlabelled training images, no training
        rec = copy.deepcopy(small)
        fxprune_recal(rec, [cl(xtr[i:i + 250]) for i in range(0, min(args.recal_images, len(xtr)), 250)])
        row["acc_recalibrated"] = evaluate(rec, xte, yte)
        del rec
    log(f"[{lib}/{crit}] pruned in {row['prune_s']:.2f} s: MACs {base_stats['macs']} -> {macs} "
        f"({row['macs_reduction']:.2f}x), params {params}, acc {row['acc_pruned']:.4f} (no fine-tune), "
        f"{row.get('acc_recalibrated', float('nan')):.4f} (BN recalibrated)")
    ft = train(small, xtr, ytr, epochs=args.finetune_epochs, lr=args.ft_lr, seed=args.seed + 1,
               bs=args.batch_size, aug=not args.no_augment, desc=f"ft {lib}/{crit}")
    row["finetune_s"] = ft["train_s"]
    row["finetune_history"] = ft["history"]
    row["acc_finetuned"] = evaluate(small, xte, yte)
    log(f"[{lib}/{crit}] fine-tuned acc {row['acc_finetuned']:.4f} ({ft['train_s']:.0f} s)")
    return row


# --------------------------------------------------------------------------------------------- reports

def fmt_m(v):
    return f"{v / 1e6:.2f} M" if isinstance(v, (int, float)) else "—"


def fmt_k(v):
    return f"{v / 1e3:.1f} k" if isinstance(v, (int, float)) else "—"


def fmt_acc(v):
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "—"


def markdown(doc: dict) -> str:
    b = doc.get("base", {})
    c = doc["config"]
    lines = [
        f"Fashion-MNIST, ResNet-8 (16/32/64), base: {c['epochs']} epochs"
        + (f", subset {c['subset']}" if c.get("subset") else "")
        + f"; prune to <= {c['target_macs']:g} x MACs, fine-tune {c['finetune_epochs']} epoch(s); "
        f"MACs/params by fxprune.count; acc in % on {b.get('n_test', '?')} test images.",
        "",
        "| library | criterion | MACs before | MACs after | × fewer | params after | acc before | "
        "acc pruned | acc pruned + recal BN | acc fine-tuned | prune s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['library']} | {r['criterion']} | {fmt_m(r.get('macs_before'))} | error: "
                         f"{r['error'].splitlines()[0][:120]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['library']} | {r['criterion']} | {fmt_m(r['macs_before'])} | {fmt_m(r['macs_after'])} | "
            f"{r['macs_reduction']:.2f} | {fmt_k(r['params_after'])} | {fmt_acc(r['acc_before'])} | "
            f"{fmt_acc(r['acc_pruned'])} | {fmt_acc(r.get('acc_recalibrated'))} | {fmt_acc(r.get('acc_finetuned'))} | "
            f"{r['prune_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str):
    """Left: accuracy vs. MACs (filled: fine-tuned, hollow: right after pruning). Right: per-criterion bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in doc["rows"] if "error" not in r]
    libs = [l for l in LIBRARIES if any(r["library"] == l for r in rows)]
    colors = {"fxprune": "tab:blue", "torch-pruning": "tab:orange"}
    markers = {"fxprune": "o", "torch-pruning": "s"}
    fig, (ax, zx, bx) = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    base = doc.get("base", {})
    for lib in libs:
        rs = [r for r in rows if r["library"] == lib]
        xs = [r["macs_after"] / 1e6 for r in rs]
        ax.scatter(xs, [100 * r["acc_pruned"] for r in rs], marker=markers[lib], facecolors="none",
                   edgecolors=colors[lib], label=f"{lib}, no fine-tune")
        ft = [(x, 100 * r["acc_finetuned"], r["criterion"]) for x, r in zip(xs, rs)
              if isinstance(r.get("acc_finetuned"), (int, float))]
        ax.scatter([p[0] for p in ft], [p[1] for p in ft], marker=markers[lib], color=colors[lib],
                   label=f"{lib}, fine-tuned")
    if "acc" in base:
        ax.scatter([base["macs"] / 1e6], [100 * base["acc"]], marker="*", s=180, color="k", label="unpruned")
        ax.axhline(100 * base["acc"], color="k", lw=0.5, ls="--")
    ax.set_xlabel("MACs (M; fxprune.count, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs. MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")

    # zoom on the fine-tuned points; labels spread in a column beside each library's points
    pts = {lib: sorted([(r["macs_after"] / 1e6, 100 * r["acc_finetuned"], r["criterion"]) for r in rows
                        if r["library"] == lib and isinstance(r.get("acc_finetuned"), (int, float))],
                       key=lambda p: p[1]) for lib in libs}
    allv = [p[1] for v in pts.values() for p in v] + ([100 * base["acc"]] if "acc" in base else [])
    if allv:
        lo, hi = min(allv), max(allv)
        pad = max(0.2, 0.08 * (hi - lo))
        xs_all = [p[0] for v in pts.values() for p in v]
        xmin, xmax = min(xs_all), max(xs_all)
        span = max(xmax - xmin, 0.05 * xmax)
        for lib in libs:
            v = pts[lib]
            zx.scatter([p[0] for p in v], [p[1] for p in v], marker=markers[lib], color=colors[lib], label=lib)
            left = lib == "fxprune"
            tx = (xmin - 1.2 * span) if left else (xmax + 1.2 * span)
            for k, (xm, ya, name) in enumerate(v):
                ty = lo - pad / 2 + (hi - lo + pad) * (k + 0.5) / max(1, len(v))
                zx.annotate(f"{name} {ya:.2f}", (xm, ya), xytext=(tx, ty), fontsize=7, color=colors[lib],
                            ha="right" if left else "left", va="center",
                            arrowprops=dict(arrowstyle="-", color=colors[lib], lw=0.4, alpha=0.6))
        if "acc" in base:
            zx.axhline(100 * base["acc"], color="k", lw=0.8, ls="--", label=f"unpruned {100 * base['acc']:.2f}")
        zx.set_xlim(xmin - 3 * span, xmax + 3 * span)
        zx.set_ylim(lo - pad, hi + 2.5 * pad)
    zx.set_xlabel("MACs (M)")
    zx.set_ylabel("test accuracy after fine-tuning (%)")
    zx.set_title("zoom: fine-tuned")
    zx.grid(alpha=0.3)
    zx.legend(fontsize=7, loc="upper center", ncol=3)

    crits = [c for c in CRITERIA if any(r["criterion"] == c for r in rows)]
    width = 0.8 / max(1, len(libs))
    for j, lib in enumerate(libs):
        by = {r["criterion"]: r for r in rows if r["library"] == lib}
        xs = [i + (j - (len(libs) - 1) / 2) * width for i in range(len(crits))]
        ft = [100 * by[c]["acc_finetuned"] if c in by and isinstance(by[c].get("acc_finetuned"), (int, float))
              else 0 for c in crits]
        pr = [100 * by[c]["acc_pruned"] if c in by else 0 for c in crits]
        bx.bar(xs, ft, width, color=colors[lib], label=f"{lib}, fine-tuned")
        bx.bar(xs, pr, width * 0.5, color="white", edgecolor=colors[lib], hatch="///",
               label=f"{lib}, no fine-tune")
        for x, v in zip(xs, ft):
            if v:
                bx.text(x, v + 0.3, f"{v:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
    if "acc" in doc.get("base", {}):
        bx.axhline(100 * doc["base"]["acc"], color="k", lw=0.8, ls="--", label="unpruned")
    bx.set_xticks(range(len(crits)))
    bx.set_xticklabels(crits)
    bx.set_ylabel("test accuracy (%)")
    bx.set_title(f"per criterion (fine-tune {doc['config']['finetune_epochs']} epoch(s))")
    bx.set_ylim(0, 118)
    bx.legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle("Fashion-MNIST ResNet-8 pruned to <= %g x MACs: fxprune vs. Torch-Pruning"
                 % doc["config"]["target_macs"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(doc: dict, out: str):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = os.path.splitext(out)[0]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)
    with open(stem + ".md", "w") as f:
        f.write(markdown(doc))
    try:
        plot(doc, stem + ".png")
    except Exception as e:  # plotting is a convenience
        log(f"[plot] failed: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------------------ main

def _dist_version(dist: str, module) -> str:
    """Installed distribution version (torch_pruning 1.6.1's ``__version__`` still says 1.6.0)."""
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return getattr(module, "__version__", "?")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15, help="base training epochs (checkpoint cached)")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--criteria", default=",".join(CRITERIA), help=f"comma list from {CRITERIA}")
    ap.add_argument("--libraries", default=",".join(LIBRARIES), help="comma list: fxprune,torch-pruning")
    ap.add_argument("--subset", type=int, default=None, help="first N training images (test: max(1000, N/2))")
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSON path; .md and .png are written next to it")
    ap.add_argument("--target-macs", type=float, default=0.5, help="keep at most this fraction of MACs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="base training peak lr (cosine)")
    ap.add_argument("--ft-lr", type=float, default=0.01, help="fine-tune peak lr (cosine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-augment", action="store_true", help="disable random crop + flip")
    ap.add_argument("--taylor-batches", type=int, default=4)
    ap.add_argument("--hessian-samples", type=int, default=128)
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--recal-images", type=int, default=1000,
                    help="recalibrate BatchNorm on the first N training images after pruning (0: off)")
    ap.add_argument("--data-dir", default=None, help="directory with the idx .gz files (skip dpkg/apt)")
    ap.add_argument("--no-install", action="store_true", help="do not try apt-get install")
    ap.add_argument("--retrain", action="store_true", help="ignore a cached base checkpoint")
    ap.add_argument("--replot", metavar="JSON", default=None,
                    help="only rewrite the .md and .png next to JSON from its contents, then exit")
    args = ap.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            doc = json.load(f)
        stem = os.path.splitext(args.replot)[0]
        with open(stem + ".md", "w") as f:
            f.write(markdown(doc))
        plot(doc, stem + ".png")
        print(markdown(doc))
        return

    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    libraries = [l.strip() for l in args.libraries.split(",") if l.strip()]
    bad = [c for c in criteria if c not in CRITERIA] + [l for l in libraries if l not in LIBRARIES]
    if bad:
        ap.error(f"unknown criteria/libraries: {bad}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_all = time.perf_counter()

    data_dir = find_data_dir(args.data_dir, install=not args.no_install)
    t0 = time.perf_counter()
    xtr, ytr, xte, yte, stats = load_fashion_mnist(data_dir, args.subset)
    log(f"[data] {data_dir}: train {tuple(xtr.shape)}, test {tuple(xte.shape)} in {time.perf_counter() - t0:.2f} s")
    data = (xtr, ytr, xte, yte)
    example_inputs = (cl(torch.randn(1, 1, 28, 28)),)

    import fxprune  # noqa: F401  (count is used for every model)
    import torch_pruning as tp

    doc = {
        "benchmark": "accuracy",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {k: v for k, v in vars(args).items()},
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "torch_pruning": _dist_version("torch-pruning", tp), "fxprune_commit": git_commit(),
                "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_start": os.getloadavg()},
        "data": {"dir": data_dir, "n_train": len(xtr), "n_test": len(xte), **stats,
                 "augment": None if args.no_augment else "random crop (pad 2) + horizontal flip"},
        "protocol": {
            "base_training": "SGD momentum 0.9 nesterov, wd 5e-4, batch 128, cosine per step from --lr",
            "finetune": "same optimizer/augmentation, cosine from --ft-lr, data order seeded (seed+1), "
                        "identical for both libraries",
            "fxprune": "Pruner(model, x, importance=imp, target_macs, ignored_layers=[fc], global_pruning=False)",
            "torch-pruning": "MetaPruner(model, x, importance=imp, pruning_ratio=r, ignored_layers=[fc], "
                             "global_pruning=False); r = smallest ratio with MACs <= target (bisection)",
            "macs": "fxprune.count (conv/linear MACs, batch 1) for both libraries",
            "prune_s": "pruner construction + step() (TP: at the found ratio; the search is tp_ratio_search_s)",
        },
        "rows": [],
    }

    # ---- base model (cached)
    os.makedirs(RESULTS, exist_ok=True)
    tag = f"resnet8_fmnist_e{args.epochs}_lr{args.lr:g}_bs{args.batch_size}_s{args.seed}" \
          + ("_noaug" if args.no_augment else "") + (f"_sub{args.subset}" if args.subset else "")
    ckpt = os.path.join(RESULTS, tag + ".pt")
    base = channels_last(ResNet8())
    if os.path.exists(ckpt) and not args.retrain:
        blob = torch.load(ckpt, map_location="cpu", weights_only=False)
        base.load_state_dict(blob["state_dict"])
        train_info = blob.get("train_info", {})
        log(f"[base] loaded cached checkpoint {ckpt}")
    else:
        torch.manual_seed(args.seed)
        base = channels_last(ResNet8())
        train_info = train(base, xtr, ytr, epochs=args.epochs, lr=args.lr, seed=args.seed, bs=args.batch_size,
                           aug=not args.no_augment, desc="base",
                           eval_fn=lambda m: evaluate(m, xte, yte))
        torch.save({"state_dict": base.state_dict(), "train_info": train_info, "config": vars(args)}, ckpt)
        log(f"[base] saved {ckpt}")
    base.eval()
    macs, params = macs_params(base, example_inputs)
    acc = evaluate(base, xte, yte)
    doc["base"] = {"checkpoint": os.path.relpath(ckpt, ROOT), "macs": macs, "params": params, "acc": acc,
                   "n_test": len(xte), "train_s": train_info.get("train_s"),
                   "train_history": train_info.get("history")}
    base_stats = {"macs": macs, "params": params, "acc": acc}
    log(f"[base] MACs {macs}, params {params}, test acc {acc:.4f}")
    target = int(args.target_macs * macs)

    tp_ratio = None
    if "torch-pruning" in libraries:
        try:
            tp_ratio = tp_search_ratio(base, example_inputs, target)
            log(f"[tp] pruning_ratio {tp_ratio['ratio']:.5f} -> MACs {tp_ratio['macs']} "
                f"({tp_ratio['evaluations']} trials, {tp_ratio['search_s']:.1f} s)")
            doc["tp_ratio_search"] = tp_ratio
        except Exception as e:
            doc["tp_ratio_search"] = {"error": traceback.format_exc()}
            log(f"[tp] ratio search failed: {e}")

    for crit in criteria:
        for lib in libraries:
            t0 = time.perf_counter()
            try:
                if lib == "torch-pruning" and tp_ratio is None:
                    raise RuntimeError("no Torch-Pruning ratio (search failed)")
                row = run_row(lib, crit, base, data, args, example_inputs, base_stats, tp_ratio)
            except Exception as e:
                tb = traceback.format_exc()
                log(f"[{lib}/{crit}] FAILED: {type(e).__name__}: {e}\n{tb}")
                row = {"library": lib, "criterion": crit, "macs_before": macs, "acc_before": acc,
                       "error": f"{type(e).__name__}: {e}", "traceback": tb}
            row["row_s"] = time.perf_counter() - t0
            row["loadavg"] = os.getloadavg()
            doc["rows"].append(row)
            doc["total_s"] = time.perf_counter() - t_all
            write_outputs(doc, args.out)

    doc["total_s"] = time.perf_counter() - t_all
    doc["env"]["loadavg_end"] = os.getloadavg()
    write_outputs(doc, args.out)
    print(json.dumps(doc, indent=1))
    print("\n" + markdown(doc), file=sys.stderr)
    log(f"[done] total {doc['total_s'] / 60:.1f} min; wrote {args.out} (+ .md, .png)")


if __name__ == "__main__":
    main()
