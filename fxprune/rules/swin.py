"""torchvision's Swin helpers, which ``torch.fx.wrap`` keeps opaque: window attention, patch merging and
the relative position bias gather (2-D ``swin_*``/``swin_v2_*`` and 3-D ``swin3d_*``).

``shifted_window_attention(x, qkv_weight, proj_weight, bias, window_size, num_heads, ...)`` derives the head
dim from ``x``'s channel count, so as such it ties the residual width to the attention width. The rule
couples ``x``'s channels with ``qkv_weight``'s columns, the output's with ``proj_weight``'s rows, and inside
the attention the same column of every head: q with k (their dot product), v with ``proj_weight``'s
columns. The rewrite swaps in :func:`window_attention` / :func:`window_attention_3d` below, the same
computation with explicit ``qk_dim``/``v_dim`` and the original softmax scale. Heads stay (the relative
position bias and the v2 logit scale are per head); v2's cosine attention normalises q and k over the head
dim, so there only v's columns are prunable.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import register

_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
         "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias")
_ARGS_2D = _ARGS + ("logit_scale", "training")
_ARGS_3D = _ARGS + ("training",)


# ----------------------------------------------------------------------------- pruned computation

def _heads(x: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor, rel_bias: torch.Tensor,
           num_heads: int, qk_dim: int, v_dim: int, scale: float | None, qkv_bias: torch.Tensor | None,
           proj_bias: torch.Tensor | None, logit_scale: torch.Tensor | None,
           attn_mask: torch.Tensor | None, num_windows: int, attention_dropout: float, dropout: float,
           training: bool) -> torch.Tensor:
    """Multi-head attention inside windows: ``x`` is ``(B * windows, N, C)``; q/k/v widths are explicit."""
    n_qk = num_heads * qk_dim
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        qkv_bias[n_qk:2 * n_qk].zero_()  # v2 has no key bias
    q, k, v = F.linear(x, qkv_weight, qkv_bias).split([n_qk, n_qk, num_heads * v_dim], dim=-1)
    q = q.reshape(x.size(0), x.size(1), num_heads, qk_dim).transpose(1, 2)
    k = k.reshape(x.size(0), x.size(1), num_heads, qk_dim).transpose(1, 2)
    v = v.reshape(x.size(0), x.size(1), num_heads, v_dim).transpose(1, 2)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale).matmul(k.transpose(-2, -1))
    attn = attn + rel_bias
    if attn_mask is not None:
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), num_heads * v_dim)
    return F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)


def _mask_2d(x: torch.Tensor, pad_h: int, pad_w: int, window_size: Sequence[int],
             shift_size: Sequence[int], num_windows: int) -> torch.Tensor:
    """torchvision's shifted-window attention mask (2-D)."""
    attn_mask = x.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
    w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    attn_mask = attn_mask.view(pad_h // window_size[0], window_size[0],
                               pad_w // window_size[1], window_size[1])
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int,
                     shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                     qkv_bias: torch.Tensor | None = None, proj_bias: torch.Tensor | None = None,
                     logit_scale: torch.Tensor | None = None, training: bool = True, *, qk_dim: int,
                     v_dim: int, scale: float | None = None) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` with explicit head dims (input ``[B, H, W, C]``)."""
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_h, pad_w, _ = x.shape
    shift_size = list(shift_size)
    if window_size[0] >= pad_h:
        shift_size[0] = 0
    if window_size[1] >= pad_w:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_h // window_size[0]) * (pad_w // window_size[1])
    x = x.view(B, pad_h // window_size[0], window_size[0], pad_w // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    mask = _mask_2d(x, pad_h, pad_w, window_size, shift_size, num_windows) if sum(shift_size) > 0 else None
    x = _heads(x, qkv_weight, proj_weight, relative_position_bias, num_heads, qk_dim, v_dim, scale, qkv_bias,
               proj_bias, logit_scale, mask, num_windows, attention_dropout, dropout, training)
    c_out = x.shape[-1]
    x = x.view(B, pad_h // window_size[0], pad_w // window_size[1], window_size[0], window_size[1], c_out)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_h, pad_w, c_out)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


def window_attention_3d(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                        relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int,
                        shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                        qkv_bias: torch.Tensor | None = None, proj_bias: torch.Tensor | None = None,
                        training: bool = True, *, qk_dim: int, v_dim: int,
                        scale: float | None = None) -> torch.Tensor:
    """torchvision's ``shifted_window_attention_3d`` with explicit head dims (input ``[B, T, H, W, C]``)."""
    from torchvision.models.video.swin_transformer import _compute_attention_mask_3d, _compute_pad_size_3d

    b, t, h, w, c = input.shape
    pad = _compute_pad_size_3d((t, h, w), (window_size[0], window_size[1], window_size[2]))
    x = F.pad(input, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    _, tp, hp, wp, _ = x.shape
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1], -shift_size[2]), dims=(1, 2, 3))
    nw = (tp // window_size[0]) * (hp // window_size[1]) * (wp // window_size[2])
    x = x.view(b, tp // window_size[0], window_size[0], hp // window_size[1], window_size[1],
               wp // window_size[2], window_size[2], c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * nw, window_size[0] * window_size[1] * window_size[2], c)
    mask = None
    if sum(shift_size) > 0:
        mask = _compute_attention_mask_3d(x, (tp, hp, wp), (window_size[0], window_size[1], window_size[2]),
                                          (shift_size[0], shift_size[1], shift_size[2]))
    x = _heads(x, qkv_weight, proj_weight, relative_position_bias, num_heads, qk_dim, v_dim, scale, qkv_bias,
               proj_bias, None, mask, nw, attention_dropout, dropout, training)
    c_out = x.shape[-1]
    x = x.view(b, tp // window_size[0], hp // window_size[1], wp // window_size[2], window_size[0],
               window_size[1], window_size[2], c_out)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, tp, hp, wp, c_out)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1], shift_size[2]), dims=(1, 2, 3))
    return x[:, :t, :h, :w, :].contiguous()


# ----------------------------------------------------------------------------------------- rules

def _get(node, names: Sequence[str], name: str, default: Any = None) -> Any:
    i = names.index(name)
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _names(node) -> Sequence[str]:
    return _ARGS_3D if node.target in (_TV_3D, window_attention_3d) else _ARGS_2D


def _dims(node, qkv_w_shape) -> tuple:
    """``(heads, qk_dim, v_dim)``: explicit on the pruned function, ``C // heads`` on torchvision's."""
    heads = _get(node, _names(node), "num_heads")
    if "qk_dim" in node.kwargs:
        return heads, node.kwargs["qk_dim"], node.kwargs["v_dim"]
    d = qkv_w_shape[1] // heads
    return heads, d, d


def lower_window_attention(ctx, node) -> None:
    names = _names(node)
    x, out = ctx.tensor(node.args[0]), ctx.out()
    qkv_w, proj_w = ctx.tensor(_get(node, names, "qkv_weight")), ctx.tensor(_get(node, names, "proj_weight"))
    heads = _get(node, names, "num_heads")
    if x is None or out is None or qkv_w is None or proj_w is None or not isinstance(heads, int):
        return
    heads, dqk, dv = _dims(node, qkv_w.shape)
    ctx.couple(x, 0, out, 0)
    ctx.couple(x, -1, qkv_w, 1)
    ctx.couple(out, -1, proj_w, 0)
    for name, ref in (("qkv_bias", qkv_w), ("proj_bias", proj_w)):
        b = ctx.tensor(_get(node, names, name))
        if b is not None:
            ctx.couple(b, 0, ref, 0)
    h = np.repeat(np.arange(heads, dtype=np.int64), dqk)
    j = np.tile(np.arange(dqk, dtype=np.int64), heads)
    n_qk = heads * dqk
    q = h * dqk + j
    # same column in every head (one reshape to heads x dim), q with k (their dot product)
    ctx.couple(qkv_w, 0, qkv_w, 0, (q, j))
    ctx.couple(qkv_w, 0, qkv_w, 0, (n_qk + q, q))
    hv = np.repeat(np.arange(heads, dtype=np.int64), dv)
    jv = np.tile(np.arange(dv, dtype=np.int64), heads)
    ctx.couple(qkv_w, 0, qkv_w, 0, (2 * n_qk + hv * dv + jv, 2 * n_qk + jv))
    ctx.couple(qkv_w, 0, proj_w, 1, (2 * n_qk + hv * dv + jv, hv * dv + jv))
    if "logit_scale" in names and _get(node, names, "logit_scale") is not None:
        ctx.ir.pin(ctx.dim(qkv_w, 0), "cosine attention normalises q and k over the head dim",
                   np.arange(2 * n_qk, dtype=np.int64))


def rewrite_window_attention(rctx, node) -> None:
    names = _names(node)
    qkv_node = _get(node, names, "qkv_weight")
    qkv_w = rctx.tensor(qkv_node)
    heads, dqk, dv = _dims(node, qkv_w.shape)
    removed = rctx.removed(qkv_w, 0)
    n_qk = heads * dqk
    new_qk = dqk - int(np.sum(removed < n_qk)) // heads
    new_v = dv - int(np.sum(removed >= 2 * n_qk)) // heads
    kwargs = dict(node.kwargs)
    if "logit_scale" not in names or _get(node, names, "logit_scale") is None:
        kwargs.setdefault("scale", dqk ** -0.5)  # torchvision's (C // heads) ** -0.5, kept after pruning
    kwargs.update(qk_dim=new_qk, v_dim=new_v)
    node.target = window_attention_3d if names is _ARGS_3D else window_attention
    node.kwargs = kwargs
    for name in ("qkv_weight", "proj_weight"):  # the nn.Linear that owns the weight, for its repr
        w = _get(node, names, name)
        is_attr = getattr(w, "op", "") == "get_attr"
        mod = rctx.module_at(w.target.rpartition(".")[0]) if is_attr else None
        if isinstance(mod, torch.nn.Linear):
            mod.out_features, mod.in_features = rctx.new_shape(rctx.tensor(w))


def lower_patch_merging_pad(ctx, node) -> None:
    """``(..., H, W, C) -> (..., H/2, W/2, 4C)``: four strided slices concatenated along the channels."""
    x, out = ctx.tensor(node.args[0]), ctx.out()
    for d in range(x.ndim - 3):
        ctx.couple(x, d, out, d)
    c = x.shape[-1]
    i = np.arange(c, dtype=np.int64)
    for k in range(4):
        ctx.couple(out, -1, x, -1, (k * c + i, i))


def lower_relative_position_bias(ctx, node) -> None:
    """``table[(T, heads)] -> (1, heads, N, N)``: the heads go through; the index is a constant."""
    table, out = ctx.tensor(node.args[0]), ctx.out()
    ctx.couple(table, 1, out, 1)


def lower_attention_mask(ctx, node) -> None:
    ctx.touch(ctx.tensor(node.args[0]))  # reads only x's dtype and device


try:
    import torchvision.models.swin_transformer as _tv2
    import torchvision.models.video.swin_transformer as _tv3
    _TV_3D = _tv3.shifted_window_attention_3d
    register("call_function", (_tv2.shifted_window_attention, _tv3.shifted_window_attention_3d,
                               window_attention, window_attention_3d), "window attention",
             lower_window_attention, rewrite_window_attention)
    register("call_function", (_tv2._patch_merging_pad,), "patch merging", lower_patch_merging_pad)
    register("call_function", (_tv2._get_relative_position_bias, _tv3._get_relative_position_bias),
             "relative position bias", lower_relative_position_bias)
    register("call_function", (_tv3._compute_attention_mask_3d,), "attention mask", lower_attention_mask)
except ImportError:  # torchvision is optional
    _TV_3D = None
