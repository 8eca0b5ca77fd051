"""Count multiply-accumulates (MACs) and parameters of a model.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` over one ``no_grad`` forward pass
(FLOPs // 2). FlopCounterMode counts matmul-like ops only (convolutions, linear layers, matmuls,
attention); elementwise ops, norms and pooling count zero, and a bias add is not counted. Attention's fused
fast path is switched off while counting, so ``nn.MultiheadAttention`` counts its projections and matmuls.
Every torchvision classification model's count equals the ``_ops`` / ``num_params`` of its weights' metadata
within 1 % (``tests/test_count.py``). Models on the ``meta`` device count without allocating weights.

Example:
    >>> import torch
    >>> from fxprune.count import count
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    >>> count(model, torch.randn(1, 3, 8, 8))
    (13824, 224)
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .frontend.export import call_model

__all__ = ["count", "count_by_module", "count_params", "params_by_module"]


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """SDPA's CPU flash kernel (no formula in FlopCounterMode): the same count as the math path."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop


def _flop_counts(model: torch.nn.Module, example_inputs: Any) -> FlopCounterMode:
    """Run one eval-mode ``no_grad`` forward under FlopCounterMode; restore every training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    # nn.MultiheadAttention / TransformerEncoderLayer take a fused "fast path" in eval + no_grad whose kernels
    # FlopCounterMode does not count (vit_b_16 read 11.3 G instead of 17.6 G): count the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # FlopCounterMode's module tracker fails on a parameter handed to a submodule as an argument under
    # no_grad (CaiT's class token, "Expected gradient function to be set"): count with requires_grad off
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            call_model(model, example_inputs)
    finally:
        for p, rg in grads:
            p.requires_grad_(rg)
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in flags:
            m.training = training
    return counter


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements; a parameter shared by several modules counts once.

    Example:
        >>> import torch
        >>> count_params(torch.nn.Linear(16, 4))
        68
    """
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = p.numel()
    return sum(seen.values())


def count(model: torch.nn.Module, example_inputs: Any, layer_wise: bool = False) -> tuple:
    """Return ``(MACs, params)`` of ``model`` on ``example_inputs``; with ``layer_wise=True``
    ``(MACs, params, macs_by_module, params_by_module)`` (module qualname -> count, including
    submodules; ``""`` is the whole model).

    ``example_inputs`` is a tuple of positional arguments (a lone tensor is accepted). The model runs
    once in eval mode under ``torch.no_grad``; its training flags are restored afterwards.

    Example:
        >>> import torch
        >>> count(torch.nn.Linear(16, 4), torch.randn(1, 16))
        (64, 68)
        >>> m = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> count(m, torch.randn(1, 16), layer_wise=True)[2:]
        ({'': 72, '0': 64, '2': 8}, {'': 78, '0': 68, '2': 10})
    """
    counter = _flop_counts(model, example_inputs)
    macs, params = counter.get_total_flops() // 2, count_params(model)
    if not layer_wise:
        return macs, params
    return macs, params, _by_module(model, counter), params_by_module(model)


def params_by_module(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per module qualname, including submodules (shared parameters count once each).

    Example:
        >>> import torch
        >>> params_by_module(torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU()))
        {'': 68, '0': 68}
    """
    out: dict[str, int] = {}
    for name, mod in model.named_modules():
        n = count_params(mod)
        if n or name == "":
            out[name] = n
    return out


def count_by_module(model: torch.nn.Module, example_inputs: Any) -> dict[str, int]:
    """Per-module MACs keyed by module qualname (``""`` is the whole model, as in ``named_modules``).

    A module's count includes its submodules'. Only modules that ran and did matmul-like work appear
    (a ``torch.fx.GraphModule`` only calls leaf modules, so its containers do not appear).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> count_by_module(model, torch.randn(1, 16))
        {'': 72, '0': 64, '2': 8}
    """
    return _by_module(model, _flop_counts(model, example_inputs))


def _by_module(model: torch.nn.Module, counter: FlopCounterMode) -> dict[str, int]:
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1:]
        else:  # a module the tracker could not place under the root; keep its own label
            name = key
        out[name] = out.get(name, 0) + sum(per_op.values()) // 2
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "", kv[0])))
