"""Prune a (sharded) safetensors checkpoint tensor by tensor, without ever loading the model.

:func:`prune_checkpoint` builds the model from ``config.json`` on the ``meta`` device, analyses it and
expands the plan over every coupled parameter (the same closure :func:`fxprune.prune` applies), prunes the
meta model to get the new config (and, where layers differ in width, the ``fxprune.json`` that
:func:`fxprune.hf.from_pretrained` reads), then streams the weights: every source shard is memory-mapped,
one tensor is read at a time, sliced with ``index_select`` along each of its planned dims and appended to
the output shard. The output file's header is computed from the shapes before any data is read, so the
bytes go straight to disk: the memory held is the tensor in hand and its kept part, not a whole shard.
Output shards mirror the input shards (same names, same grouping, smaller), with a new index whose
``total_size`` is the new byte count. Everything is written into a temporary folder next to ``dst_dir``
and renamed at the end: a failure leaves neither a half-written ``dst_dir`` nor a changed source.

:func:`checkpoint_scores` streams the same way to accumulate the per-class L2 norms
:func:`fxprune.plan_by_ratio` ranks by, so a plan is chosen without the weights in memory; precomputed
scores (activation statistics from a calibration run elsewhere) go through :func:`plan_from_scores`.

Example:
    >>> import tempfile, os, torch, transformers, fxprune
    >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     transformers.LlamaForCausalLM(cfg).save_pretrained(f"{d}/src", max_shard_size="20KB")
    ...     plan = {f"model.layers.{i}.mlp.gate_proj.weight:0": list(range(16)) for i in range(2)}
    ...     info = fxprune.hf.prune_checkpoint(f"{d}/src", plan, f"{d}/dst", progress=False)
    ...     back = transformers.AutoModelForCausalLM.from_pretrained(f"{d}/dst")
    >>> info["config"], back.model.layers[1].mlp.down_proj.in_features, info["shards"] > 1
    ({'intermediate_size': 48}, 48, True)
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import struct
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import PlanError, SerializationError, user_stacklevel
from ..plan import PrunePlan, parse_key
from ..progress import Progress

__all__ = ["prune_checkpoint", "checkpoint_scores", "CheckpointScores", "plan_from_scores", "meta_model"]

log = logging.getLogger(__name__)

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_OWN = {"config.json", _INDEX, "fxprune.json", "fxprune_buffers.safetensors"}
# bytes per element of the safetensors dtypes (the header names them; no tensor is read to learn it)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


# -- the source checkpoint ------------------------------------------------------------------------
def _weight_map(src: str) -> Tuple[Dict[str, str], List[str], Optional[dict]]:
    """``{tensor: shard file}``, the shard files in order, and the parsed index (None for one file)."""
    index_path = os.path.join(src, _INDEX)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                index = json.load(f)
            wmap = dict(index["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SerializationError(f"{index_path} is not a safetensors index: {e}") from None
        shards = sorted(set(wmap.values()))
        missing = [s for s in shards if not os.path.exists(os.path.join(src, s))]
        if missing:
            raise SerializationError(f"{index_path} names shard files that do not exist: {missing[:3]}")
        return wmap, shards, index
    single = os.path.join(src, _SINGLE)
    if not os.path.exists(single):
        raise SerializationError(f"{src} holds neither {_INDEX} nor {_SINGLE} (only safetensors checkpoints "
                                 "are streamed)")
    from safetensors import safe_open

    with safe_open(single, "pt") as f:
        return {k: _SINGLE for k in f.keys()}, [_SINGLE], None


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Parameters are created on ``meta`` while buffers stay real: a RoPE ``inv_freq`` is computed from the
    config, and a pruned checkpoint whose head dims shrink must carry its sliced values."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        register(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def meta_model(src_dir: str) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """The model class ``config.json`` names (its ``architectures``, else the causal-LM auto class), built on
    the ``meta`` device, and its non-persistent buffers as computed on the CPU (``{qualname: tensor}``).

    Example:
        >>> import tempfile, transformers
        >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     cfg.save_pretrained(d)
        ...     m, bufs = meta_model(d)
        >>> m.lm_head.weight.device.type, sorted(bufs)
        ('meta', ['model.rotary_emb.inv_freq', 'model.rotary_emb.original_inv_freq'])
    """
    import transformers

    cfg_path = os.path.join(src_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise SerializationError(f"{src_dir} has no config.json: the model cannot be built to plan the "
                                 "pruning")
    try:
        cfg = transformers.AutoConfig.from_pretrained(src_dir)
    except Exception as e:
        raise SerializationError(f"{cfg_path} could not be read: {type(e).__name__}: {e}") from e
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    with _params_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)
    buffers = {}
    for name, m in model.named_modules():
        for b in m._non_persistent_buffers_set:
            t = m._buffers.get(b)
            if isinstance(t, torch.Tensor):
                buffers[f"{name}.{b}" if name else b] = t.detach().clone()
    return model.to("meta").eval(), buffers


def _example_inputs(example_inputs: Any) -> Any:
    if example_inputs is not None:
        return example_inputs
    from ..frontend.export import Inputs

    return Inputs(torch.zeros(1, 8, dtype=torch.long), use_cache=False)


# -- plan closure -----------------------------------------------------------------------------------
def _keeps(exp_plan: Mapping[str, List[int]], shapes: Dict[str, Tuple[int, ...]]
           ) -> Dict[str, Dict[int, torch.Tensor]]:
    """``{canonical tensor name: {dim: kept indices}}`` from an expanded plan (removed indices)."""
    out: Dict[str, Dict[int, torch.Tensor]] = {}
    for key, removed in exp_plan.items():
        name, dim = parse_key(key)
        keep = np.ones(shapes[name][dim], bool)
        keep[np.asarray(removed, dtype=np.int64)] = False
        out.setdefault(name, {})[dim] = torch.from_numpy(np.nonzero(keep)[0])
    return out


def _slice(t: torch.Tensor, keep: Mapping[int, torch.Tensor]) -> torch.Tensor:
    for d, k in sorted(keep.items()):
        t = t.index_select(d, k)
    return t.contiguous()


# -- writing ------------------------------------------------------------------------------------------
def _write_shard(src_path: str, dst_path: str, canon: Dict[str, str],
                 keeps: Dict[str, Dict[int, torch.Tensor]], tick: Any) -> Tuple[int, int]:
    """Stream one shard: the header from the new shapes, then each tensor's kept bytes as it is read.
    Returns (bytes written for tensors, tensors sliced)."""
    from safetensors import safe_open

    with safe_open(src_path, "pt") as f:
        names = list(f.keys())
        header: Dict[str, Any] = {}
        offset = 0
        for name in names:
            sl = f.get_slice(name)
            dtype, shape = sl.get_dtype(), list(sl.get_shape())
            if dtype not in _ITEMSIZE:
                raise SerializationError(f"{src_path}: tensor {name!r} has dtype {dtype}, which this writer "
                                         "does not know")
            for d, k in keeps.get(canon.get(name, name), {}).items():
                shape[d] = len(k)
            n = math.prod(shape) * _ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = f.metadata() or {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        sliced = 0
        with open(dst_path, "wb") as out:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            for name in names:
                keep = keeps.get(canon.get(name, name))
                t = f.get_tensor(name)
                if keep:
                    t = _slice(t, keep)
                    sliced += 1
                data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                lo, hi = header[name]["data_offsets"]
                if data.nbytes != hi - lo:
                    raise SerializationError(f"{src_path}: tensor {name!r} gave {data.nbytes} bytes, its "
                                             f"header says {hi - lo}")
                out.write(memoryview(data))
                del t, data  # the tensor in hand is all this holds
                tick()
    return offset, sliced


def _check_dirs(src: str, dst: str) -> None:
    if not os.path.isdir(src):
        raise SerializationError(f"checkpoint folder {src} does not exist")
    rs, rd = os.path.realpath(src), os.path.realpath(dst)
    if rd == rs or rd.startswith(rs + os.sep):
        raise SerializationError(f"dst_dir {dst} is the source checkpoint {src} or inside it: write the "
                                 "pruned checkpoint to a new folder")
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise SerializationError(f"dst_dir {dst} exists and is not an empty folder; it is not overwritten")
    if os.path.exists(os.path.join(src, "fxprune.json")):
        raise SerializationError(f"{src} holds fxprune.json (layers of different widths): streaming such a "
                                 "checkpoint is not supported; load it with fxprune.hf.from_pretrained")


def _canonical_names(graph: Any, wmap: Mapping[str, str]) -> Dict[str, str]:
    """Checkpoint tensor name -> the analysis's canonical name (tied ``lm_head.weight`` -> the embedding)."""
    canon = graph.ctx.canonical
    return {k: canon.get(k, k) for k in wmap}


def prune_checkpoint(src_dir: str, plan: Any, dst_dir: str, *, progress: bool = True,
                     example_inputs: Any = None, strict: bool = False) -> Dict[str, Any]:
    """Write ``src_dir`` (``config.json`` + ``model.safetensors`` or sharded ``model-*.safetensors`` with
    their index) pruned by ``plan`` to ``dst_dir``, one tensor at a time; other files are copied unchanged.

    ``plan`` is a :class:`~fxprune.PrunePlan` (or mapping) in the model's coordinates; it is closed over
    every coupled parameter as :func:`fxprune.prune` closes it (``strict=True`` raises instead of closing).
    ``example_inputs`` default to 8 token ids, without cache. Returns a summary: ``shards``, ``tensors``,
    ``sliced``, ``bytes_in``, ``bytes_out``, ``config`` (the changed config fields), ``fxprune_json``
    (whether :func:`fxprune.hf.from_pretrained` is needed to load it) and ``plan`` (the expanded plan).
    """
    from ..analyze import analyze
    from ..rewrite import prune
    from .checkpoint import describe, write_description
    from .config import config_mismatches

    src, dst = os.path.abspath(src_dir), os.path.abspath(dst_dir)
    _check_dirs(src, dst)
    wmap, shards, index = _weight_map(src)
    model, cpu_buffers = meta_model(src)
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan(plan)
    _check_plan(src, plan, model, wmap, cpu_buffers)  # before the analysis: a typo costs no export
    if not len(plan):
        warnings.warn(f"fxprune: the plan is empty; {src} is copied to {dst} with nothing pruned",
                      stacklevel=user_stacklevel())
    inputs = _example_inputs(example_inputs)
    graph = analyze(model, inputs)
    canon = _canonical_names(graph, wmap)
    stored = set(canon.values())
    exp = graph.expand(plan)  # unknown keys, indices out of range, pinned or emptied groups raise here
    shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters(remove_duplicate=False))
              + list(model.named_buffers(remove_duplicate=False))}
    shapes.update({graph.ctx.canonical.get(n, n): s for n, s in shapes.items()})
    _check_shapes(src, wmap, canon, shapes)
    keeps = _keeps(exp.plan, shapes)
    lost = sorted(n for n in keeps if n not in stored and n not in cpu_buffers)
    if lost:
        raise PlanError(f"the plan slices {lost[:3]}, which the checkpoint in {src} does not hold")
    small = prune(model, plan, inputs, strict=strict)  # the module target's check runs on fake tensors
    if not hasattr(small, "config"):
        raise SerializationError(f"pruning the meta {type(model).__name__} did not give its own class (see "
                                 "the warning above): its config cannot be written")
    changes = {k: v for k, v in small.config.to_dict().items() if model.config.to_dict().get(k) != v}
    own = bool(config_mismatches(small)) or any(n in cpu_buffers for n in keeps)

    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.fxprune-", dir=os.path.dirname(dst))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would be the final folder's mode
    bar = Progress(len(wmap), progress, "prune_checkpoint", unit="tensor")
    try:
        try:  # first: transformers validates the config it writes (hidden size vs heads)
            small.config.save_pretrained(tmp)
        except Exception as e:
            raise SerializationError(f"the pruned config of {src} does not save: {type(e).__name__}: "
                                     f"{str(e).strip().splitlines()[-1]}") from e
        total, sliced = 0, 0
        for shard in shards:
            n, s = _write_shard(os.path.join(src, shard), os.path.join(tmp, shard), canon, keeps, bar.update)
            total, sliced = total + n, sliced + s
        if index is not None:
            new_index = copy.deepcopy(index)
            new_index.setdefault("metadata", {})["total_size"] = total
            if "total_parameters" in new_index["metadata"]:
                new_index["metadata"]["total_parameters"] = sum(p.numel() for p in small.parameters())
            with open(os.path.join(tmp, _INDEX), "w") as f:
                json.dump(new_index, f, indent=2, sort_keys=True)
        if own:
            info, buffers = describe(small)
            real = {n: _slice(cpu_buffers[n], keeps.get(n, {})) for n in buffers}
            write_description(tmp, info, real)
            warnings.warn(f"fxprune: {dst} holds fxprune.json (the config cannot describe the pruned "
                          "layers); load it with fxprune.hf.from_pretrained", stacklevel=user_stacklevel())
        for name in sorted(os.listdir(src)):
            if name in _OWN or name in shards:
                continue
            path = os.path.join(src, name)
            (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, os.path.join(tmp, name))
        if os.path.isdir(dst):
            os.rmdir(dst)  # checked empty above
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    bytes_in = sum(os.path.getsize(os.path.join(src, s)) for s in shards)
    bytes_out = sum(os.path.getsize(os.path.join(dst, s)) for s in shards)
    log.info("prune_checkpoint: %d tensors in %d shards, %d sliced, %.1f -> %.1f MB", len(wmap), len(shards),
             sliced, bytes_in / 1e6, bytes_out / 1e6)
    return {"shards": len(shards), "tensors": len(wmap), "sliced": sliced, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "total_size": total, "config": changes, "fxprune_json": own,
            "plan": exp.plan}


def _check_plan(src: str, plan: PrunePlan, model: nn.Module, wmap: Mapping[str, str],
                cpu_buffers: Mapping[str, torch.Tensor]) -> None:
    """Every plan key names a tensor the checkpoint holds (under any of its tied names), within its shape."""
    import difflib

    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    names_of: Dict[int, set] = {}
    for n, t in tensors.items():
        names_of.setdefault(id(t), set()).add(n)
    for key, idx in plan.items():
        name, dim = parse_key(key)
        t = tensors.get(name)
        if t is None:
            close = difflib.get_close_matches(name, list(wmap), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PlanError(f"plan entry {key!r}: the model in {src} has no tensor {name!r}{hint}")
        if not names_of[id(t)] & set(wmap) and name not in cpu_buffers:
            raise PlanError(f"plan entry {key!r}: the checkpoint in {src} holds no tensor {name!r}")
        if not 0 <= dim < t.ndim:
            raise PlanError(f"plan entry {key!r}: dim {dim} out of range for {name} of shape {list(t.shape)}")
        if idx and idx[-1] >= t.shape[dim]:
            raise PlanError(f"plan entry {key!r}: indices {[i for i in idx if i >= t.shape[dim]][:5]} out of "
                            f"range for size {t.shape[dim]}")


def _check_shapes(src: str, wmap: Mapping[str, str], canon: Mapping[str, str],
                  shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """Every stored tensor has the shape the config gives it (read from the headers only)."""
    from safetensors import safe_open

    by_shard: Dict[str, List[str]] = {}
    for name, shard in wmap.items():
        by_shard.setdefault(shard, []).append(name)
    unknown = []
    for shard, names in by_shard.items():
        with safe_open(os.path.join(src, shard), "pt") as f:
            held = set(f.keys())
            for name in names:
                if name not in held:
                    raise SerializationError(f"{_INDEX} puts {name!r} in {shard}, which does not hold it")
                want = shapes.get(canon[name])
                got = tuple(f.get_slice(name).get_shape())
                if want is None:
                    unknown.append(name)
                elif got != want:
                    raise SerializationError(f"{shard}: tensor {name!r} has shape {list(got)}, the model "
                                             f"built from config.json has {list(want)}")
    if unknown:
        warnings.warn(f"fxprune: {len(unknown)} tensors of {src} are not parameters of the model built from "
                      f"its config ({unknown[:3]}); they are copied unchanged", stacklevel=user_stacklevel())


# -- scores ------------------------------------------------------------------------------------------
class CheckpointScores:
    """Per-(tensor, dim) sums of squares streamed from a checkpoint, in the analysis's canonical names:
    what :func:`fxprune.plan_by_ratio` computes from the loaded weights (made by :func:`checkpoint_scores`,
    whose example shows it)."""

    def __init__(self, graph: Any, sums: Dict[Tuple[str, int], np.ndarray]):
        self.graph, self.sums = graph, sums

    def class_scores(self, group: Any) -> np.ndarray:
        """L2 norm of every removable class of ``group`` (as :func:`fxprune.select.class_scores`)."""
        from ..select import _GroupIndex, _scores

        return np.sqrt(_scores(group, _GroupIndex(group), self.sums))

    def scores(self, heads: bool = False) -> Dict[str, np.ndarray]:
        """``{group key: class scores}`` of every unpinned group (heads as classes with ``heads``)."""
        out = {}
        for g in self.graph.groups:
            g = g.heads() if heads and g.head_classes else g
            if not g.pinned and g.all_classes:
                out[g.key] = self.class_scores(g)
        return out

    def per_dim(self) -> Dict[str, torch.Tensor]:
        """The streamed sums of squares as ``{"<param>:<dim>": 1-D float64 tensor}``: the scores format of
        :mod:`fxprune.scores` (``save_scores``, ``plan_by_ratio(importance=...)``, ``Pruner.from_scores``),
        whose per-class sum ranks the classes as the L2 norm does."""
        return {f"{n}:{d}": torch.from_numpy(np.asarray(v, dtype=np.float64))
                for (n, d), v in self.sums.items()}

    def plan_by_ratio(self, ratio: float, heads: bool = False) -> PrunePlan:
        """The plan :func:`fxprune.plan_by_ratio` picks on the loaded model with these weights."""
        return plan_from_scores(self.graph, self.scores(heads), ratio, heads=heads)


def plan_from_scores(graph: Any, scores: Any, ratio: float, heads: bool = False) -> PrunePlan:
    """Remove ``floor(ratio * n)`` of every scored group's ``n`` classes, lowest score first, with the same
    greedy and closure as :func:`fxprune.plan_by_ratio`. ``scores`` is ``{group key: per-class scores}``
    (for instance activation statistics computed elsewhere) or the path of a JSON file holding that.

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = fxprune.analyze(m, torch.randn(1, 4))
        >>> plan_from_scores(graph, {"0.weight:0": [5., 1., 2., 8., 3., 4., 7., 6.]}, 0.25)
        PrunePlan({'0.weight:0': [1, 2]})
    """
    from ..select import plan_by_ratio

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if isinstance(scores, (str, os.PathLike)):
        try:
            with open(scores) as f:
                scores = json.load(f)
        except (OSError, ValueError) as e:
            raise SerializationError(f"scores file {scores}: {e}") from None
    groups = {}
    for g in graph.groups:
        g = g.heads() if heads and g.head_classes else g
        groups[g.key] = g
    arrays: Dict[str, np.ndarray] = {}
    for key, s in scores.items():
        g = groups.get(key)
        if g is None or g.pinned:
            raise PlanError(f"scores name group {key!r}, which is not a prunable group of this analysis")
        arrays[key] = np.asarray(s, dtype=np.float64)
        if arrays[key].shape != (len(g.all_classes),):
            raise PlanError(f"scores of group {key!r}: {arrays[key].shape[0] if arrays[key].ndim else 0} "
                            f"values for {len(g.all_classes)} classes")
    from ..scores import _warn_unscored

    _warn_unscored([k for k, g in groups.items() if not g.pinned and g.all_classes and k not in arrays],
                   " (plan_from_scores)")
    # the greedy and closure of plan_by_ratio; groups without scores keep everything
    return plan_by_ratio(graph, ratio, heads, importance=lambda g, _model: arrays.get(g.key))


def checkpoint_scores(src_dir: str, graph_or_model: Any = None, criterion: str = "l2", *,
                      example_inputs: Any = None) -> CheckpointScores:
    """Stream the checkpoint in ``src_dir`` once and accumulate, for every parameter dim of an unpinned
    group, the sums of squares :func:`fxprune.plan_by_ratio` ranks by. ``graph_or_model``: an analysis
    (``fxprune.analyze`` of the model, on ``meta`` or not), a model to analyse, or None to build the
    model from ``config.json`` on ``meta``. Only ``criterion="l2"`` streams; activation statistics need
    a forward: compute them elsewhere and pass them to :func:`plan_from_scores`.

    Example:
        >>> import tempfile, torch, transformers, fxprune
        >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
        >>> m = transformers.LlamaForCausalLM(cfg).eval()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     m.save_pretrained(d)
        ...     streamed = checkpoint_scores(d).plan_by_ratio(0.25)
        >>> streamed == fxprune.plan_by_ratio(fxprune.analyze(m, fxprune.Inputs(torch.zeros(1, 8,
        ...     dtype=torch.long), use_cache=False)), 0.25)
        True
    """
    from safetensors import safe_open

    from ..analyze import ChannelGraph, analyze
    from ..select import _sq_sums

    if criterion != "l2":
        raise PlanError(f"checkpoint_scores streams criterion 'l2' only, got {criterion!r}; pass scores "
                        "computed elsewhere (activations need a forward) to fxprune.hf.plan_from_scores")
    src = os.path.abspath(src_dir)
    if not os.path.isdir(src):
        raise SerializationError(f"checkpoint folder {src} does not exist")
    wmap, shards, _ = _weight_map(src)
    extra: Dict[str, torch.Tensor] = {}  # tensors the checkpoint does not hold (RoPE inv_freq) but the loaded
    if isinstance(graph_or_model, ChannelGraph):  # model has, and plan_by_ratio scores with its weights
        graph = graph_or_model
        model = graph.gm
    elif graph_or_model is None:
        model, extra = meta_model(src)
        graph = analyze(model, _example_inputs(example_inputs))
    else:
        model = graph_or_model
        graph = analyze(model, _example_inputs(example_inputs))
    if not extra:
        extra = {n: b for n, b in model.named_buffers(remove_duplicate=False) if b.device.type != "meta"}
    canon = _canonical_names(graph, wmap)
    need: Dict[str, set] = {}
    for g in graph.groups:
        if g.pinned or not g.all_classes:
            continue
        for d in g.dims:
            if d.is_param and d.size:
                need.setdefault(d.value[1], set()).add(d.dim)
    sums: Dict[Tuple[str, int], np.ndarray] = {}
    scratch = [np.empty(0, dtype=np.float32)]
    for shard in shards:
        with safe_open(os.path.join(src, shard), "pt") as f:
            for name in f.keys():
                dims = need.get(canon[name])
                if not dims or (canon[name], min(dims)) in sums:  # a tied tensor stored twice: once
                    continue
                t = f.get_tensor(name)
                if not (t.is_floating_point() and t.ndim):
                    continue
                for d, per in _sq_sums(t, dims, scratch).items():
                    sums[(canon[name], d)] = per
                del t
    for name, t in extra.items():
        cname = graph.ctx.canonical.get(name, name)
        dims = need.get(cname)
        if dims and (cname, min(dims)) not in sums and t.is_floating_point() and t.ndim:
            for d, per in _sq_sums(t, dims, scratch).items():
                sums[(cname, d)] = per
    return CheckpointScores(graph, sums)
