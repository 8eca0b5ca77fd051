"""Save a pruned model so that it loads anywhere, with or without fxprune.

:func:`save` writes a directory:

- ``model.pt2`` -- the pruned model as a ``torch.export`` ExportedProgram. It loads in any environment
  with torch alone: ``torch.export.load("out/model.pt2").module()``; no pickle of fxprune classes.
- ``plan.json`` -- the plans that made it, in the order they were applied, each in the coordinates of
  the model it was applied to, plus the example inputs' shapes and the versions that wrote it.
- ``model.safetensors`` -- the pruned model's state dict (after fine-tuning, say), so that
  :func:`load` can rebuild the model *in the user's own class* by replaying the plans on the unpruned
  model and loading these weights (what Torch-Pruning's ``tp.state_dict``/``tp.load_state_dict`` do).

Example:
    >>> import tempfile, torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(3, 4)
    >>> small = fxprune.prune(m, {"0.weight:0": [1, 5]}, x)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     fxprune.save(small, d, x)
    ...     exported = torch.export.load(f"{d}/model.pt2").module()   # torch alone reads this
    ...     again = fxprune.load(d, model=m)            # the plan replayed on the unpruned model
    >>> torch.allclose(exported(x), small(x)), again.get_submodule("0").out_features, torch.allclose(again(x), small(x))
    (True, 6, True)
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from .errors import SerializationError, user_stacklevel
from .plan import PrunePlan

__all__ = ["save", "load"]

log = logging.getLogger(__name__)

FORMAT = 1
PROGRAM, PLAN, WEIGHTS = "model.pt2", "plan.json", "model.safetensors"


def _as_tuple(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _inputs_from_graph(model: torch.nn.Module) -> Optional[tuple]:
    """Zeros shaped like the placeholders' recorded shapes (fxprune keeps them in ``meta["val"]``)."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    out = []
    for node in model.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        out.append(torch.zeros(val.shape, dtype=val.dtype, device=device))
    return tuple(out)


def _applied(model: torch.nn.Module, plan: Any) -> List[str]:
    """The plan JSONs that produced ``model``, in order."""
    if plan is not None:
        return [(plan if isinstance(plan, PrunePlan) else PrunePlan(plan)).to_json()]
    record = getattr(model, "meta", {}).get("fxprune", {}) if isinstance(model, torch.fx.GraphModule) else {}
    return list(record.get("applied", []))


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
    return None


def save(model: torch.nn.Module, path: str | os.PathLike, example_inputs: Any = None,
         plan: Any = None) -> None:
    """Write ``model`` (a pruned model) to the directory ``path`` (created if missing).

    ``example_inputs`` default to zeros of the shapes the pruned GraphModule recorded. ``plan`` defaults
    to the plans recorded on a GraphModule that :func:`fxprune.prune` returned; pass it for a model
    pruned through its submodules (an ``nn.Module``). When ``torch.export`` cannot export the model,
    ``model.pt2`` is left out with a warning that says why; plan and weights are still written, and
    :func:`load` can rebuild the model from them.
    """
    import safetensors.torch

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SerializationError(f"cannot save to {str(out)!r}: it is a file, not a directory")
    inputs = _as_tuple(example_inputs) if example_inputs is not None else _inputs_from_graph(model)
    applied = _applied(model, plan)
    if not applied:
        raise SerializationError(f"{type(model).__name__} carries no fxprune plan; pass plan= to save it")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "applied": [json.loads(p) for p in applied], "torch": torch.__version__,
            "inputs": [_spec(x) for x in inputs] if inputs is not None else None,
            "class": type(model).__name__}
    from . import __version__
    meta["fxprune"] = __version__
    (out / PLAN).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    safetensors.torch.save_model(model, str(out / WEIGHTS))
    program = out / PROGRAM
    if program.exists():
        program.unlink()  # never leave an older program beside new weights
    if inputs is None:
        warnings.warn(f"fxprune.save: no example inputs for {type(model).__name__}; {PROGRAM} not written "
                      "(pass example_inputs=)", stacklevel=user_stacklevel())
        return
    try:
        ep = torch.export.export(model, inputs)
        torch.export.save(ep, str(program))
    except Exception as e:  # export has many failure types; the plan and weights are still useful
        msg = " ".join(str(e).split())[:300]
        warnings.warn(f"fxprune.save: torch.export could not export {type(model).__name__} "
                      f"({type(e).__name__}: {msg}); {PROGRAM} not written, {PLAN} and {WEIGHTS} were "
                      "(fxprune.load(path, model=unpruned) rebuilds it)", stacklevel=user_stacklevel())


def _read_meta(d: Path) -> dict:
    try:
        meta = json.loads((d / PLAN).read_text())
    except FileNotFoundError:
        raise SerializationError(f"{str(d)!r} holds no {PLAN}: not a directory written by fxprune.save") from None
    except (OSError, ValueError) as e:
        raise SerializationError(f"cannot read {str(d / PLAN)!r}: {e}") from None
    if meta.get("format") != FORMAT:
        raise SerializationError(f"{str(d / PLAN)!r} has format {meta.get('format')!r}; "
                                 f"this fxprune reads format {FORMAT}")
    return meta


def _zeros(meta: dict, model: torch.nn.Module) -> tuple:
    specs = meta.get("inputs")
    if not specs or any(s is None for s in specs):
        raise SerializationError("the saved plan does not record tensor example inputs; pass example_inputs=")
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    return tuple(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"]), device=device) for s in specs)


def load(path: str | os.PathLike, model: Optional[torch.nn.Module] = None,
         example_inputs: Any = None) -> torch.nn.Module:
    """Load what :func:`save` wrote.

    Without ``model``: the ExportedProgram's module (a GraphModule of aten ops; needs ``model.pt2``).
    With ``model`` (the *unpruned* model, left untouched): the saved plans are replayed on it with
    :func:`fxprune.prune` and the saved weights loaded into the result, which is the same kind of model
    ``prune`` returns for it. ``example_inputs`` default to zeros of the recorded shapes.
    """
    d = Path(path)
    if model is None:
        program = d / PROGRAM
        if not program.is_file():
            _read_meta(d)  # a clearer error when the directory is not ours at all
            raise SerializationError(f"{str(program)!r} is missing (torch.export failed when it was saved); "
                                     "pass the unpruned model: fxprune.load(path, model=...)")
        return torch.export.load(str(program)).module()
    import safetensors.torch

    from .rewrite import prune

    meta = _read_meta(d)
    inputs = _as_tuple(example_inputs) if example_inputs is not None else _zeros(meta, model)
    small: torch.nn.Module = model
    for entry in meta["applied"]:
        small = prune(small, PrunePlan(entry), inputs)
    if small is model:
        raise SerializationError(f"{str(d / PLAN)!r} holds no plan to replay")
    from .compensate import add_saved_biases

    with safetensors.safe_open(str(d / WEIGHTS), "pt") as f:  # biases that bias compensation created
        add_saved_biases(small, list(f.keys()))
    missing, unexpected = safetensors.torch.load_model(small, str(d / WEIGHTS), strict=False)
    if missing or unexpected:
        raise SerializationError(f"the saved weights do not fit the replayed model: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]} (was it saved from a different model?)")
    return small


def saved_files(path: str | os.PathLike) -> Sequence[str]:
    """The files :func:`save` wrote into ``path`` (for messages)."""
    d = Path(path)
    return [name for name in (PROGRAM, PLAN, WEIGHTS) if (d / name).is_file()]
