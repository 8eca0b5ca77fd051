"""Reusable checks on a pruned GraphModule.

Each check takes the pruned model ``small`` and its example inputs and raises ``AssertionError`` with a
message naming what went wrong. None of them mutate ``small`` except :func:`check_train_step`, which
works on a deep copy.

    check_train_step(small, inputs)                 # forward, sum(outputs).backward(), SGD step
    check_save_load(small, inputs, tmp_path)        # torch.save / torch.load(weights_only=False)
    check_jit(small, inputs, reference=gm)          # torch.jit.script (trace only if gm can't script either)
    check_jit_trace(small, inputs)                  # torch.jit.trace
    check_onnx(small, inputs, tmp_path)             # torch.onnx.export + onnxruntime agreement
    check_export_routes(model, small, inputs, tmp)  # TorchScript + ONNX by whatever route the unpruned takes
"""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "as_tuple",
    "assert_outputs_close",
    "assert_state_unchanged",
    "check_export_routes",
    "check_jit",
    "check_jit_trace",
    "check_onnx",
    "check_save_load",
    "check_train_step",
    "expanded_plan",
    "flatten_outputs",
    "matched_detections",
    "param_count",
    "run_model",
    "state_snapshot",
]


# ---------------------------------------------------------------------------------------------- outputs

def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """All tensors in ``out`` in pytree order (dicts in insertion order, like torch.export/ONNX)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        res: list[torch.Tensor] = []
        for k in out:
            res.extend(flatten_outputs(out[k]))
        return res
    if isinstance(out, (tuple, list)):
        res = []
        for v in out:
            res.extend(flatten_outputs(v))
        return res
    if hasattr(out, "__dict__") and not isinstance(out, torch.nn.Module):
        # dataclass-like output objects (e.g. ModelOutput without Mapping behaviour)
        return flatten_outputs({k: v for k, v in vars(out).items() if not k.startswith("_")})
    return []


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple (a lone tensor is accepted like fxprune accepts it)."""
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def run_model(model: Callable, inputs: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return flatten_outputs(model(*as_tuple(inputs)))


def _tol(ref: torch.Tensor, atol: float) -> float:
    """Absolute tolerance, scaled by max |ref| when the outputs are large."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return atol * max(1.0, scale)


def assert_outputs_close(expected: Sequence[torch.Tensor], got: Sequence[Any], atol: float, what: str) -> None:
    assert len(expected) == len(got), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got)):
        g = torch.as_tensor(g)
        e = e.detach().cpu()
        assert tuple(e.shape) == tuple(g.shape), f"{what}: output {i} shape {tuple(g.shape)} != {tuple(e.shape)}"
        if e.numel() == 0:
            continue
        if not e.is_floating_point():
            assert torch.equal(e, g.to(e.dtype)), f"{what}: integer output {i} differs"
            continue
        g = g.to(e.dtype)
        assert torch.isfinite(g).all() == torch.isfinite(e).all(), f"{what}: output {i} has non-finite values"
        diff = float((e - g).abs().max())
        tol = _tol(e, atol)
        assert diff <= tol, f"{what}: output {i} max |diff| = {diff:.3g} > {tol:.3g}"


# ---------------------------------------------------------------------------------------------- state

def state_snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Everything needed to assert later that ``model`` was not touched: cloned state, param identity."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "params": {k: id(p) for k, p in model.named_parameters(remove_duplicate=False)},
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "modules": {k: type(m) for k, m in model.named_modules()},
    }


def assert_state_unchanged(model: torch.nn.Module, snap: dict[str, Any]) -> None:
    state = model.state_dict(keep_vars=True)
    assert set(state) == set(snap["state"]), (
        f"state_dict keys changed: added {sorted(set(state) - set(snap['state']))[:5]}, "
        f"removed {sorted(set(snap['state']) - set(state))[:5]}")
    for k, v in state.items():
        old = snap["state"][k]
        assert tuple(v.shape) == tuple(old.shape), f"{k}: shape changed {tuple(old.shape)} -> {tuple(v.shape)}"
        assert v.dtype == old.dtype and torch.equal(v.detach(), old), f"{k}: values changed"
    params = {k: id(p) for k, p in model.named_parameters(remove_duplicate=False)}
    assert params == snap["params"], "parameter objects of the model were replaced"
    modules = {k: type(m) for k, m in model.named_modules()}
    assert modules == snap["modules"], "submodules of the model were added, removed or replaced"


def tiny_llama() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 2-layer transformers Llama (hidden 64, 4 heads over 2 kv heads, MLP 128, vocab 100) in eval mode,
    seeded, and 8 token ids for it."""
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 100, (1, 8))


def zeroed(model: torch.nn.Module, slices: Mapping[str, tuple[int, Sequence[int]]]) -> torch.nn.Module:
    """The pruning oracle: a deep copy of ``model`` with ``slices`` = {parameter: (dim, indices)} set to zero
    (what a pruned model must compute when it removed exactly those slices)."""
    oracle = copy.deepcopy(model)
    params = dict(oracle.named_parameters())
    with torch.no_grad():
        for name, (dim, idx) in slices.items():
            params[name].index_fill_(dim, torch.tensor(list(idx), dtype=torch.long), 0.0)
    return oracle


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expanded_plan(small: torch.nn.Module) -> dict[str, list[int]]:
    """The expanded plan recorded by fxprune.prune in ``small.meta["fxprune"]["plan"]`` as a dict."""
    meta = getattr(small, "meta", None)
    assert isinstance(meta, Mapping) and "fxprune" in meta, "pruned model has no meta['fxprune']"
    plan = meta["fxprune"]["plan"]
    assert isinstance(plan, Mapping), f"meta['fxprune']['plan'] is {type(plan).__name__}, not a mapping"
    return {str(k): [int(i) for i in v] for k, v in plan.items()}


# ---------------------------------------------------------------------------------------------- checks

def check_train_step(small: torch.nn.Module, inputs: Any, lr: float = 0.1) -> None:
    """Forward in train mode, backward of the sum of all outputs, one SGD step.

    Every parameter that received a gradient must change, and nothing may become NaN/inf. Runs on a deep
    copy so ``small`` stays as it was.
    """
    model = copy.deepcopy(small)
    model.train()
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in as_tuple(inputs))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        outs = flatten_outputs(model(*args))
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            raise
        # BatchNorm in train mode needs more than one value per channel: use a batch of two.
        args = tuple(torch.cat([a, a * 0.5 + 0.1]) if isinstance(a, torch.Tensor) and a.is_floating_point()
                     else a for a in args)
        outs = flatten_outputs(model(*args))
    outs = [o for o in outs if o.is_floating_point() and o.requires_grad]
    assert outs, "no differentiable output"
    for o in outs:
        assert torch.isfinite(o).all(), "non-finite forward output in train mode"
    loss = sum(o.float().sum() for o in outs)
    loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.step()
    with_grad = 0
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        assert torch.isfinite(p.grad).all(), f"{n}: non-finite gradient"
        assert torch.isfinite(p).all(), f"{n}: non-finite value after SGD step"
        # an update that float32 can represent must show up in the parameter
        if ((lr * p.grad).abs() > 1e-6 * (before[n].abs() + 1)).any():
            assert not torch.equal(p.detach(), before[n]), f"{n}: has a nonzero grad but did not change"
        with_grad += 1
    assert with_grad > 0, "no parameter received a gradient"


def check_save_load(small: torch.nn.Module, inputs: Any, tmp_path) -> torch.nn.Module:
    """torch.save the whole module, torch.load it back (weights_only=False); outputs must be equal."""
    small.eval()
    path = os.path.join(str(tmp_path), "small.pt")
    torch.save(small, path)
    loaded = torch.load(path, weights_only=False)
    loaded.eval()
    exp, got = run_model(small, inputs), run_model(loaded, inputs)
    assert len(exp) == len(got)
    for i, (e, g) in enumerate(zip(exp, got)):
        assert torch.equal(e, g), f"save/load: output {i} differs"
    # state_dict round trip into a fresh deep copy too
    sd_path = os.path.join(str(tmp_path), "small_sd.pt")
    torch.save(small.state_dict(), sd_path)
    fresh = copy.deepcopy(small)
    fresh.load_state_dict(torch.load(sd_path, weights_only=True))
    for i, (e, g) in enumerate(zip(exp, run_model(fresh.eval(), inputs))):
        assert torch.equal(e, g), f"state_dict round trip: output {i} differs"
    return loaded


def _try_script(model: torch.nn.Module):
    """``(scripted, None)`` or ``(None, exception)``."""
    try:
        return torch.jit.script(model), None
    except Exception as e:  # noqa: BLE001 - the caller decides whether the failure is acceptable
        return None, e


def check_jit(small: torch.nn.Module, inputs: Any, reference: torch.nn.Module | None = None,
              atol: float = 1e-5) -> str:
    """torch.jit.script ``small``; outputs equal eager within ``atol``.

    Falls back to torch.jit.trace only when scripting also fails on ``reference`` (the unpruned traced
    model): a pruned model must script whenever its original does. Returns "script" or "trace".
    """
    small.eval()
    args = as_tuple(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted, err = _try_script(small)
        how = "script"
        if scripted is None:
            if reference is None:
                raise AssertionError(f"torch.jit.script failed on the pruned model: {err}") from err
            _, ref_err = _try_script(reference.eval())
            if ref_err is None:
                raise AssertionError(
                    f"torch.jit.script works on the unpruned model but fails on the pruned one: {err}") from err
            scripted = torch.jit.trace(small, args, check_trace=False, strict=False)
            how = "trace"
    exp = run_model(small, args)
    got = run_model(scripted, args)
    assert_outputs_close(exp, got, atol, f"jit.{how}")
    return how


def check_jit_trace(small: torch.nn.Module, inputs: Any, atol: float = 1e-5) -> None:
    """torch.jit.trace ``small`` and compare with eager; also on a second, different input."""
    small.eval()
    args = as_tuple(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(small, args, strict=False)
    assert_outputs_close(run_model(small, args), run_model(traced, args), atol, "jit.trace")
    other = tuple(torch.randn_like(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                  for a in args)
    assert_outputs_close(run_model(small, other), run_model(traced, other), atol, "jit.trace (new input)")


def _is_detections(out: Any) -> bool:
    """A torchvision detector's eval output: a list of per-image dicts holding ``boxes`` and ``scores``."""
    return (isinstance(out, list) and len(out) > 0
            and all(isinstance(o, Mapping) and "boxes" in o and "scores" in o for o in out))


def matched_detections(out: list[Mapping[str, torch.Tensor]], flat: Sequence[Any]) -> list[torch.Tensor]:
    """``flat`` (the tensors of a detector output shaped like ``out``, in pytree order, e.g. onnxruntime's)
    with each image's detections reordered to match ``out``'s one to one (same label, nearest box and
    score: an optimal assignment). Detections are a set: NMS and top-k emit boxes whose scores differ by
    float noise in either order. A different count is left as it is, for the shape check to report."""
    from scipy.optimize import linear_sum_assignment

    flat = [torch.as_tensor(t) for t in flat]
    res, i = [], 0
    for o in out:
        d = dict(zip(o.keys(), flat[i:i + len(o)]))
        i += len(o)
        n = o["scores"].shape[0]
        if d["scores"].shape[0] != n or n == 0:
            res.extend(d.values())
            continue
        cost = torch.cdist(o["boxes"].double(), d["boxes"].double(), p=float("inf"))
        cost += (o["scores"].double()[:, None] - d["scores"].double()[None, :]).abs() * 1e3
        if "labels" in o:
            cost += (o["labels"][:, None] != d["labels"][None, :]).double() * 1e9
        _, cols = linear_sum_assignment(cost.numpy())
        order = torch.as_tensor(cols)
        res.extend(t[order] if t.ndim and t.shape[0] == n else t for t in d.values())
    return res


def _onnx_export(model: torch.nn.Module, args: tuple[Any, ...], path: str, **kw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, **kw)


def check_onnx(small: torch.nn.Module, inputs: Any, tmp_path, atol: float = 1e-4,
               reference: torch.nn.Module | None = None) -> str:
    """torch.onnx.export with the default exporter, run with onnxruntime, compare with eager.

    If the default exporter fails and ``reference`` (the unpruned model) also fails with it, fall back to
    the TorchScript exporter (``dynamo=False``). Returns "default" or "torchscript".
    """
    import onnx
    import onnxruntime as ort

    small.eval()
    args = as_tuple(inputs)
    path = os.path.join(str(tmp_path), "small.onnx")
    how = "default"
    try:
        _onnx_export(small, args, path)
    except Exception as err:
        if reference is None:
            raise AssertionError(f"torch.onnx.export (default exporter) failed on the pruned model: {err}") from err
        try:
            _onnx_export(reference.eval(), args, os.path.join(str(tmp_path), "reference.onnx"))
        except Exception:  # noqa: BLE001 - the unpruned model fails too: not fxprune's fault
            _onnx_export(small, args, path, dynamo=False)
            how = "torchscript"
        else:
            raise AssertionError(
                f"default ONNX exporter works on the unpruned model but fails on the pruned one: {err}") from err
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # nested inputs (a detector's list of images) become one ONNX input per tensor, in pytree order
    tensors = [a for a in flatten_outputs(args) if isinstance(a, torch.Tensor)]
    feeds = {}
    onnx_inputs = sess.get_inputs()
    assert len(onnx_inputs) == len(tensors), f"ONNX model has {len(onnx_inputs)} inputs, expected {len(tensors)}"
    for spec, t in zip(onnx_inputs, tensors):
        feeds[spec.name] = t.detach().cpu().numpy()
    got = [torch.from_numpy(o) for o in sess.run(None, feeds)]
    with torch.no_grad():
        out = small(*args)
    exp = flatten_outputs(out)
    if _is_detections(out):  # a set of boxes: near-tied scores may come out in either order
        got = matched_detections(out, got)
    assert_outputs_close(exp, got, atol, f"onnx ({how} exporter) vs eager")
    return how


def _failure(fn: Callable[[], Any]) -> str | None:
    """None when ``fn()`` works, else the error in one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as e:  # noqa: BLE001 - any failure of the unpruned model means "route not available"
        return " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return None


def check_export_routes(model: torch.nn.Module, small: torch.nn.Module, inputs: Any, tmp_path,
                        what: str, atol: float = 1e-4) -> str:
    """Export ``small`` the way the *unpruned* ``model`` exports, and compare with eager.

    ``what`` is ``"jit"`` (``torch.jit.trace``; ``torch.jit.script`` when the unpruned model does not trace
    but scripts, as torchvision's detectors do) or ``"onnx"`` (the default exporter; the TorchScript-based
    one, ``dynamo=False``, when only that exports the unpruned model). Returns the route taken, or
    ``"skip: <why>"`` when the unpruned model has no route (nothing to hold the pruned one to).
    """
    args = as_tuple(inputs)
    model.eval()
    if what == "jit":
        why = _failure(lambda: torch.jit.trace(model, args, strict=False, check_trace=False))
        if why is None:
            check_jit_trace(small, args)
            return "trace"
        why_script = _failure(lambda: torch.jit.script(model))
        if why_script is None:
            check_jit(small, args)  # must script, since the unpruned model does
            return "script"
        return f"skip: unpruned model does not jit.trace ({why}) nor jit.script ({why_script})"
    path = os.path.join(str(tmp_path), "unpruned.onnx")
    why = _failure(lambda: torch.onnx.export(model, args, path))
    if why is None:
        route = "default"
    else:
        why_ts = _failure(lambda: torch.onnx.export(model, args, path, dynamo=False))
        if why_ts is not None:
            return f"skip: unpruned model does not export to ONNX ({why}; dynamo=False: {why_ts})"
        route = "torchscript"
    try:
        return check_onnx(small, args, tmp_path, atol=atol, reference=None if route == "default" else model)
    except AssertionError as err:
        if "vs eager" not in str(err):
            raise
        # the pruned model exports but onnxruntime disagrees with eager: is the unpruned model any better?
        ref_dir = os.path.join(str(tmp_path), "unpruned")
        os.makedirs(ref_dir, exist_ok=True)
        why_ref = _failure(lambda: check_onnx(model, args, ref_dir, atol=atol, reference=model))
        if why_ref is None:
            raise
        return f"skip: onnxruntime disagrees with eager on the unpruned model too ({why_ref})"
