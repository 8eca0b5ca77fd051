#!/usr/bin/env python
"""Check that a speed change changes no result: plans, pruned state dicts, pruned code and outputs.

For each catalogue model (``benchmarks/zoo_models.py``, its own small input, fixed seeds) this runs
``analyze`` + ``plan_by_ratio(0.5)`` + ``prune`` once in eval mode and once in train mode, and records the
groups (key, size, pin, class count), the plan, a SHA-256 of every tensor of the pruned state dict, the
pruned GraphModule's code, the order of its state dict and modules, and a SHA-256 of the pruned model's output on the example input (eval mode).
``--save`` writes these for the checkout at ``--root`` (an older copy: ``git archive <rev> | tar -x`` into a
folder, plus the ``fxprune/passes -> ../passes`` link); ``--check`` compares this checkout with such a file
and lists every difference:

    git archive main | tar -x -C /tmp/base && ln -s ../passes /tmp/base/fxprune/passes
    python benchmarks/same_results.py --root /tmp/base --save /tmp/base.json
    python benchmarks/same_results.py --check /tmp/base.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = (
    "resnet18,resnet50,densenet121,efficientnet_b0,mobilenet_v2,mobilenet_v3_small,mobilenet_v3_large,"
    "mnasnet0_5,mnasnet1_0,shufflenet_v2_x0_5,squeezenet1_0,googlenet,inception_v3,regnet_x_400mf,"
    "regnet_y_400mf,resnext50_32x4d,convnext_tiny,vgg11_bn,alexnet,swin_t,vit_b_32,efficientnet_v2_s,"
    "efficientnet_b4,timm/resnet18,timm/efficientnet_b0,timm/mobilenetv3_small_050,timm/vit_tiny_patch16_224,"
    "timm/convnext_atto,timm/levit_128s,timm/regnetx_002,timm/repvgg_a0,timm/ghostnet_050,"
    "timm/poolformer_s12,timm/mixer_s32_224,timm/deit_tiny_patch16_224"
)


def _sha(t) -> str:
    import torch
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16] + str(
        tuple(t.shape))


def _out_sha(out) -> list:
    import torch
    from torch.utils._pytree import tree_leaves
    return [_sha(v) if isinstance(v, torch.Tensor) else repr(v) for v in tree_leaves(out)]


def record(name: str) -> dict:
    """What one model gives, in eval and in train mode."""
    import torch
    import zoo_models

    import fxprune

    spec = zoo_models.get_spec(name)
    row: dict = {}
    for mode in ("eval", "train"):
        model, x = zoo_models.build(spec)
        model.train(mode == "train")
        fxprune.cache.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                graph = fxprune.analyze(model, x)
                plan = fxprune.plan_by_ratio(graph, 0.5)
                small = fxprune.prune(model, plan, x)
            except Exception as e:
                row[mode] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
        r = {"groups": [[g.key, g.size, g.pinned, len(g.all_classes)] for g in graph.groups],
             "plan": {k: list(map(int, v)) for k, v in sorted(plan.items())},
             "state": {k: _sha(v) for k, v in small.state_dict().items()},
             "order": [list(small.state_dict()), [n for n, _ in small.named_modules()]],
             "code": getattr(small, "code", "")}
        if mode == "eval":
            with torch.no_grad():
                r["out"] = _out_sha(small(*x))
        row[mode] = r
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS, help="comma-separated catalogue names")
    ap.add_argument("--root", default=os.path.dirname(HERE), help="the checkout whose fxprune is run")
    ap.add_argument("--save", help="write the records here")
    ap.add_argument("--check", help="compare with records written by --save")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.abspath(args.root))
    import torch
    torch.set_num_threads(1)
    import fxprune
    print("fxprune from", os.path.dirname(fxprune.__file__), flush=True)
    ref = None
    if args.check:
        with open(args.check) as f:
            ref = json.load(f)
    out, bad = {}, 0
    for name in args.models.split(","):
        out[name] = rec = record(name)
        if ref is None:
            errors = {m: v["error"] for m, v in rec.items() if "error" in v}
            print(name, "ok" if not errors else errors, flush=True)
            continue
        diffs = []
        for mode, r in rec.items():
            old = ref.get(name, {}).get(mode)
            if old is None:
                diffs.append(f"{mode}: no reference")
                continue
            for k in sorted(set(r) | set(old)):
                if r.get(k) != old.get(k):
                    if isinstance(r.get(k), dict) and isinstance(old.get(k), dict):
                        ks = [q for q in set(r[k]) | set(old[k]) if r[k].get(q) != old[k].get(q)]
                        diffs.append(f"{mode}.{k}: {len(ks)} differ, e.g. {sorted(ks)[:3]}")
                    else:
                        diffs.append(f"{mode}.{k} differs")
        bad += bool(diffs)
        print(name, "same" if not diffs else "DIFFERENT: " + "; ".join(diffs), flush=True)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(out, f)
    if ref is not None:
        print(f"{len(out) - bad}/{len(out)} models identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
