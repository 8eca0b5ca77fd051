"""torchvision's MViT helpers, which ``torch.fx.wrap`` keeps opaque (``mvit_v1_b``, ``mvit_v2_s``).

``_unsqueeze``/``_squeeze`` add or drop a heads dim; ``_add_rel_pos(attn, q, ..., rel_pos_h, rel_pos_w,
rel_pos_t)`` adds ``q``-dependent relative position terms to the attention logits (``q``'s head dim is
contracted with every ``rel_pos_*`` table, so a head-dim column goes with the tables' column);
``_add_shortcut(x, shortcut, ...)`` adds the pooled query to the attention output in place.
"""
from __future__ import annotations

from ..registry import register


def _couple_inserted(ctx, small, big, at: int) -> None:
    """``big`` is ``small`` with a size-1 dim inserted at ``at`` (or equal to it)."""
    if big.ndim == small.ndim:
        ctx.couple_all(small, big)
        return
    at %= big.ndim
    for d in range(small.ndim):
        ctx.couple(small, d, big, d if d < at else d + 1)


def lower_unsqueeze(ctx, node) -> None:
    """``_unsqueeze(x, target_dim, expand_dim) -> (x or x.unsqueeze(expand_dim), x.dim())``."""
    x = ctx.tensor(node.args[0])
    out = ctx.elem(node, (0,))
    if x is not None and out is not None:
        _couple_inserted(ctx, x, out, node.args[2])


def lower_squeeze(ctx, node) -> None:
    """``_squeeze(x, target_dim, expand_dim, tensor_dim)``: the inverse of ``_unsqueeze``."""
    x, out = ctx.tensor(node.args[0]), ctx.out()
    if x is not None and out is not None:
        _couple_inserted(ctx, out, x, node.args[2])


def lower_add_rel_pos(ctx, node) -> None:
    attn, q, out = ctx.tensor(node.args[0]), ctx.tensor(node.args[1]), ctx.out()
    ctx.couple_all(attn, out)
    for d in (0, 1):  # batch, heads
        ctx.couple(q, d, attn, d)
    for table in node.args[4:7]:
        t = ctx.tensor(table)
        if t is not None:
            ctx.couple(q, 3, t, 1)  # contracted with q's head dim (einsum / matmul)


def lower_add_shortcut(ctx, node) -> None:
    x, shortcut, out = ctx.tensor(node.args[0]), ctx.tensor(node.args[1]), ctx.out()
    ctx.couple_all(x, out)
    ctx.couple_all(shortcut, x)  # x (+)= shortcut, on every token or on all but the class token


try:
    import torchvision.models.video.mvit as _tv
    register("call_function", (_tv._unsqueeze,), "mvit unsqueeze", lower_unsqueeze)
    register("call_function", (_tv._squeeze,), "mvit squeeze", lower_squeeze)
    register("call_function", (_tv._add_rel_pos,), "relative position logits", lower_add_rel_pos)
    register("call_function", (_tv._add_shortcut,), "attention shortcut", lower_add_shortcut)
except ImportError:  # torchvision is optional
    pass
