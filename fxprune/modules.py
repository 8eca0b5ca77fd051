"""Replacement modules for layers whose pruned form the original class cannot express.

:class:`PrunedMultiheadAttention` is ``nn.MultiheadAttention`` with internal q/k and v head sizes that may
differ from ``embed_dim // num_heads``: same call signature, same output tuple ``(attn_output,
attn_weights or None)``, the same parameter names (so state dicts and plans keep their keys), and the
original softmax scale. Plain torch ops only: it runs under ``torch.jit.script``/``trace`` and exports to
ONNX.

Example:
    >>> import torch
    >>> from fxprune.modules import PrunedMultiheadAttention
    >>> m = PrunedMultiheadAttention(16, 2, qk_head_dim=3, v_head_dim=5, batch_first=True)
    >>> x = torch.randn(2, 7, 16)
    >>> out, w = m(x, x, x)
    >>> tuple(out.shape), tuple(w.shape), tuple(m.in_proj_weight.shape)
    ((2, 7, 16), (2, 7, 7), (22, 16))
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PrunedMultiheadAttention"]


def _float_mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """Boolean masks (True = masked out) as additive float masks, like ``nn.MultiheadAttention``."""
    if mask is not None and mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask


def _pad(mask: Optional[Tensor]) -> Optional[Tensor]:
    return F.pad(mask, (0, 1)) if mask is not None else None


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``qk_head_dim`` (q, k) and ``v_head_dim`` (v).

    Parameters follow ``nn.MultiheadAttention``: ``in_proj_weight`` ``[H*(2*dq + dv), embed_dim]`` (q, k,
    v rows) when query/key/value share the embed dim, else ``q_proj_weight``/``k_proj_weight``/
    ``v_proj_weight``; ``in_proj_bias`` ``[H*(2*dq + dv)]``; ``bias_k``/``bias_v``; ``out_proj`` maps
    ``H*dv -> embed_dim``. ``scale`` multiplies ``q·k`` (default ``1/sqrt(qk_head_dim)``). After pruning,
    ``embed_dim`` is the output width; the query width is ``in_proj_weight.shape[1]`` (or
    ``q_proj_weight.shape[1]``), which may differ when the two were pruned apart.
    """

    __constants__ = ["batch_first", "num_heads", "qk_head_dim", "v_head_dim", "scale", "dropout",
                     "add_zero_attn", "embed_dim", "kdim", "vdim"]

    def __init__(self, embed_dim: int, num_heads: int, qk_head_dim: int, v_head_dim: int,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, dropout: float = 0.0,
                 batch_first: bool = False, scale: Optional[float] = None, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        q, v = num_heads * qk_head_dim, num_heads * v_head_dim
        packed = kdim == embed_dim and vdim == embed_dim
        self._setup(embed_dim, kdim, vdim, num_heads, qk_head_dim, v_head_dim, scale, dropout, batch_first,
                    add_zero_attn, packed)
        if packed:
            self.in_proj_weight = nn.Parameter(torch.empty(2 * q + v, embed_dim, **kw))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(q, embed_dim, **kw))
            self.k_proj_weight = nn.Parameter(torch.empty(q, kdim, **kw))
            self.v_proj_weight = nn.Parameter(torch.empty(v, vdim, **kw))
        self.in_proj_bias = nn.Parameter(torch.zeros(2 * q + v, **kw)) if bias else None
        self.out_proj = nn.Linear(v, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, q, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, v, **kw))
        else:
            self.bias_k = self.bias_v = None
        for p in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if p is not None:
                nn.init.xavier_uniform_(p)
        for p in (self.bias_k, self.bias_v):
            if p is not None:
                nn.init.xavier_normal_(p)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def _setup(self, embed_dim, kdim, vdim, num_heads, qk_head_dim, v_head_dim, scale, dropout, batch_first,
               add_zero_attn, packed) -> None:
        self.embed_dim, self.kdim, self.vdim = int(embed_dim), int(kdim), int(vdim)
        self._qkv_same_embed_dim = bool(packed)
        self.num_heads, self.qk_head_dim, self.v_head_dim = int(num_heads), int(qk_head_dim), int(v_head_dim)
        self.head_dim = self.qk_head_dim
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(qk_head_dim)
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)

    @classmethod
    def from_module(cls, m: nn.Module, num_heads: int, qk_head_dim: int, v_head_dim: int,
                    scale: float) -> "PrunedMultiheadAttention":
        """Wrap the (already sliced) parameters of ``m`` (an ``nn.MultiheadAttention`` or one of these)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        packed = m.in_proj_weight is not None
        embed = m.out_proj.weight.shape[0]
        kdim = m.in_proj_weight.shape[1] if packed else m.k_proj_weight.shape[1]
        vdim = m.in_proj_weight.shape[1] if packed else m.v_proj_weight.shape[1]
        new._setup(embed, kdim, vdim, num_heads, qk_head_dim, v_head_dim, scale, m.dropout, m.batch_first,
                   m.add_zero_attn, packed)
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
            new.register_parameter(name, getattr(m, name, None))
        new.bias_k, new.bias_v = getattr(m, "bias_k", None), getattr(m, "bias_v", None)
        m.out_proj.in_features, m.out_proj.out_features = m.out_proj.weight.shape[1], embed
        new.out_proj = m.out_proj
        new.training = m.training
        return new

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, qk_head_dim={self.qk_head_dim}, "
                f"v_head_dim={self.v_head_dim}, kdim={self.kdim}, vdim={self.vdim}, scale={self.scale:.6g}, "
                f"batch_first={self.batch_first}")

    def _in_proj(self) -> Tuple[Tensor, Tensor, Tensor]:
        q = self.num_heads * self.qk_head_dim
        w = self.in_proj_weight
        if w is not None:
            return w[:q], w[q:2 * q], w[2 * q:]
        wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        assert wq is not None and wk is not None and wv is not None
        return wq, wk, wv

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        is_batched = query.dim() == 3
        if is_batched and self.batch_first:
            query, key, value = query.transpose(1, 0), key.transpose(1, 0), value.transpose(1, 0)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz = query.shape[0], query.shape[1]
        h, dq, dv = self.num_heads, self.qk_head_dim, self.v_head_dim
        qn = h * dq
        wq, wk, wv = self._in_proj()
        b = self.in_proj_bias
        if b is not None:
            q = F.linear(query, wq, b[:qn])
            k = F.linear(key, wk, b[qn:2 * qn])
            v = F.linear(value, wv, b[2 * qn:])
        else:
            q, k, v = F.linear(query, wq), F.linear(key, wk), F.linear(value, wv)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        attn_mask = _float_mask(attn_mask, q.dtype)
        key_padding_mask = _float_mask(key_padding_mask, q.dtype)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        bk, bv = self.bias_k, self.bias_v
        if bk is not None and bv is not None:
            k = torch.cat([k, bk.repeat(1, bsz, 1)])
            v = torch.cat([v, bv.repeat(1, bsz, 1)])
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q = q.reshape(tgt_len, bsz * h, dq).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * h, dq).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * h, dv).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, torch.zeros(bsz * h, 1, dq, dtype=k.dtype, device=k.device)], dim=1)
            v = torch.cat([v, torch.zeros(bsz * h, 1, dv, dtype=v.dtype, device=v.device)], dim=1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        src_len = k.shape[1]
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(-1, h, -1, -1)
            kpm = kpm.reshape(bsz * h, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        if need_weights:
            scores = torch.bmm(q * self.scale, k.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            w = F.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                w = F.dropout(w, p=dropout_p)
            out = torch.bmm(w, v).transpose(0, 1).reshape(tgt_len * bsz, h * dv)
            weights = w.reshape(bsz, h, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                weights = weights.squeeze(0)
        else:  # 4-D SDPA (what the ONNX exporter supports)
            if attn_mask is not None:
                attn_mask = attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1 else \
                    attn_mask.reshape(bsz, h, -1, src_len)
            q4, k4 = q.reshape(bsz, h, tgt_len, dq), k.reshape(bsz, h, src_len, dq)
            out = F.scaled_dot_product_attention(q4, k4, v.reshape(bsz, h, src_len, dv), attn_mask=attn_mask,
                                                 dropout_p=dropout_p, scale=self.scale)
            out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, h * dv)
        out = self.out_proj(out).reshape(tgt_len, bsz, self.embed_dim)
        if not is_batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights
