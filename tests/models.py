"""The shared zoo of small test models: one tiny model per op case, with hand-written expectations.

Every :class:`Case` holds a model class, its example inputs, a plan to apply, and the expected result written
by hand (never derived from fxprune's own analysis):

* ``attrs``    -- ``"<module path>.<attribute>" -> value`` after pruning (``out_channels``, ``groups``, ...);
* ``kept``     -- ``"<param or buffer qualname>" -> {dim: kept indices in original coordinates}``; the pruned
                  tensor must equal ``index_select`` of the original at exactly these indices, and every dim
                  not listed keeps its size;
* ``shapes``   -- extra expected tensor shapes (for tensors that must *not* shrink, e.g. ``PReLU(1)``);
* ``expanded`` -- plan key -> the sorted indices ``small.meta["fxprune"]["plan"]`` must hold for it;
* ``pinned``   -- ``"<param>:<dim>"`` keys whose group must be pinned (and whose pruning raises PlanError);
* ``exact``    -- False where pruned channels feed normalisation statistics (LayerNorm, GroupNorm by
                  columns): ``verify`` still has to run and report, the math is not the masked original's.

``case.factory()`` returns ``(model, example_inputs)``: the model in eval mode with random weights, random
norm statistics and deterministic values. The module also holds the value-level oracle
:func:`recover_slices` shared by the op tests and the property test.

Run ``python tests/models.py`` to check that every model runs and every hand-written index is in range.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Case", "CASES", "CASES_BY_NAME", "K", "named_tensors", "recover_slices"]


# ----------------------------------------------------------------------------------------------- helpers

def K(n: int, removed: Sequence[int]) -> List[int]:
    """Kept indices of ``range(n)`` once ``removed`` is taken out."""
    rem = set(removed)
    return [i for i in range(n) if i not in rem]


def _seeded(*shape: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g)
    return t.abs() + 0.5 if positive else t


def _randomize(m: nn.Module, seed: int = 0) -> None:
    """Random norm affine params and running stats (so that no two channels share values), eval mode."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.copy_(1.0 + 0.3 * torch.randn(mod.weight.shape, generator=g))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.3 * torch.randn(mod.bias.shape, generator=g))
                if getattr(mod, "running_mean", None) is not None:
                    mod.running_mean.copy_(0.3 * torch.randn(mod.running_mean.shape, generator=g))
                    mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
            elif isinstance(mod, nn.PReLU):
                mod.weight.copy_(0.25 + 0.1 * torch.randn(mod.weight.shape, generator=g))
    m.eval()


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_SPATIAL = {1: (16,), 2: (8, 8), 3: (6, 6, 6)}


def _img(c: int = 3, d: int = 2, b: int = 2, spatial: Optional[Tuple[int, ...]] = None, seed: int = 1):
    return _seeded(b, c, *(spatial or _SPATIAL[d]), seed=seed)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Tuple[Any, ...]]
    plan: Dict[str, List[int]]
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    kept: Dict[str, Dict[int, List[int]]] = dataclasses.field(default_factory=dict)
    shapes: Dict[str, Tuple[int, ...]] = dataclasses.field(default_factory=dict)
    expanded: Dict[str, List[int]] = dataclasses.field(default_factory=dict)
    pinned: List[str] = dataclasses.field(default_factory=list)
    exact: bool = True

    def factory(self) -> Tuple[nn.Module, Tuple[Any, ...]]:
        torch.manual_seed(0)
        m = self.build()
        _randomize(m)
        return m, self.inputs()

    def __repr__(self) -> str:  # pytest ids
        return self.name


CASES: List[Case] = []


def _add(*cases: Case) -> None:
    CASES.extend(cases)


def _sandwich_expect(removed: Sequence[int], c: int = 8, pre: str = "conv1", post: str = "conv2",
                     extra_kept: Optional[Dict[str, Dict[int, List[int]]]] = None, **kw) -> dict:
    """Expectations for ``pre (3->c) -> mid -> post (c->4)`` with ``removed`` taken from pre's outputs."""
    k = K(c, removed)
    kept = {f"{pre}.weight": {0: k}, f"{pre}.bias": {0: k}, f"{post}.weight": {1: k}}
    kept.update(extra_kept or {})
    out = dict(plan={f"{pre}.weight:0": list(removed)},
               attrs={f"{pre}.out_channels": len(k), f"{post}.in_channels": len(k)},
               kept=kept, expanded={f"{pre}.weight:0": sorted(removed)},
               pinned=[f"{post}.weight:0", f"{pre}.weight:1"])
    out.update(kw)
    return out


class Sandwich(nn.Module):
    """``conv1 (3->c) -> self.mid(y) -> conv2 (c->4)``; subclasses override :meth:`mid`."""

    def __init__(self, d: int = 2, c: int = 8, k: int = 3):
        super().__init__()
        self.conv1 = _CONV[d](3, c, k, padding=k // 2)
        self.conv2 = _CONV[d](c, 4, 1, bias=False)

    def mid(self, y):
        return torch.relu(y)

    def forward(self, x):
        return self.conv2(self.mid(self.conv1(x)))


# ------------------------------------------------------------------------------------ conv family, 1/2/3d

class ConvPlain(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv1 = _CONV[d](3, 8, 3, padding=1, bias=True)
        self.conv2 = _CONV[d](8, 4, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class ConvGrouped(nn.Module):
    """conv1 3->8, conv2 8->16 groups=4 (2 in / 4 out per group), conv3 16->4."""

    def __init__(self, d):
        super().__init__()
        self.conv1 = _CONV[d](3, 8, 1)
        self.conv2 = _CONV[d](8, 16, 3, padding=1, groups=4)
        self.conv3 = _CONV[d](16, 4, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class ConvDepthwise(nn.Module):
    """conv1 3->c, dw c->c*mult groups=c, conv3 c*mult->4."""

    def __init__(self, d, c=8, mult=1):
        super().__init__()
        self.conv1 = _CONV[d](3, c, 1)
        self.dw = _CONV[d](c, c * mult, 3, padding=1, groups=c)
        self.conv3 = _CONV[d](c * mult, 4, 1)

    def forward(self, x):
        return self.conv3(F.relu6(self.dw(F.relu(self.conv1(x)))))


class ConvTransposePlain(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ct1 = _CONVT[d](3, 8, 2, stride=2)
        self.ct2 = _CONVT[d](8, 4, 3, padding=1, bias=False)

    def forward(self, x):
        return self.ct2(torch.relu(self.ct1(x)))


class ConvTransposeGrouped(nn.Module):
    """conv0 3->4, ct1 4->8 groups=2 (weight [4, 4, k..]), conv3 8->4."""

    def __init__(self, d):
        super().__init__()
        self.conv0 = _CONV[d](3, 4, 1)
        self.ct1 = _CONVT[d](4, 8, 2, stride=2, groups=2)
        self.conv3 = _CONV[d](8, 4, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.ct1(torch.relu(self.conv0(x)))))


for _d in (1, 2, 3):
    _add(
        Case(f"conv{_d}d_bias", lambda d=_d: ConvPlain(d), lambda d=_d: (_img(d=d),),
             **_sandwich_expect([1, 5])),
        # groups=4, out side: position 1 of every group of Ko=4 outputs goes together.
        Case(f"conv{_d}d_groups4_out", lambda d=_d: ConvGrouped(d), lambda d=_d: (_img(d=d),),
             plan={"conv2.weight:0": [1]},
             attrs={"conv2.out_channels": 12, "conv2.in_channels": 8, "conv2.groups": 4,
                    "conv3.in_channels": 12},
             kept={"conv2.weight": {0: K(16, [1, 5, 9, 13])}, "conv2.bias": {0: K(16, [1, 5, 9, 13])},
                   "conv3.weight": {1: K(16, [1, 5, 9, 13])}},
             expanded={"conv2.weight:0": [1, 5, 9, 13]},
             pinned=["conv3.weight:0"]),
        # groups=4, in side: input channel t shares weight column t % 2 with t+2, t+4, t+6.
        Case(f"conv{_d}d_groups4_in", lambda d=_d: ConvGrouped(d), lambda d=_d: (_img(d=d),),
             plan={"conv1.weight:0": [1]},
             attrs={"conv1.out_channels": 4, "conv2.in_channels": 4, "conv2.out_channels": 16,
                    "conv2.groups": 4},
             kept={"conv1.weight": {0: [0, 2, 4, 6]}, "conv1.bias": {0: [0, 2, 4, 6]},
                   "conv2.weight": {1: [0]}},
             expanded={"conv1.weight:0": [1, 3, 5, 7]},
             pinned=["conv3.weight:0"]),
        Case(f"conv{_d}d_depthwise", lambda d=_d: ConvDepthwise(d), lambda d=_d: (_img(d=d),),
             plan={"conv1.weight:0": [2, 5]},
             attrs={"conv1.out_channels": 6, "dw.in_channels": 6, "dw.out_channels": 6, "dw.groups": 6,
                    "conv3.in_channels": 6},
             kept={"conv1.weight": {0: K(8, [2, 5])}, "dw.weight": {0: K(8, [2, 5])},
                   "dw.bias": {0: K(8, [2, 5])}, "conv3.weight": {1: K(8, [2, 5])}},
             expanded={"conv1.weight:0": [2, 5]},
             pinned=["conv3.weight:0"]),
        # depthwise with channel multiplier 2: input channel 1 owns outputs 2 and 3.
        Case(f"conv{_d}d_depthwise_mult2_in", lambda d=_d: ConvDepthwise(d, 4, 2), lambda d=_d: (_img(d=d),),
             plan={"conv1.weight:0": [1]},
             attrs={"conv1.out_channels": 3, "dw.in_channels": 3, "dw.out_channels": 6, "dw.groups": 3,
                    "conv3.in_channels": 6},
             kept={"conv1.weight": {0: [0, 2, 3]}, "dw.weight": {0: [0, 1, 4, 5, 6, 7]},
                   "dw.bias": {0: [0, 1, 4, 5, 6, 7]}, "conv3.weight": {1: [0, 1, 4, 5, 6, 7]}},
             expanded={"conv1.weight:0": [1]},
             pinned=["conv3.weight:0"]),
        # the same class addressed from the depthwise conv's outputs (a whole group of M=2 outputs).
        Case(f"conv{_d}d_depthwise_mult2_out", lambda d=_d: ConvDepthwise(d, 4, 2), lambda d=_d: (_img(d=d),),
             plan={"dw.weight:0": [2, 3]},
             attrs={"conv1.out_channels": 3, "dw.in_channels": 3, "dw.out_channels": 6, "dw.groups": 3,
                    "conv3.in_channels": 6},
             kept={"conv1.weight": {0: [0, 2, 3]}, "dw.weight": {0: [0, 1, 4, 5, 6, 7]},
                   "conv3.weight": {1: [0, 1, 4, 5, 6, 7]}},
             expanded={"dw.weight:0": [2, 3]},
             pinned=["conv3.weight:0"]),
        Case(f"convtranspose{_d}d", lambda d=_d: ConvTransposePlain(d),
             lambda d=_d: (_img(d=d, spatial=(4,) * d),),
             plan={"ct1.weight:1": [1, 5]},
             attrs={"ct1.out_channels": 6, "ct1.in_channels": 3, "ct2.in_channels": 6, "ct2.out_channels": 4},
             kept={"ct1.weight": {1: K(8, [1, 5])}, "ct1.bias": {0: K(8, [1, 5])},
                   "ct2.weight": {0: K(8, [1, 5])}},
             expanded={"ct1.weight:1": [1, 5]},
             pinned=["ct2.weight:1", "ct1.weight:0"]),
        # grouped ConvTranspose, weight [in=4, out/g=4, k..]: output position 1 of both groups = {1, 5}.
        Case(f"convtranspose{_d}d_groups2_out", lambda d=_d: ConvTransposeGrouped(d),
             lambda d=_d: (_img(d=d, spatial=(4,) * d),),
             plan={"ct1.bias:0": [1]},
             attrs={"ct1.out_channels": 6, "ct1.in_channels": 4, "ct1.groups": 2, "conv3.in_channels": 6},
             kept={"ct1.weight": {1: [0, 2, 3]}, "ct1.bias": {0: [0, 2, 3, 4, 6, 7]},
                   "conv3.weight": {1: [0, 2, 3, 4, 6, 7]}},
             expanded={"ct1.bias:0": [1, 5]},
             pinned=["conv3.weight:0"]),
        # grouped ConvTranspose, input side: input position 0 of both groups = {0, 2}.
        Case(f"convtranspose{_d}d_groups2_in", lambda d=_d: ConvTransposeGrouped(d),
             lambda d=_d: (_img(d=d, spatial=(4,) * d),),
             plan={"conv0.weight:0": [0]},
             attrs={"conv0.out_channels": 2, "ct1.in_channels": 2, "ct1.out_channels": 8, "ct1.groups": 2},
             kept={"conv0.weight": {0: [1, 3]}, "conv0.bias": {0: [1, 3]}, "ct1.weight": {0: [1, 3]}},
             expanded={"conv0.weight:0": [0, 2]},
             pinned=["conv3.weight:0"]),
    )


# ---------------------------------------------------------------------------------------- linear family

class LinearMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def _lin_expect(removed, pre="fc1", post="fc2", c=8, **kw):
    k = K(c, removed)
    out = dict(plan={f"{pre}.weight:0": list(removed)},
               attrs={f"{pre}.out_features": len(k), f"{post}.in_features": len(k)},
               kept={f"{pre}.weight": {0: k}, f"{pre}.bias": {0: k}, f"{post}.weight": {1: k}},
               expanded={f"{pre}.weight:0": sorted(removed)},
               pinned=[f"{post}.weight:0", f"{pre}.weight:1"])
    for key, val in kw.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **val}
        else:
            out[key] = val
    return out


_add(Case("linear", LinearMLP, lambda: (_seeded(4, 6, seed=1),), **_lin_expect([0, 7])))


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(_seeded(8, 3, 3, 3, seed=11) * 0.3)
        self.b1 = nn.Parameter(_seeded(8, seed=12))
        self.w2 = nn.Parameter(_seeded(4, 8, 1, 1, seed=13) * 0.3)

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        return F.conv2d(torch.relu(y), self.w2)


class FunctionalLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(_seeded(8, 6, seed=11))
        self.b1 = nn.Parameter(_seeded(8, seed=12))
        self.w2 = nn.Parameter(_seeded(3, 8, seed=13))

    def forward(self, x):
        return F.linear(torch.tanh(F.linear(x, self.w1, self.b1)), self.w2)


class EinsumMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(_seeded(8, 6, seed=11))
        self.w2 = nn.Parameter(_seeded(3, 8, seed=13))

    def forward(self, x):
        h = torch.einsum("bnd,ed->bne", x, self.w1)
        return torch.einsum("bne,fe->bnf", F.gelu(h), self.w2)


class MatmulMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(_seeded(6, 8, seed=11))
        self.w2 = nn.Parameter(_seeded(8, 3, seed=13))

    def forward(self, x):
        return torch.matmul(torch.relu(torch.matmul(x, self.w1)), self.w2)


class BmmMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(_seeded(2, 6, 8, seed=11))
        self.w2 = nn.Parameter(_seeded(2, 8, 3, seed=13))

    def forward(self, x):
        return torch.bmm(torch.relu(torch.bmm(x, self.w1)), self.w2)


_add(
    Case("functional_conv2d", FunctionalConv, lambda: (_img(),),
         plan={"w1:0": [3]},
         kept={"w1": {0: K(8, [3])}, "b1": {0: K(8, [3])}, "w2": {1: K(8, [3])}},
         expanded={"w1:0": [3]}, pinned=["w2:0", "w1:1"]),
    Case("functional_linear", FunctionalLinear, lambda: (_seeded(4, 6, seed=1),),
         plan={"w1:0": [2, 3]},
         kept={"w1": {0: K(8, [2, 3])}, "b1": {0: K(8, [2, 3])}, "w2": {1: K(8, [2, 3])}},
         expanded={"w1:0": [2, 3]}, pinned=["w2:0", "w1:1"]),
    Case("einsum", EinsumMLP, lambda: (_seeded(2, 5, 6, seed=1),),
         plan={"w1:0": [4]},
         kept={"w1": {0: K(8, [4])}, "w2": {1: K(8, [4])}},
         expanded={"w1:0": [4]}, pinned=["w2:0", "w1:1"]),
    Case("matmul", MatmulMLP, lambda: (_seeded(2, 5, 6, seed=1),),
         plan={"w1:1": [4]},
         kept={"w1": {1: K(8, [4])}, "w2": {0: K(8, [4])}},
         expanded={"w1:1": [4]}, pinned=["w2:1", "w1:0"]),
    Case("bmm", BmmMLP, lambda: (_seeded(2, 5, 6, seed=1),),
         plan={"w1:2": [0]},
         kept={"w1": {2: K(8, [0])}, "w2": {1: K(8, [0])}},
         expanded={"w1:2": [0]}, pinned=["w2:2", "w1:0"]),
)


# ----------------------------------------------------------------------------------------------- norms

class ConvNorm(nn.Module):
    def __init__(self, norm: nn.Module, d: int = 2, c: int = 8):
        super().__init__()
        self.conv1 = _CONV[d](3, c, 3, padding=1)
        self.norm = norm
        self.conv2 = _CONV[d](c, 4, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.norm(self.conv1(x))))


class LinearNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = norm
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.norm(self.fc1(x))))


_STATS = ("weight", "bias", "running_mean", "running_var")


def _norm_kept(removed, c=8, names=_STATS):
    return {f"norm.{n}": {0: K(c, removed)} for n in names}


for _d in (1, 2, 3):
    _add(Case(f"batchnorm{_d}d", lambda d=_d: ConvNorm(_BN[d](8), d), lambda d=_d: (_img(d=d),),
              **_sandwich_expect([0, 3], extra_kept=_norm_kept([0, 3]), attrs={
                  "conv1.out_channels": 6, "conv2.in_channels": 6, "norm.num_features": 6})))

_add(
    Case("batchnorm1d_linear", lambda: LinearNorm(nn.BatchNorm1d(8)), lambda: (_seeded(4, 6, seed=1),),
         **_lin_expect([2, 6], kept=_norm_kept([2, 6]),
                       attrs={"norm.num_features": 6})),
    Case("instancenorm2d_affine", lambda: ConvNorm(nn.InstanceNorm2d(8, affine=True)), lambda: (_img(),),
         **_sandwich_expect([4], extra_kept=_norm_kept([4], names=("weight", "bias")), attrs={
             "conv1.out_channels": 7, "conv2.in_channels": 7, "norm.num_features": 7})),
    Case("instancenorm2d_plain", lambda: ConvNorm(nn.InstanceNorm2d(8)), lambda: (_img(),),
         **_sandwich_expect([4], attrs={"conv1.out_channels": 7, "conv2.in_channels": 7,
                                        "norm.num_features": 7})),
    Case("instancenorm2d_running_stats",
         lambda: ConvNorm(nn.InstanceNorm2d(8, affine=True, track_running_stats=True)), lambda: (_img(),),
         **_sandwich_expect([0, 7], extra_kept=_norm_kept([0, 7]), attrs={
             "conv1.out_channels": 6, "conv2.in_channels": 6, "norm.num_features": 6})),
    # GroupNorm(4, 16): removing a whole group (channels 4..7) is exact and drops num_groups to 3.
    Case("groupnorm_whole_group", lambda: ConvNorm(nn.GroupNorm(4, 16), c=16), lambda: (_img(),),
         **_sandwich_expect([4, 5, 6, 7], c=16,
                            extra_kept=_norm_kept([4, 5, 6, 7], c=16, names=("weight", "bias")),
                            attrs={"conv1.out_channels": 12, "conv2.in_channels": 12,
                                   "norm.num_groups": 3, "norm.num_channels": 12})),
    Case("groupnorm_one_group", lambda: ConvNorm(nn.GroupNorm(1, 8)), lambda: (_img(),),
         exact=False,
         **_sandwich_expect([3], extra_kept=_norm_kept([3], names=("weight", "bias")),
                            attrs={"conv1.out_channels": 7, "conv2.in_channels": 7,
                                   "norm.num_groups": 1, "norm.num_channels": 7})),
    Case("layernorm_last_dim", lambda: LinearNorm(nn.LayerNorm(8)), lambda: (_seeded(2, 5, 6, seed=1),),
         exact=False,
         **_lin_expect([1, 2], kept=_norm_kept([1, 2], names=("weight", "bias")),
                       attrs={"norm.normalized_shape": (6,)})),
    Case("layernorm_chw", lambda: ConvNorm(nn.LayerNorm([8, 4, 4])), lambda: (_img(spatial=(4, 4)),),
         exact=False,
         **_sandwich_expect([3], extra_kept=_norm_kept([3], names=("weight", "bias")), attrs={
             "conv1.out_channels": 7, "conv2.in_channels": 7, "norm.normalized_shape": (7, 4, 4)})),
    Case("prelu_channels", lambda: ConvNorm(nn.PReLU(8)), lambda: (_img(),),
         **_sandwich_expect([0, 1], extra_kept={"norm.weight": {0: K(8, [0, 1])}}, attrs={
             "conv1.out_channels": 6, "conv2.in_channels": 6, "norm.num_parameters": 6})),
    Case("prelu_single", lambda: ConvNorm(nn.PReLU(1)), lambda: (_img(),),
         shapes={"norm.weight": (1,)},
         **_sandwich_expect([0, 1], attrs={"conv1.out_channels": 6, "conv2.in_channels": 6,
                                           "norm.num_parameters": 1})),
)


class EmbedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids))


_add(Case("embedding_linear", EmbedLinear,
          lambda: (torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(1)),),
          plan={"emb.weight:1": [2, 6]},
          attrs={"emb.embedding_dim": 6, "emb.num_embeddings": 10, "fc.in_features": 6},
          kept={"emb.weight": {1: K(8, [2, 6])}, "fc.weight": {1: K(8, [2, 6])}},
          expanded={"emb.weight:1": [2, 6]}, pinned=["fc.weight:0"]))


# ----------------------------------------------------------------------------- free params and buffers

class ScaleParam(Sandwich):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(_seeded(8, 1, 1, seed=21))

    def mid(self, y):
        return F.relu(y * self.scale)


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.gamma = nn.Parameter(_seeded(8, seed=21))
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc2(h + self.gamma * h)


class TokensClsPos(nn.Module):
    """ViT-style: tokens -> proj -> cat cls token -> + position embedding -> head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.cls = nn.Parameter(_seeded(1, 1, 8, seed=21))
        self.pos = nn.Parameter(_seeded(1, 5, 8, seed=22))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.proj(x)
        c = self.cls.expand(x.shape[0], -1, -1)
        t = torch.cat([c, t], dim=1) + self.pos
        return self.head(F.gelu(t))


class BufferAffine(Sandwich):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask_buf", _seeded(8, 1, 1, seed=21))
        self.register_buffer("shift_buf", _seeded(8, 1, 1, seed=22))

    def mid(self, y):
        return torch.relu(y * self.mask_buf + self.shift_buf)


_add(
    Case("param_scale_c11", ScaleParam, lambda: (_img(),),
         **_sandwich_expect([2], extra_kept={"scale": {0: K(8, [2])}})),
    Case("param_layer_scale", LayerScale, lambda: (_seeded(4, 6, seed=1),),
         **_lin_expect([5], kept={"gamma": {0: K(8, [5])}})),
    Case("param_cls_token_pos_embed", TokensClsPos, lambda: (_seeded(2, 4, 6, seed=1),),
         **_lin_expect([1, 4], pre="proj", post="head",
                       kept={"cls": {2: K(8, [1, 4])}, "pos": {2: K(8, [1, 4])}},
                       pinned=["head.weight:0", "pos:1", "proj.weight:1"])),
    Case("buffers", BufferAffine, lambda: (_img(),),
         **_sandwich_expect([3, 4], extra_kept={"mask_buf": {0: K(8, [3, 4])},
                                                "shift_buf": {0: K(8, [3, 4])}})),
)


# ------------------------------------------------------------------------------------ element-wise ops

class BroadcastBinary(Sandwich):
    def __init__(self):
        super().__init__()
        self.p_add = nn.Parameter(_seeded(8, 1, 1, seed=31))
        self.p_mul = nn.Parameter(_seeded(8, 1, 1, seed=32))
        self.p_sub = nn.Parameter(_seeded(8, 1, 1, seed=33))
        self.p_div = nn.Parameter(_seeded(8, 1, 1, seed=34, positive=True))

    def mid(self, y):
        y = y + self.p_add
        y = torch.mul(y, self.p_mul)
        y = self.p_sub - y
        return torch.div(y, self.p_div) * 2.0 + 1.0


class BinaryBranches(nn.Module):
    """Two convs of the same input meet in add/mul/sub/div: their output channels couple."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a = self.conv_a(x)
        b = self.conv_b(x)
        y = a + b
        y = y * torch.sigmoid(a)
        y = torch.sub(y, b)
        y = y / (b.abs() + 1)
        y = y * a.mean((2, 3), keepdim=True)
        return self.conv2(y)


class Activations(Sandwich):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.gelu = nn.GELU()
        self.hswish = nn.Hardswish()
        self.lrelu = nn.LeakyReLU(0.1)
        self.relu6 = nn.ReLU6()
        self.silu = nn.SiLU()
        self.mish = nn.Mish()

    def mid(self, y):
        y = self.lrelu(y)
        y = self.gelu(y) + F.gelu(y, approximate="tanh")
        y = torch.sigmoid(y) + y.sigmoid() + torch.tanh(y) + F.silu(y) + self.silu(y) + self.mish(y)
        y = self.hswish(y) + F.hardsigmoid(y) + F.elu(y) + F.softplus(y) + self.relu6(y)
        y = -y + y.abs() + torch.clamp(y, -1.0, 1.0) + y.clamp(min=0) + y ** 2
        y = F.relu(y) + torch.relu(y) + y.relu()
        return self.relu(y)


class Dropouts(Sandwich):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.drop2d = nn.Dropout2d(0.3)

    def mid(self, y):
        return self.drop2d(F.dropout(self.drop(y), 0.2, self.training))


class Pools(Sandwich):
    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2d(2)
        self.adapt = nn.AdaptiveAvgPool2d(2)

    def mid(self, y):
        y = self.maxpool(y)                                   # 8x8 -> 4x4
        y = F.avg_pool2d(y, 3, stride=1, padding=1)           # 4x4
        y = F.max_pool2d(y, 3, stride=1, padding=1) + y       # 4x4
        return self.adapt(y) + F.adaptive_max_pool2d(y, (2, 2))


class Interp(Sandwich):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(size=(12, 12), mode="bilinear", align_corners=False)

    def mid(self, y):
        return self.up(F.interpolate(y, scale_factor=2, mode="nearest"))


class Pad(Sandwich):
    def mid(self, y):
        return F.pad(F.pad(y, (1, 1, 2, 0)), (1, 1, 1, 1), mode="reflect")


class Roll(Sandwich):
    def mid(self, y):
        return torch.roll(y, shifts=(1, -2), dims=(2, 3)) + y.roll(1, -1)


_add(
    Case("binary_broadcast_c11", BroadcastBinary, lambda: (_img(),),
         **_sandwich_expect([1, 6], extra_kept={f"p_{n}": {0: K(8, [1, 6])} for n in
                                                ("add", "mul", "sub", "div")})),
    Case("binary_branches", BinaryBranches, lambda: (_img(),),
         **_sandwich_expect([0, 6], pre="conv_a",
                            extra_kept={"conv_b.weight": {0: K(8, [0, 6])}, "conv_b.bias": {0: K(8, [0, 6])}},
                            attrs={"conv_a.out_channels": 6, "conv_b.out_channels": 6,
                                   "conv2.in_channels": 6})),
    Case("activations", Activations, lambda: (_img(),), **_sandwich_expect([3])),
    Case("dropout", Dropouts, lambda: (_img(),), **_sandwich_expect([0, 2, 4])),
    Case("pooling", Pools, lambda: (_img(),), **_sandwich_expect([7])),
    Case("interpolate_upsample", Interp, lambda: (_img(),), **_sandwich_expect([1, 2])),
    Case("pad_spatial", Pad, lambda: (_img(),), **_sandwich_expect([5])),
    Case("roll_spatial", Roll, lambda: (_img(),), **_sandwich_expect([6])),
)


# --------------------------------------------------------------------------------------- cat and stack

class Cat(nn.Module):
    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim
        self.convA = nn.Conv2d(3, 4, 1)
        self.convB = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.conv2(torch.cat((self.convA(x), self.convB(x)), self.dim))


class CatSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.convA = nn.Conv2d(3, 8, 1)
        self.convB = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.cat([self.convA(x), self.convB(x)], dim=2))


class CatWidth(nn.Module):
    """cat on dim=-1 (width): channels couple 1:1 (Torch-Pruning reads dim=-1 as a feature-dim cat)."""

    def __init__(self):
        super().__init__()
        self.convA = nn.Conv2d(3, 8, 1)
        self.convB = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.cat([self.convA(x), self.convB(x)], dim=-1))


class Stack(nn.Module):
    """stack(dim=1) then flatten(1, 2): channel c of a -> 0*8+c, of b -> 8+c."""

    def __init__(self):
        super().__init__()
        self.convA = nn.Conv2d(3, 8, 1)
        self.convB = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        s = torch.stack([self.convA(x), self.convB(x)], dim=1)
        return self.conv2(torch.flatten(s, 1, 2))


_add(
    Case("cat_second_input", Cat, lambda: (_img(),),
         plan={"convB.weight:0": [1]},
         attrs={"convA.out_channels": 4, "convB.out_channels": 5, "conv2.in_channels": 9},
         kept={"convB.weight": {0: K(6, [1])}, "convB.bias": {0: K(6, [1])}, "conv2.weight": {1: K(10, [5])}},
         expanded={"convB.weight:0": [1]}, pinned=["conv2.weight:0"]),
    Case("cat_first_input", Cat, lambda: (_img(),),
         plan={"convA.weight:0": [0, 3]},
         attrs={"convA.out_channels": 2, "convB.out_channels": 6, "conv2.in_channels": 8},
         kept={"convA.weight": {0: [1, 2]}, "conv2.weight": {1: K(10, [0, 3])}},
         expanded={"convA.weight:0": [0, 3]}, pinned=["conv2.weight:0"]),
    # keyed on the consumer: indices span both inputs; cat dim given as -3.
    Case("cat_consumer_key_negative_dim", lambda: Cat(dim=-3), lambda: (_img(),),
         plan={"conv2.weight:1": [0, 5]},
         attrs={"convA.out_channels": 3, "convB.out_channels": 5, "conv2.in_channels": 8},
         kept={"convA.weight": {0: [1, 2, 3]}, "convB.weight": {0: K(6, [1])},
               "conv2.weight": {1: K(10, [0, 5])}},
         expanded={"conv2.weight:1": [0, 5]}, pinned=["conv2.weight:0"]),
    Case("cat_spatial", CatSpatial, lambda: (_img(),),
         plan={"convA.weight:0": [2]},
         attrs={"convA.out_channels": 7, "convB.out_channels": 7, "conv2.in_channels": 7},
         kept={"convA.weight": {0: K(8, [2])}, "convB.weight": {0: K(8, [2])}, "conv2.weight": {1: K(8, [2])}},
         expanded={"convA.weight:0": [2]}, pinned=["conv2.weight:0"]),
    Case("cat_width_dim_minus1", CatWidth, lambda: (_img(),),
         plan={"convB.weight:0": [0, 7]},
         attrs={"convA.out_channels": 6, "convB.out_channels": 6, "conv2.in_channels": 6},
         kept={"convA.weight": {0: K(8, [0, 7])}, "convB.weight": {0: K(8, [0, 7])},
               "conv2.weight": {1: K(8, [0, 7])}},
         expanded={"convB.weight:0": [0, 7]}, pinned=["conv2.weight:0"]),
    Case("stack_flatten", Stack, lambda: (_img(),),
         plan={"convA.weight:0": [2]},
         attrs={"convA.out_channels": 7, "convB.out_channels": 7, "conv2.in_channels": 14},
         kept={"convA.weight": {0: K(8, [2])}, "convB.weight": {0: K(8, [2])},
               "conv2.weight": {1: K(16, [2, 10])}},
         expanded={"convA.weight:0": [2]}, pinned=["conv2.weight:0"]),
)


# -------------------------------------------------------------------------------- split / chunk / unbind

class SplitSwapped(nn.Module):
    """The Torch-Pruning split-order bug: consumers of the two chunks used in reverse order."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.p = nn.Conv2d(5, 4, 1)
        self.q = nn.Conv2d(3, 4, 1)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y1, y2 = torch.split(self.conv1(x), [3, 5], dim=1)
        return self.conv_out(torch.cat([self.p(y2), self.q(y1)], 1))


class Split3(nn.Module):
    """``y.split([2, 3, 3], 1)``, chunks consumed out of order through explicit getitem."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.ca = nn.Conv2d(3, 4, 1)
        self.cb = nn.Conv2d(2, 4, 1)
        self.cc = nn.Conv2d(3, 4, 1)
        self.conv_out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        parts = self.conv1(x).split([2, 3, 3], 1)
        a = self.ca(parts[2])
        b = self.cb(parts[0])
        c = self.cc(parts[1])
        return self.conv_out(torch.cat([c, a, b], 1))


class ChunkGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        v, u = self.conv1(x).chunk(2, dim=1)
        return self.conv2(u * torch.sigmoid(v))


class UnbindView(nn.Module):
    """view(B, 2, 4, H, W).unbind(1): channel c = 4*a + b; the two halves meet in an add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.ca = nn.Conv2d(4, 4, 1)
        self.cb = nn.Conv2d(4, 4, 1, bias=False)

    def forward(self, x):
        y = self.conv1(x)
        a, b = y.view(x.shape[0], 2, 4, 4, 4).unbind(1)
        return self.ca(b) + self.cb(a)


class SliceConst(nn.Module):
    def __init__(self, negative: bool = False):
        super().__init__()
        self.negative = negative
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y[:, -4:] if self.negative else y[:, 2:6])


_add(
    Case("split_swapped_consumers", SplitSwapped, lambda: (_img(),),
         plan={"conv1.weight:0": [1, 4]},
         attrs={"conv1.out_channels": 6, "q.in_channels": 2, "p.in_channels": 4, "conv_out.in_channels": 8},
         kept={"conv1.weight": {0: K(8, [1, 4])}, "q.weight": {1: [0, 2]}, "p.weight": {1: [0, 2, 3, 4]}},
         expanded={"conv1.weight:0": [1, 4]}, pinned=["conv_out.weight:0"]),
    # keyed on the consumer of the second chunk: p's input 0 is conv1's output 3.
    Case("split_swapped_consumer_key", SplitSwapped, lambda: (_img(),),
         plan={"p.weight:1": [0]},
         attrs={"conv1.out_channels": 7, "q.in_channels": 3, "p.in_channels": 4},
         kept={"conv1.weight": {0: K(8, [3])}, "q.weight": {1: [0, 1, 2]}, "p.weight": {1: [1, 2, 3, 4]}},
         expanded={"p.weight:1": [0]}, pinned=["conv_out.weight:0"]),
    Case("split3_getitem_any_order", Split3, lambda: (_img(),),
         plan={"conv1.weight:0": [0, 4, 7]},
         attrs={"conv1.out_channels": 5, "cb.in_channels": 1, "cc.in_channels": 2, "ca.in_channels": 2,
                "conv_out.in_channels": 12},
         kept={"conv1.weight": {0: K(8, [0, 4, 7])}, "cb.weight": {1: [1]}, "cc.weight": {1: [0, 1]},
               "ca.weight": {1: [0, 1]}},
         expanded={"conv1.weight:0": [0, 4, 7]}, pinned=["conv_out.weight:0"]),
    Case("chunk_glu", ChunkGLU, lambda: (_img(),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 6, "conv2.in_channels": 3},
         kept={"conv1.weight": {0: K(8, [1, 5])}, "conv2.weight": {1: [0, 2, 3]}},
         expanded={"conv1.weight:0": [1, 5]}, pinned=["conv2.weight:0"]),
    Case("unbind_view", UnbindView, lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 6, "ca.in_channels": 3, "cb.in_channels": 3},
         kept={"conv1.weight": {0: K(8, [1, 5])}, "ca.weight": {1: [0, 2, 3]}, "cb.weight": {1: [0, 2, 3]}},
         expanded={"conv1.weight:0": [1, 5]}, pinned=["ca.weight:0"]),
    # x[:, 2:6]: removing 0 shifts the start, removing 3 (slice position 1) shrinks it -> x[:, 1:4].
    Case("slice_const_bounds", SliceConst, lambda: (_img(),),
         plan={"conv1.weight:0": [0, 3]},
         attrs={"conv1.out_channels": 6, "conv2.in_channels": 3},
         kept={"conv1.weight": {0: K(8, [0, 3])}, "conv2.weight": {1: [0, 2, 3]}},
         expanded={"conv1.weight:0": [0, 3]}, pinned=["conv2.weight:0"]),
    # x[:, -4:] takes channels 4..7; removing 0 (outside) and 5 (slice position 1) -> x[:, -3:].
    Case("slice_negative_start", lambda: SliceConst(negative=True), lambda: (_img(),),
         plan={"conv1.weight:0": [0, 5]},
         attrs={"conv1.out_channels": 6, "conv2.in_channels": 3},
         kept={"conv1.weight": {0: K(8, [0, 5])}, "conv2.weight": {1: [0, 2, 3]}},
         expanded={"conv1.weight:0": [0, 5]}, pinned=["conv2.weight:0"]),
)


# ------------------------------------------------------------------------------------- shape movements

class ViewChain(nn.Module):
    """permute/contiguous/Linear/transpose/unsqueeze/squeeze/flatten/unflatten/reshape/view with constants."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 6)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        B = x.shape[0]
        y = self.conv1(x).permute(0, 2, 3, 1).contiguous()      # B, 4, 4, 8
        y = self.fc(y).transpose(1, 3)                           # B, 6, 4, 4
        y = y.unsqueeze(2).squeeze(2)
        y = torch.flatten(y, 2)                                  # B, 6, 16
        y = y.unflatten(2, (4, 4))                               # B, 6, 4, 4
        y = y.reshape(B, 6, 4, 4).view(B, 6, 16).view(B, 6, 4, 4)
        return self.conv2(y)


class ExpandGate(Sandwich):
    def mid(self, y):
        g = y.mean((2, 3), keepdim=True)
        return y * torch.sigmoid(g.expand(-1, 8, 4, 4)) + g.expand_as(y)


class FlattenLinear(nn.Module):
    def __init__(self, use_view=False):
        super().__init__()
        self.use_view = use_view
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = y.view(y.size(0), -1) if self.use_view else torch.flatten(y, 1)
        return self.fc(y)


class LinearViewConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 32)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.fc(x).view(-1, 2, 4, 4))


class ChannelShuffle(nn.Module):
    """ShuffleNet shuffle with 2 groups: channel c = 4a + b goes to 2b + a."""

    def __init__(self, const: bool):
        super().__init__()
        self.const = const
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        if self.const:
            y = y.view(x.shape[0], 2, 4, 4, 4).transpose(1, 2).reshape(x.shape[0], 8, 4, 4)
        else:  # torchvision style: sizes read at run time
            b, c, h, w = y.size()
            y = y.view(b, 2, c // 2, h, w)
            y = torch.transpose(y, 1, 2).contiguous()
            y = y.view(b, -1, h, w)
        return self.conv2(y)


_SHUFFLE_KEPT = [0, 1, 4, 5, 6, 7]   # removing column b=1 ({1, 5}) removes shuffled positions 2 and 3
_FC_BLOCK = list(range(16, 32))

_add(
    Case("view_permute_transpose_chain", ViewChain, lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1], "fc.weight:0": [2, 3]},
         attrs={"conv1.out_channels": 7, "fc.in_features": 7, "fc.out_features": 4, "conv2.in_channels": 4},
         kept={"conv1.weight": {0: K(8, [1])}, "fc.weight": {0: K(6, [2, 3]), 1: K(8, [1])},
               "fc.bias": {0: K(6, [2, 3])}, "conv2.weight": {1: K(6, [2, 3])}},
         expanded={"conv1.weight:0": [1], "fc.weight:0": [2, 3]}, pinned=["conv2.weight:0"]),
    Case("expand_gate", ExpandGate, lambda: (_img(spatial=(4, 4)),), **_sandwich_expect([2])),
    Case("flatten_linear", FlattenLinear, lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 3, "fc.in_features": 48},
         kept={"conv1.weight": {0: [0, 2, 3]}, "fc.weight": {1: K(64, _FC_BLOCK)}},
         expanded={"conv1.weight:0": [1]}, pinned=["fc.weight:0"]),
    Case("view_flatten_linear", lambda: FlattenLinear(use_view=True), lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 3, "fc.in_features": 48},
         kept={"conv1.weight": {0: [0, 2, 3]}, "fc.weight": {1: K(64, _FC_BLOCK)}},
         expanded={"conv1.weight:0": [1]}, pinned=["fc.weight:0"]),
    # keyed on the Linear: feature 20 belongs to channel 1's block 16..31.
    Case("flatten_linear_fc_key", FlattenLinear, lambda: (_img(spatial=(4, 4)),),
         plan={"fc.weight:1": [20]},
         attrs={"conv1.out_channels": 3, "fc.in_features": 48},
         kept={"conv1.weight": {0: [0, 2, 3]}, "fc.weight": {1: K(64, _FC_BLOCK)}},
         expanded={"fc.weight:1": _FC_BLOCK}, pinned=["fc.weight:0"]),
    Case("linear_view_conv", LinearViewConv, lambda: (_seeded(2, 6, seed=1),),
         plan={"fc.weight:0": [16]},
         attrs={"fc.out_features": 16, "conv.in_channels": 1},
         kept={"fc.weight": {0: list(range(16))}, "fc.bias": {0: list(range(16))}, "conv.weight": {1: [0]}},
         expanded={"fc.weight:0": _FC_BLOCK}, pinned=["conv.weight:0"]),
    Case("channel_shuffle_const", lambda: ChannelShuffle(True), lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 6, "conv2.in_channels": 6},
         kept={"conv1.weight": {0: K(8, [1, 5])}, "conv2.weight": {1: _SHUFFLE_KEPT}},
         expanded={"conv1.weight:0": [1, 5]}, pinned=["conv2.weight:0"]),
    Case("channel_shuffle_dynamic", lambda: ChannelShuffle(False), lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": [1]},
         attrs={"conv1.out_channels": 6, "conv2.in_channels": 6},
         kept={"conv1.weight": {0: K(8, [1, 5])}, "conv2.weight": {1: _SHUFFLE_KEPT}},
         expanded={"conv1.weight:0": [1, 5]}, pinned=["conv2.weight:0"]),
)


# ------------------------------------------------------------------------------------------ reductions

class SpatialReduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv1(x)
        z = y.mean((2, 3)) + 0.1 * y.sum(dim=(-1, -2)) + torch.amax(y, dim=(2, 3))
        z = z + y.mean(-1, keepdim=True).mean(-2).squeeze(-1)
        return self.fc(z)


class ChannelReduce(nn.Module):
    """``y2.amax(1)`` reduces over conv2's outputs: that group is pinned, conv1's is not (a sum or a mean
    over channels would not pin: see tests/test_forms.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        y2 = self.conv2(F.relu(self.conv1(x)))
        return self.conv3(y2.amax(1, keepdim=True))


_add(
    Case("reduce_spatial", SpatialReduce, lambda: (_img(),),
         plan={"conv1.weight:0": [2]},
         attrs={"conv1.out_channels": 7, "fc.in_features": 7},
         kept={"conv1.weight": {0: K(8, [2])}, "conv1.bias": {0: K(8, [2])}, "fc.weight": {1: K(8, [2])}},
         expanded={"conv1.weight:0": [2]}, pinned=["fc.weight:0", "conv1.weight:1"]),
    Case("reduce_channel_pins", ChannelReduce, lambda: (_img(),),
         plan={"conv1.weight:0": [0]},
         attrs={"conv1.out_channels": 7, "conv2.in_channels": 7, "conv2.out_channels": 8},
         kept={"conv1.weight": {0: K(8, [0])}, "conv2.weight": {1: K(8, [0])}},
         shapes={"conv2.bias": (8,)},
         expanded={"conv1.weight:0": [0]}, pinned=["conv2.weight:0", "conv3.weight:0"]),
)


# ----------------------------------------------------------------------- sharing, inputs, outputs, consts

class SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(self.shared(y))
        y = F.relu(self.shared(y))
        return self.conv_out(y)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_x = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_z = nn.Conv2d(5, 8, 1)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x, z):
        return self.conv_out(F.relu(self.conv_x(x) + self.conv_z(z)))


class NestedOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.head_a = nn.Conv2d(8, 4, 1)
        self.head_b = nn.Conv2d(8, 2, 1)
        self.head_c = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        return {"a": self.head_a(h), "b": (self.head_b(h), [self.head_c(h.mean((2, 3)))])}


class HardCoded(nn.Module):
    """Constants in forward that the rewrite must fix: view(B, 64, -1), split [16, 48], slice 8:24."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 1)
        self.conv_a = nn.Conv2d(16, 4, 1)
        self.conv_b = nn.Conv2d(48, 4, 1)
        self.conv_c = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        B = x.shape[0]
        y = self.conv1(x)
        a, b = torch.split(y, [16, 48], 1)
        c = y[:, 8:24]
        z = y.view(B, 64, -1).mean(-1)
        s = self.conv_a(a) + self.conv_b(b) + self.conv_c(c)
        return s.mean((2, 3)) + self.fc(z)


_HC_REMOVED = [2, 10, 20, 30]

_add(
    Case("module_called_twice", SharedTwice, lambda: (_img(),),
         plan={"conv1.weight:0": [2, 5]},
         attrs={"conv1.out_channels": 6, "shared.in_channels": 6, "shared.out_channels": 6,
                "conv_out.in_channels": 6},
         kept={"conv1.weight": {0: K(8, [2, 5])}, "shared.weight": {0: K(8, [2, 5]), 1: K(8, [2, 5])},
               "shared.bias": {0: K(8, [2, 5])}, "conv_out.weight": {1: K(8, [2, 5])}},
         expanded={"conv1.weight:0": [2, 5]}, pinned=["conv_out.weight:0"]),
    Case("several_inputs", TwoInputs, lambda: (_img(), _img(c=5, seed=2)),
         plan={"conv_x.weight:0": [0]},
         attrs={"conv_x.out_channels": 7, "conv_z.out_channels": 7, "conv_out.in_channels": 7,
                "conv_z.in_channels": 5},
         kept={"conv_x.weight": {0: K(8, [0])}, "conv_z.weight": {0: K(8, [0])},
               "conv_z.bias": {0: K(8, [0])}, "conv_out.weight": {1: K(8, [0])}},
         expanded={"conv_x.weight:0": [0]},
         pinned=["conv_out.weight:0", "conv_x.weight:1", "conv_z.weight:1"]),
    Case("nested_outputs", NestedOutputs, lambda: (_img(),),
         plan={"conv1.weight:0": [1, 2]},
         attrs={"conv1.out_channels": 6, "head_a.in_channels": 6, "head_b.in_channels": 6,
                "head_c.in_features": 6},
         kept={"conv1.weight": {0: K(8, [1, 2])}, "head_a.weight": {1: K(8, [1, 2])},
               "head_b.weight": {1: K(8, [1, 2])}, "head_c.weight": {1: K(8, [1, 2])}},
         expanded={"conv1.weight:0": [1, 2]},
         pinned=["head_a.weight:0", "head_b.weight:0", "head_c.weight:0"]),
    Case("hardcoded_constants", HardCoded, lambda: (_img(spatial=(4, 4)),),
         plan={"conv1.weight:0": _HC_REMOVED},
         attrs={"conv1.out_channels": 60, "conv_a.in_channels": 14, "conv_b.in_channels": 46,
                "conv_c.in_channels": 14, "fc.in_features": 60},
         kept={"conv1.weight": {0: K(64, _HC_REMOVED)}, "conv_a.weight": {1: K(16, [2, 10])},
               "conv_b.weight": {1: K(48, [4, 14])}, "conv_c.weight": {1: K(16, [2, 12])},
               "fc.weight": {1: K(64, _HC_REMOVED)}},
         expanded={"conv1.weight:0": _HC_REMOVED}, pinned=["fc.weight:0"]),
)

CASES_BY_NAME: Dict[str, Case] = {c.name: c for c in CASES}
if len(CASES_BY_NAME) != len(CASES):  # pragma: no cover - a typo in this file
    raise RuntimeError("duplicate case names in tests/models.py")


# ---------------------------------------------------------------------------------------------- oracle

def named_tensors(m: nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters and buffers by qualified name."""
    out = dict(m.named_buffers())
    out.update(dict(m.named_parameters()))
    return out


def _contained(small: torch.Tensor, big: torch.Tensor) -> bool:
    return bool(torch.isin(small.reshape(-1), big.reshape(-1)).all())


def recover_slices(orig: nn.Module, small: nn.Module) -> Dict[str, Dict[int, List[int]]]:
    """Recover, from values alone, which indices each tensor of ``small`` kept from ``orig``.

    For every parameter/buffer of ``small``: the same name must exist in ``orig`` with the same rank and no
    dim larger; a tensor of unchanged shape must be equal; a shrunk one must equal ``orig`` indexed along its
    shrunk dims by increasing index lists, found by order-preserving matching of slices. Returns
    ``{name: {dim: kept indices}}`` for shrunk tensors; raises AssertionError otherwise. Independent of
    fxprune's analysis (it sees only the two models' values).
    """
    o_t, s_t = named_tensors(orig), named_tensors(small)
    result: Dict[str, Dict[int, List[int]]] = {}
    for name, s in s_t.items():
        assert name in o_t, f"pruned model has tensor {name!r} that the original lacks"
        o = o_t[name].detach()
        s = s.detach()
        assert s.dim() == o.dim(), f"{name}: rank {s.dim()} != original rank {o.dim()}"
        shrunk = [d for d in range(o.dim()) if s.shape[d] != o.shape[d]]
        for d in shrunk:
            assert s.shape[d] < o.shape[d], f"{name}: dim {d} grew from {o.shape[d]} to {s.shape[d]}"
        if not shrunk:
            assert torch.equal(s, o), f"{name}: shape unchanged but values differ from the original"
            continue
        kept: Dict[int, List[int]] = {}
        for d in shrunk:
            idx, i = [], 0
            for j in range(s.shape[d]):
                sj = s.select(d, j)
                while i < o.shape[d] and not _contained(sj, o.select(d, i)):
                    i += 1
                assert i < o.shape[d], f"{name}: slice {j} along dim {d} is not found in the original"
                idx.append(i)
                i += 1
            kept[d] = idx
        sel = o
        for d, idx in kept.items():
            sel = sel.index_select(d, torch.tensor(idx, dtype=torch.long))
        assert torch.equal(sel, s), f"{name}: not an index_select of the original along dims {shrunk}"
        result[name] = kept
    return result


if __name__ == "__main__":  # sanity check of the zoo itself, no fxprune involved
    for case in CASES:
        model, inputs = case.factory()
        with torch.no_grad():
            model(*inputs)
        tensors = named_tensors(model)
        for pname, dims in case.kept.items():
            assert pname in tensors, (case.name, pname)
            for dim, idx in dims.items():
                assert max(idx) < tensors[pname].shape[dim], (case.name, pname, dim)
        for key in list(case.plan) + case.pinned + list(case.expanded):
            pname, _, dim = key.rpartition(":")
            assert pname in tensors and int(dim) < tensors[pname].dim(), (case.name, key)
        torch.fx.symbolic_trace(model)
    print(f"{len(CASES)} cases OK")
