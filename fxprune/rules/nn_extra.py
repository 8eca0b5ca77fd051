"""The remaining ``torch.nn`` modules whose channels can be followed.

* ``FractionalMaxPool2d/3d``, ``LPPool3d``: spatial only; batch and channel dims go through.
* ``MaxUnpool1d/2d/3d``: input, indices and output share their batch and channel dims.
* ``EmbeddingBag``: the embedding dim (weight dim 1) is the output's last dim.
* ``Bilinear``: ``x1[..., i]``, ``x2[..., j]`` and ``out[..., o]`` are weight dims 1, 2 and 0.
* ``CosineSimilarity``: a channel removed from both inputs adds zero to the dot product and both norms, so
  the reduced dim is prunable (coupled between the inputs); other dims go to the output.
* ``PairwiseDistance`` (``eps`` is added to every channel) and ``Softmax2d`` (a zeroed channel still takes
  softmax weight) keep their reduced / normalised dim; the other dims go through.

Example:
    >>> import torch, fxprune
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.FractionalMaxPool2d(2, output_size=3),
    ...                         torch.nn.Conv2d(4, 2, 1))
    >>> fxprune.analyze(m, torch.randn(1, 3, 8, 8)).group_of("0.weight", 0).pinned is None
    True
"""
from __future__ import annotations

import torch.nn as nn

from ..registry import register
from ._util import arg, couple_others


def lower_spatial_module(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    ref_out = out if out is not None else next((r for p, r in ctx.out_elems() if p == (0,)), None)
    if x is None or ref_out is None:
        return
    nsp = int(type(ctx.module()).__name__[-2])
    for p, r in ctx.out_elems():  # FractionalMaxPool with return_indices: values and indices
        for d in range(x.ndim - nsp):
            if x.shape[d] == r.shape[d]:
                ctx.couple(x, d, r, d)


def lower_max_unpool(ctx, node) -> None:
    x, idx, out = ctx.tensor(arg(node, 0, "input")), ctx.tensor(arg(node, 1, "indices")), ctx.out()
    if x is None or out is None:
        return
    nsp = int(type(ctx.module()).__name__[-2])
    for d in range(x.ndim - nsp):
        ctx.couple(x, d, out, d)
        if idx is not None:
            ctx.couple(idx, d, out, d)


def lower_embedding_bag(ctx, node) -> None:
    w, out = ctx.param("weight"), ctx.out()
    if w is not None and out is not None:
        ctx.couple(out, -1, w, 1)


def rewrite_embedding_bag(rctx, node) -> None:
    m = rctx.module(node)
    m.embedding_dim = m.weight.shape[1]


def lower_bilinear(ctx, node) -> None:
    x1, x2, out = ctx.tensor(arg(node, 0, "input1")), ctx.tensor(arg(node, 1, "input2")), ctx.out()
    w, b = ctx.param("weight"), ctx.param("bias")
    if x1 is None or x2 is None or out is None or w is None:
        return
    for d in range(out.ndim - 1):
        ctx.couple(x1, d, out, d)
        ctx.couple(x2, d, out, d)
    ctx.couple(x1, -1, w, 1)
    ctx.couple(x2, -1, w, 2)
    ctx.couple(out, -1, w, 0)
    if b is not None:
        ctx.couple(b, 0, w, 0)


def rewrite_bilinear(rctx, node) -> None:
    m = rctx.module(node)
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


def _lower_pair_reduce(ctx, node, prunable: bool) -> None:
    x1, x2, out = ctx.tensor(arg(node, 0, "x1")), ctx.tensor(arg(node, 1, "x2")), ctx.out()
    if x1 is None or x2 is None or out is None or x1.shape != x2.shape:
        return
    m = ctx.module()
    dim = (getattr(m, "dim", -1) % x1.ndim) if isinstance(m, nn.CosineSimilarity) else x1.ndim - 1
    keep = getattr(m, "keepdim", False)
    for d in range(x1.ndim):
        if d == dim:
            if prunable:
                ctx.couple(x1, d, x2, d)
            continue
        od = d if (keep or d < dim) else d - 1
        if od < out.ndim and out.shape[od] == x1.shape[d]:
            ctx.couple(x1, d, out, od)
            ctx.couple(x2, d, out, od)


def lower_cosine(ctx, node) -> None:
    _lower_pair_reduce(ctx, node, prunable=True)


def lower_pairwise(ctx, node) -> None:
    _lower_pair_reduce(ctx, node, prunable=False)


def lower_softmax2d(ctx, node) -> None:
    x, out = ctx.tensor(arg(node, 0, "input")), ctx.out()
    if x is None or out is None:
        return
    couple_others(ctx, x, out, x.ndim - 3)


register("call_module", (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.LPPool3d), "pooling",
         lower_spatial_module)
register("call_module", (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d), "max unpool", lower_max_unpool)
register("call_module", (nn.EmbeddingBag,), "embedding bag", lower_embedding_bag, rewrite_embedding_bag)
register("call_module", (nn.Bilinear,), "bilinear", lower_bilinear, rewrite_bilinear)
register("call_module", (nn.CosineSimilarity,), "cosine similarity", lower_cosine)
register("call_module", (nn.PairwiseDistance,), "pairwise distance", lower_pairwise)
register("call_module", (nn.Softmax2d,), "softmax2d", lower_softmax2d)


_LOSS = "a loss: it reduces its inputs (and targets) to a scalar; a model that returns a loss keeps its outputs"
#: ``torch.nn`` classes with no rule, and why their dims stay pinned (``tests/test_nn_coverage.py`` checks that
#: every class of ``torch.nn.modules.__all__`` has a rule or an entry here).
PINNED_MODULES: dict[str, str] = {
    "Module": "the base class: a user's module is traced through, its leaves have rules",
    "Container": "deprecated container: traced through, never a leaf",
    "Sequential": "container: traced through, never a leaf",
    "ModuleList": "container: traced through, never a leaf",
    "ModuleDict": "container: traced through, never a leaf",
    "ParameterList": "container: its parameters are read by get_attr and coupled where they are used",
    "ParameterDict": "container: its parameters are read by get_attr and coupled where they are used",
    "RNNBase": "abstract base: RNN/LSTM/GRU have rules",
    "RNNCellBase": "abstract base: RNNCell/LSTMCell/GRUCell have rules",
    **{f"Lazy{k}{d}d": f"becomes {k}{d}d on its first forward (the analysis runs one); uninitialised it has no "
       "shape to prune" for k in ("BatchNorm", "InstanceNorm") for d in (1, 2, 3)},
    "CrossMapLRN2d": "legacy autograd-function form of LocalResponseNorm (which has a rule); use that",
    "AdaptiveLogSoftmaxWithLoss": "takes targets and returns a loss; its cluster sizes are part of the output",
    "Transformer": "a torch.fx leaf whose forward branches on tensor properties (its fast path), which "
                   "symbolic tracing cannot follow: kept whole; build the layers from MultiheadAttention + Linear",
    "TransformerEncoder": "see Transformer",
    "TransformerDecoder": "see Transformer",
    "TransformerEncoderLayer": "see Transformer",
    "TransformerDecoderLayer": "see Transformer",
    "LinearCrossEntropyOptions": "an options record for LinearCrossEntropyLoss, not a layer",
    **{n: _LOSS for n in (
        "BCELoss", "BCEWithLogitsLoss", "CTCLoss", "CosineEmbeddingLoss", "CrossEntropyLoss", "GaussianNLLLoss",
        "HingeEmbeddingLoss", "HuberLoss", "KLDivLoss", "L1Loss", "LinearCrossEntropyLoss", "MSELoss",
        "MarginRankingLoss", "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "NLLLoss",
        "NLLLoss2d", "PoissonNLLLoss", "SmoothL1Loss", "SoftMarginLoss", "TripletMarginLoss",
        "TripletMarginWithDistanceLoss")},
}
