"""Command line: ``fxprune prune <model> --ratio 0.5`` and ``fxprune inspect <model>``.

``<model>`` is a torchvision classification model name (``resnet50``; random weights) or
``path/to/file.py:factory``, where ``factory()`` returns an ``nn.Module`` or a pair
``(module, example_inputs)``. ``prune`` analyses the model and runs a :class:`fxprune.Pruner`
(``--importance``, ``--ratio`` or ``--target-macs``/``--target-params``, ``--global``, ``--round-to``,
``--iterative``) or replays ``--plan-in plan.json``; it checks the pruned model against the masked
original with :func:`fxprune.verify` and prints params, MACs and CPU latency before and after.
``inspect`` prints the groups (see :mod:`fxprune.inspect`).

Exit status (``EXIT_*`` below): 0 pruned and verified; 1 an unexpected error (a bug: ``--debug`` shows
the traceback); 2 bad usage, model, factory, plan or output path, or an error fxprune raises about the
model; 3 nothing could be pruned; 4 verification failed (the pruned model, or its ONNX export, differs
from the masked original); 130 interrupted. Every error is one line on stderr; warnings are collected
and printed once each, one line each.

Example:
    >>> from fxprune.cli import main
    >>> main(["prune", "no_such_model"])  # doctest: +SKIP
    fxprune: error: unknown model 'no_such_model' ...
    2
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import logging
import os
import statistics
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import fxprune
from fxprune.count import count
from fxprune.latency import cpu_latency_ms
from fxprune.recalibrate import image_batches

__all__ = ["CliError", "load_model", "main", "EXIT_OK", "EXIT_BUG", "EXIT_USAGE", "EXIT_NOTHING",
           "EXIT_VERIFY", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_NOTHING, EXIT_VERIFY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class CliError(Exception):
    """Bad command-line input (unknown model, unreadable factory file, ...): exit status 2."""


class NothingPruned(Exception):
    """The plan removes no channel: exit status 3."""


class OnnxMismatch(Exception):
    """The ONNX export does not compute what the pruned model computes: exit status 4."""


# ----------------------------------------------------------------------------------------- model loading

def _load_factory(spec: str) -> Any:
    path_str, _, attr = spec.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise CliError(f"model file {path_str!r} not found (expected 'path/to/file.py:factory')")
    mod_spec = importlib.util.spec_from_file_location(f"_fxprune_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise CliError(f"cannot import {path_str!r} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(path.resolve().parent))  # let the file import its neighbours
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: its error is the cause, in one line
        raise CliError(f"importing {path_str!r} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CliError(f"{path_str!r} has no callable {attr!r}")
    try:
        return factory()
    except Exception as e:
        raise CliError(f"{spec}: {attr}() raised {type(e).__name__}: {e}") from e


def load_model(spec: str, input_size: int = 224) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    """Build the model named by ``spec`` (in eval mode) and its example inputs.

    ``spec`` is a torchvision classification model name (inputs: one ``1x3xSxS`` tensor,
    ``S = input_size``) or ``file.py:factory``; a factory may return ``(module, example_inputs)``.
    """
    inputs: tuple[Any, ...] | None = None
    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        built = _load_factory(spec)
        if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module):
            built, ex = built
            inputs = tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
        if not isinstance(built, torch.nn.Module):
            raise CliError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module")
        model = built
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if spec not in names:
            close = difflib.get_close_matches(spec, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CliError(f"unknown model {spec!r}: not a torchvision classification model name "
                           f"and not 'file.py:factory'{hint}")
        kwargs = {"aux_logits": False, "init_weights": False} if spec in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(spec, weights=None, **kwargs)
    if inputs is None:
        if input_size < 1:
            raise CliError(f"--input-size must be positive, got {input_size}")
        inputs = (torch.randn(1, 3, input_size, input_size),)
    return model.eval(), inputs


# ----------------------------------------------------------------------------------------- progress

@contextlib.contextmanager
def _step(bar: tqdm, name: str) -> Iterator[None]:
    """Name the running step on the bar and keep its clock ticking while the step blocks."""
    bar.set_description_str(f"fxprune: {name}", refresh=True)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.update(1)


# ----------------------------------------------------------------------------------------- report

def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_macs(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return str(n)


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"


def _groups_pruned(graph: Any, plan: Any) -> tuple[int, int, int]:
    """(groups touched by the plan, unpinned groups, all groups)."""
    keys = set(plan)
    touched = 0
    for g in graph.groups:
        members = {f"{name}:{dim}" for name, dim in g.members}
        if g.key in keys or members & keys:
            touched += 1
    unpinned = sum(1 for g in graph.groups if g.pinned is None)
    return touched, unpinned, len(graph.groups)


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("", "before", "after", "change")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- commands

def _paired_latency(a: torch.nn.Module, b: torch.nn.Module, inputs: tuple[Any, ...], warmup: int,
                    repeat: int, progress: Any) -> tuple[float, float]:
    """Median CPU latency (ms) of ``a`` and ``b``, timed alternately so that load from other processes
    on the machine falls on both alike."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + repeat):
        for model, times in ((a, ta), (b, tb)):
            ms = cpu_latency_ms(model, inputs, warmup=0, repeat=1, progress=progress)
            if i >= warmup:
                times.append(ms)
    return statistics.median(ta), statistics.median(tb)


def _export_onnx(small: torch.nn.Module, inputs: tuple[Any, ...], path: str) -> float:
    """Export with torch.onnx, run with onnxruntime; return max |onnx - pruned|."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError("--onnx needs onnxruntime (pip install 'fxprune[test]')") from None
    nbytes = sum(p.numel() * p.element_size() for p in small.parameters())
    torch.onnx.export(small, inputs, path, verbose=False, external_data=nbytes > (1 << 30))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = small(*inputs)
    want_list = [want] if isinstance(want, torch.Tensor) else list(want)
    return max(float((torch.as_tensor(g) - w.cpu()).abs().max()) for g, w in zip(got, want_list))


def _samples(inputs: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``inputs`` split into one-sample input tuples along the batch dim that all its tensors share (the whole
    tuple when they share none)."""
    sizes = {x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.ndim > 0}
    if len(sizes) != 1 or next(iter(sizes)) < 2:
        return [inputs]
    return [tuple(x[i:i + 1] if isinstance(x, torch.Tensor) and x.ndim > 0 else x for x in inputs)
            for i in range(next(iter(sizes)))]


def _prepare_importance(name: str, model: torch.nn.Module, inputs: tuple[Any, ...],
                        calib: list[torch.Tensor] | None = None) -> Any:
    """Build the criterion and give a data-dependent one its data: the ``--calibrate-images`` batches when
    given, else the example inputs. Taylor and Hessian get one backward per sample, each added with
    ``accumulate_grad`` (one summed ``.grad`` lets samples of opposite signs cancel); the CLI has no labels,
    so the loss is the mean square of the outputs."""
    imp = fxprune.importance.get_importance(name)
    batches = [(b,) for b in calib] if calib else [inputs]
    if isinstance(imp, fxprune.importance.ActivationImportance):
        with imp.compute_importance(model), torch.no_grad():
            for batch in batches:
                model(*batch)
    elif isinstance(imp, (fxprune.importance.TaylorImportance, fxprune.importance.HessianImportance)):
        imp.zero_grad()
        for sample in (s for batch in batches for s in _samples(batch)):
            model.zero_grad(set_to_none=True)
            out = model(*sample)
            outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
            # retain_graph: some models (timm's LeViT, EfficientFormer) cache a tensor computed from
            # parameters in eval mode, so every sample's backward also goes through the first sample's graph
            sum(o.float().pow(2).mean() for o in outs).backward(retain_graph=True)
            imp.accumulate_grad(model)
        model.zero_grad(set_to_none=True)  # the scores live in the criterion now
    return imp


def _select(args: argparse.Namespace, model: torch.nn.Module, inputs: tuple[Any, ...],
            bar: tqdm) -> tuple[Any, Any, Any]:
    """(pruned model, plan, analysis of the original) from --plan-in or a Pruner run."""
    with _step(bar, "trace/analyze"):
        graph = fxprune.analyze(model, inputs)
    if args.plan:
        with _step(bar, "plan"):
            _nothing_check(graph, args.plan, "the plan given with --plan-in")
        with _step(bar, "prune"):
            small = fxprune.prune(model, args.plan, inputs)
        return small, args.plan, graph
    with _step(bar, "plan"):
        calib = image_batches(args.calibrate_images, inputs[0].shape[-1]) if args.calibrate_images else None
        imp = _prepare_importance(args.importance, model, inputs, calib)
        pruner = fxprune.Pruner(model, inputs, importance=imp, pruning_ratio=args.ratio,
                                global_pruning=args.global_pruning, round_to=args.round_to,
                                iterative_steps=args.iterative, target_macs=args.target_macs,
                                target_params=args.target_params)
    with _step(bar, "prune"):
        small = model
        for _ in range(args.iterative):
            small = pruner.step()
    _nothing_check(graph, pruner.plan, _how(args))
    return small, pruner.plan, graph


def _nothing_check(graph: Any, plan: Any, how: str) -> None:
    """Raise NothingPruned, saying why, when ``plan`` removes no index."""
    if any(len(v) for v in plan.values()):
        return
    groups = list(graph.groups)
    pinned = [g for g in groups if g.pinned]
    reasons: dict[str, int] = {}
    for g in pinned:
        reasons[g.pinned] = reasons.get(g.pinned, 0) + 1
    top = "; ".join(f"{r} ({n})" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    if len(pinned) == len(groups):
        why = f"all {len(groups)} groups are pinned" + (f": {top}" if top else "")
    else:
        why = f"{how} removes no channel class in the {len(groups) - len(pinned)} unpinned groups"
    raise NothingPruned(f"nothing could be pruned: {why} (`fxprune inspect MODEL` lists the groups)")


def _how(args: argparse.Namespace) -> str:
    if args.plan_in:
        return f"plan {args.plan_in}"
    how = (f"target MACs {args.target_macs:g}" if args.target_macs is not None else
           f"target params {args.target_params:g}" if args.target_params is not None else f"ratio {args.ratio}")
    how += f", {args.importance}{', global' if args.global_pruning else ''}"
    how += f", round_to {args.round_to}" if args.round_to else ""
    return how + (f", {args.iterative} steps" if args.iterative > 1 else "")


# ----------------------------------------------------------------------------------------- option checks

def _writable(opt: str, path: str | None, is_dir: bool = False) -> None:
    """Refuse an output path before any work is done (not after a long run)."""
    if not path:
        return
    p = Path(path)
    parent = p.resolve().parent
    if not is_dir and p.is_dir():
        raise CliError(f"{opt} {path!r} is a directory; give a file name")
    if is_dir and p.exists() and not p.is_dir():
        raise CliError(f"{opt} {path!r} is a file; give a directory (it is created if missing)")
    if not parent.is_dir():
        raise CliError(f"{opt} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise CliError(f"{opt} {path!r} is not writable")


def _check_prune_args(args: argparse.Namespace) -> None:
    """Conflicting or out-of-range options are refused, not silently resolved; defaults filled in."""
    # Options left at None (or False) were not given: that is how a conflict is told from a default.
    given = {opt for opt, v in (("--ratio", args.ratio), ("--importance", args.importance),
                                ("--global", args.global_pruning or None), ("--round-to", args.round_to),
                                ("--iterative", args.iterative), ("--target-macs", args.target_macs),
                                ("--target-params", args.target_params), ("--onnx-atol", args.onnx_atol))
             if v is not None}
    if args.plan_in:
        clash = sorted(given & {"--ratio", "--importance", "--global", "--round-to", "--iterative",
                                "--target-macs", "--target-params"})
        if clash:
            raise CliError(f"--plan-in replays a plan; it cannot be combined with {', '.join(clash)}")
        try:
            args.plan = fxprune.PrunePlan.from_json(Path(args.plan_in).read_text())
        except OSError as e:
            raise CliError(f"cannot read plan {args.plan_in!r}: {e.strerror or e}") from None
        except fxprune.PlanError as e:
            raise CliError(f"cannot read plan {args.plan_in!r}: {e}") from None
    else:
        args.plan = None
    if args.target_macs is not None and args.target_params is not None:
        raise CliError("--target-macs and --target-params cannot be combined; give one budget")
    if "--ratio" in given and (args.target_macs is not None or args.target_params is not None):
        raise CliError("--ratio cannot be combined with --target-macs/--target-params "
                       "(a budget decides how much to remove)")
    if "--onnx-atol" in given and not args.onnx:
        raise CliError("--onnx-atol needs --onnx")
    args.ratio = 0.5 if args.ratio is None else args.ratio
    args.importance = args.importance or "l2"
    args.onnx_atol = 1e-3 if args.onnx_atol is None else args.onnx_atol
    if not 0.0 <= args.ratio < 1.0:
        raise CliError(f"--ratio must be in [0, 1), got {args.ratio}")
    if args.iterative is None:
        args.iterative = 1
    if args.iterative < 1:
        raise CliError(f"--iterative must be >= 1, got {args.iterative}")
    if args.repeat < 1 or args.warmup < 0:
        raise CliError("--repeat must be >= 1 and --warmup >= 0")
    outs = [(o, v) for o, v in (("--out", args.out), ("--plan-out", args.plan_out), ("--onnx", args.onnx)) if v]
    paths = [str(Path(v).resolve()) for _, v in outs]
    if len(set(paths)) < len(paths):
        raise CliError(f"{', '.join(o for o, _ in outs)} name the same path")
    _writable("--out", args.out, is_dir=True)
    _writable("--plan-out", args.plan_out)
    _writable("--onnx", args.onnx)


def _prune(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    steps = ["build", "trace/analyze", "plan", "prune", "verify", "measure"]
    if args.calibrate_images:
        steps.insert(steps.index("verify") + 1, "recalibrate")
    if args.out or args.onnx or args.plan_out:
        steps.append("export")
    out = sys.stdout
    with tqdm(total=len(steps), desc="fxprune", unit="step", file=sys.stderr, leave=False,
              disable=args.quiet, bar_format="{desc:<24} |{bar:20}| {n}/{total} steps [{elapsed}]") as bar:
        with _step(bar, "build"):
            model, inputs = load_model(args.model, args.input_size)
        small, plan, graph = _select(args, model, inputs, bar)
        with _step(bar, "verify"):
            report = fxprune.verify(model, small, plan, inputs)
        if args.calibrate_images:  # after verify: recalibrated statistics no longer match the masked original
            with _step(bar, "recalibrate"):
                fxprune.recalibrate_bn(small, image_batches(args.calibrate_images, inputs[0].shape[-1]))
        with _step(bar, "measure"):
            macs0, params0 = count(model, inputs)
            macs1, params1 = count(small, inputs)
            runs = 2 * (args.warmup + args.repeat)
            with tqdm(total=runs, desc="latency", unit="run", file=sys.stderr, leave=False,
                      disable=args.quiet) as lbar:
                ms0, ms1 = _paired_latency(model, small, inputs, args.warmup, args.repeat, lbar.update)
        onnx_diff = None
        if "export" in steps:
            with _step(bar, "export"):
                if args.out:
                    fxprune.save(small, args.out, inputs,
                                 plan=None if isinstance(small, torch.fx.GraphModule) else plan)
                if args.plan_out:
                    Path(args.plan_out).write_text(plan.to_json())
                if args.onnx:
                    onnx_diff = _export_onnx(small, inputs, args.onnx)

    touched, unpinned, total = _groups_pruned(graph, plan)
    removed = sum(len(v) for v in plan.values())
    shape = "x".join(str(d) for d in inputs[0].shape) if isinstance(inputs[0], torch.Tensor) else "custom"
    print(f"fxprune prune {args.model}  (input {shape}, {_how(args)}, seed {args.seed})", file=out)
    print(_table([
        ("params", _fmt_int(params0), _fmt_int(params1), _change(params0, params1)),
        ("MACs", _fmt_macs(macs0), _fmt_macs(macs1), _change(macs0, macs1)),
        ("CPU latency (ms)", f"{ms0:.2f}", f"{ms1:.2f}", _change(ms0, ms1)),
    ]), file=out)
    print(f"groups pruned: {touched} of {total} ({total - unpinned} pinned); "
          f"channel indices removed: {removed}", file=out)
    print(f"verify: max |Δ| = {report.max_abs_diff:.3g} (pruned vs. masked original)", file=out)
    if args.calibrate_images:
        print(f"recalibrated BatchNorm statistics on the images in {args.calibrate_images} (after verify)", file=out)
    if args.out:
        from .saving import saved_files
        print(f"saved pruned model to {args.out}/ ({', '.join(saved_files(args.out))})", file=out)
    if args.plan_out:
        print(f"saved plan to {args.plan_out}", file=out)
    if onnx_diff is not None:
        print(f"exported ONNX to {args.onnx}; onnxruntime max |Δ| vs. pruned = {onnx_diff:.3g}", file=out)
        if not onnx_diff <= args.onnx_atol:
            raise OnnxMismatch(f"ONNX output differs from the pruned model by {onnx_diff:.3g} (> {args.onnx_atol})")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from . import inspect as fxinspect

    for opt in ("--dot", "--png"):
        _writable(opt, getattr(args, opt[2:]))
    model, inputs = load_model(args.model, args.input_size)
    graph = fxprune.analyze(model, inputs)
    rows = fxinspect.group_rows(graph, model, inputs)
    print(fxinspect.format_table(rows, limit=args.limit), file=sys.stdout)
    if args.dot or args.png:
        key = args.group or fxinspect.default_group(rows)
        g = fxinspect.find_group(graph, key)
        if args.dot:
            Path(args.dot).write_text(fxinspect.group_dot(graph, g))
            print(f"wrote group {g.key} as Graphviz dot to {args.dot}", file=sys.stdout)
        if args.png:
            fxinspect.draw_group(graph, g, args.png)
            print(f"drew group {g.key} to {args.png}", file=sys.stdout)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fxprune", description="Structural pruning as a torch.fx pass.",
        epilog="exit status: 0 pruned and verified, 1 unexpected error (a bug), 2 bad usage/model/plan/path, "
               "3 nothing could be pruned, 4 verification failed, 130 interrupted")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prune", help="prune a model (ratio, budget or plan), verify it, report params/MACs/latency")
    pr.add_argument("model", help="torchvision classification model name, or path/to/file.py:factory")
    pr.add_argument("--ratio", type=float, default=None,
                    help="fraction of the removable channel classes to remove in every unpinned group "
                         "(default 0.5; not with --target-*)")
    pr.add_argument("--input-size", type=int, default=224, help="example input is 1x3xSxS (default 224)")
    pr.add_argument("--out", metavar="DIR",
                    help="save the pruned model here: model.pt2 (torch.export; loads without fxprune), "
                         "plan.json, model.safetensors (see fxprune.save)")
    pr.add_argument("--onnx", metavar="PATH", help="export the pruned model to ONNX, check it with onnxruntime")
    pr.add_argument("--onnx-atol", type=float, default=None, help="onnxruntime tolerance (default 1e-3)")
    pr.add_argument("--plan-out", metavar="PATH", help="write the PrunePlan as JSON")
    pr.add_argument("--plan-in", metavar="PATH", help="replay a PrunePlan JSON instead of selecting channels")
    pr.add_argument("--calibrate-images", metavar="DIR",
                    help="after verify, re-estimate BatchNorm statistics of the pruned model on the images in DIR "
                         "(taylor/hessian/activation also score channels on them)")
    pr.add_argument("--importance", default=None,
                    help="importance criterion: l1, l2, bn, lamp, fpgm, taylor, hessian, activation, random "
                         "(default l2; taylor/hessian/activation see the --calibrate-images images when given, "
                         "else the example input; taylor/hessian one backward per sample)")
    pr.add_argument("--global", dest="global_pruning", action="store_true",
                    help="rank all groups together instead of the same ratio per group")
    pr.add_argument("--round-to", type=int, default=None, help="keep a multiple of N classes in every group")
    pr.add_argument("--target-macs", type=float, default=None,
                    help="prune until MACs <= this (fraction <= 1 of the original, or an absolute count)")
    pr.add_argument("--target-params", type=float, default=None,
                    help="prune until params <= this (fraction <= 1 of the original, or an absolute count)")
    pr.add_argument("--iterative", type=int, default=None, metavar="N",
                    help="reach the ratio/target in N pruning steps (default 1)")
    pr.add_argument("--seed", type=int, default=0, help="seed for random weights and inputs (default 0)")
    pr.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default 3)")
    pr.add_argument("--repeat", type=int, default=10, help="timed runs; the median is reported (default 10)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pr.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    ins = sub.add_parser("inspect", help="list the model's groups: sizes, pins and where they come from, "
                                         "share of params and MACs")
    ins.add_argument("model", help="torchvision classification model name, or path/to/file.py:factory")
    ins.add_argument("--input-size", type=int, default=224, help="example input is 1x3xSxS (default 224)")
    ins.add_argument("--limit", type=int, default=0, metavar="N", help="show only the N largest groups")
    ins.add_argument("--group", metavar="KEY", help="the group --dot/--png draw (default: the largest)")
    ins.add_argument("--dot", metavar="PATH", help="write one group's members and couplings as Graphviz dot")
    ins.add_argument("--png", metavar="PATH", help="draw one group's members and couplings (matplotlib)")
    ins.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def _version() -> str:
    import torchvision

    return f"fxprune {fxprune.__version__} (torch {torch.__version__}, torchvision {torchvision.__version__})"


class _Collect(logging.Handler):
    """Keeps the library's log warnings so that the CLI prints each once, on one line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _one_line(msg: str) -> str:
    text = " ".join(str(msg).split())
    return text[len("fxprune: "):] if text.startswith("fxprune: ") else text


def _print_warnings(caught: list[warnings.WarningMessage], logged: list[str]) -> None:
    seen: set[str] = set()
    for msg in [_one_line(w.message) for w in caught] + [_one_line(m) for m in logged]:
        if msg not in seen:
            seen.add(msg)
            print(f"fxprune: warning: {msg}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    if args.command == "prune":
        _check_prune_args(args)
        return _prune(args)
    return _inspect(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module docstring and ``EXIT_*``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse usage errors (2), --help and --version (0)
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    handler = _Collect()
    lib_log, torch_log = logging.getLogger("fxprune"), logging.getLogger("torch")
    lib_log.addHandler(handler)
    propagate, lib_log.propagate = lib_log.propagate, False  # printed by us, once each
    # torch.export logs its failed attempts (graph dumps) while fxprune falls back; fxprune's own warning
    # says what that means for pruning. --debug keeps torch's logging as it is.
    torch_level = torch_log.level
    if not args.debug:
        torch_log.setLevel(logging.ERROR)
    status, error = EXIT_BUG, ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # deduplicated when printed
            try:
                status = _run(args)
            except KeyboardInterrupt:
                if args.debug:
                    raise
                status, error = EXIT_INTERRUPTED, "interrupted"
            except NothingPruned as e:
                status, error = EXIT_NOTHING, str(e)
            except (fxprune.VerificationError, OnnxMismatch) as e:
                if args.debug:
                    raise
                status, error = EXIT_VERIFY, f"verification failed: {e}"
            except (CliError, fxprune.FxpruneError) as e:
                if args.debug:
                    raise
                kind = "" if isinstance(e, CliError) else f"{type(e).__name__}: "
                status, error = EXIT_USAGE, f"{kind}{e}"
            except Exception as e:  # a bug: still one line, the traceback behind --debug
                if args.debug:
                    raise
                status, error = EXIT_BUG, (f"unexpected {type(e).__name__}: {e} (a bug in fxprune or the "
                                           "model; rerun with --debug for the traceback)")
    finally:
        lib_log.removeHandler(handler)
        lib_log.propagate = propagate
        torch_log.setLevel(torch_level)
    _print_warnings(caught, handler.messages)
    if error:
        print(f"fxprune: error: {_one_line(error)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
