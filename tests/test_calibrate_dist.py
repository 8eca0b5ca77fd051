"""``fxprune.calibrate(..., process_group=...)``: statistics of 2 gloo ranks, each on its own shard of the
batches, reduced to what one process on all the batches records, and the same plans.

One start of 2 ranks (``torch.multiprocessing.start_processes``, forkserver) runs every scenario; each rank
saves what it got, and the tests compare it with one process calibrating on all the batches here.
"""
from __future__ import annotations

import datetime
import os
import warnings

import pytest
import torch
from torch import nn

import fxprune

WORLD = 2


# ---------------------------------------------------------------------------------------------- models, data

def tiny_llama() -> nn.Module:
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    return transformers.LlamaForCausalLM(cfg).eval()


def llama_batches() -> list:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 100, (1, 8 + 2 * i), generator=g) for i in range(6)]  # unequal token counts


class Branchy(nn.Module):
    """Conv + linear; ``side`` only runs on batches of 3 images: a layer one rank may never see."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, 8, 3, padding=1)
        self.fc, self.side = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        out = self.fc(h)
        return out + self.side(h) if x.shape[0] == 3 else out


def branchy_batches() -> list:
    g = torch.Generator().manual_seed(2)
    # the two batches of 3 go to rank 0 only in every split below
    return [torch.randn(n, 3, 6, 6, generator=g) * 2 + 1 for n in (3, 2, 3, 4, 2, 5)]


def mse(model, batch):
    return model(batch).pow(2).mean()


def mlp_modules(model) -> tuple:
    return tuple(m for L in model.model.layers for m in (L.mlp.gate_proj, L.mlp.up_proj))


def llama_plan(model, imp) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = fxprune.Pruner(model, fxprune.Inputs(llama_batches()[0], use_cache=False), importance=imp,
                            pruning_ratio=0.0, pruning_ratio_dict={mlp_modules(model): 0.25})
        pr.step()
    return pr.plan.to_dict()


def stats(imp) -> dict:
    """Every reduced field of ``imp`` (tensors on the CPU)."""
    out = {}
    for attr in imp._stat_fields():
        d = getattr(imp, attr)
        out[attr] = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
    return out


# Splits of the 6 batches: rank -> indices. Rank 1 gets no batch of 3 images (Branchy's ``side``) and, in
# "empty", no batch at all.
SPLITS = {"even": ([0, 1, 2], [3, 4, 5]), "uneven": ([0], [1, 2, 3, 4, 5]),
          "uneven2": ([0, 2, 3, 5], [1, 4]), "empty": ([0, 1, 2, 3, 4, 5], [])}

# scenario -> (model, criterion, split, plan?)
SCENARIOS = {
    "llama_fluct_even": ("llama", "fluctuation", "even", False),
    "llama_fluct_uneven": ("llama", "fluctuation", "uneven", True),
    "llama_act_uneven2": ("llama", "activation", "uneven2", False),
    "llama_taylor_uneven2": ("llama", "taylor", "uneven2", True),
    "branchy_fluct_uneven2": ("branchy", "fluctuation", "uneven2", False),
    "branchy_act_empty": ("branchy", "activation", "empty", False),
    "branchy_hessian_uneven2": ("branchy", "hessian", "uneven2", False),
    "branchy_taylor_uneven": ("branchy", "taylor", "uneven", False),
}


def one_scenario(model, batches, crit: str, group) -> fxprune.importance.Importance:
    loss = mse if isinstance(model, Branchy) and crit in ("taylor", "hessian") else None
    return fxprune.calibrate(model, batches, crit, loss_fn=loss, progress=False, process_group=group)


# ------------------------------------------------------------------------------------------------ the ranks

def _worker(rank: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                                         timeout=datetime.timedelta(seconds=60))
    res: dict = {}
    try:
        models = {"llama": tiny_llama(), "branchy": Branchy()}
        data = {"llama": llama_batches(), "branchy": branchy_batches()}
        for name, (mk, crit, split, plan) in SCENARIOS.items():
            mine = [data[mk][i] for i in SPLITS[split][rank]]
            imp = one_scenario(models[mk], mine, crit, "auto")
            res[name] = {"stats": stats(imp)}
            if plan:
                res[name]["plan"] = llama_plan(models[mk], imp)
        # by hand: record, then imp.all_reduce(group) with an explicit group
        group = torch.distributed.new_group([0, 1])
        imp = fxprune.importance.FluctuationImportance()
        with imp.compute_importance(models["branchy"]), torch.no_grad():
            for i in SPLITS["uneven"][rank]:
                models["branchy"](data["branchy"][i])
        res["by_hand"] = {"stats": stats(imp.all_reduce(group, model=models["branchy"]))}
        # different models on the ranks: a typed error on both, no hang
        other = Branchy(width=8 if rank == 0 else 6)
        try:
            fxprune.calibrate(other, data["branchy"][:2], "fluctuation", progress=False, process_group="auto")
            res["mismatch"] = "no error"
        except Exception as e:
            res["mismatch"] = f"{type(e).__name__}: {e}"
        # the default process_group=None under an initialised group: this rank's statistics, one warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            imp = fxprune.calibrate(models["branchy"], data["branchy"][rank:rank + 1], "activation",
                                    progress=False)
        res["unreduced"] = {"n": imp._n["conv1"], "warnings": [str(w.message) for w in caught],
                            "files": [os.path.basename(w.filename) for w in caught]}
        # a rank whose batch fails: it re-raises its own error, the other rank a DistributedError
        bad = [data["branchy"][0]] + ([torch.randn(2, 5, 6, 6)] if rank == 1 else [])
        try:
            fxprune.calibrate(models["branchy"], bad, "activation", progress=False, process_group="auto")
            res["failure"] = "no error"
        except Exception as e:
            res["failure"] = f"{type(e).__name__}: {e}"
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    # forkserver, not spawn: the server imports torch, transformers and fxprune once (~10 CPU-seconds here)
    # and both ranks fork from it; not fork: autograd refuses to run in a child forked after a backward
    import multiprocessing
    multiprocessing.set_forkserver_preload(["fxprune", "transformers.models.llama.modeling_llama", __name__])
    tmp = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.start_processes(_worker, args=(f"file://{tmp}/init", str(tmp)), nprocs=WORLD,
                                          join=True, start_method="forkserver")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """One process, every batch, no process group: the expected result."""
    models = {"llama": tiny_llama(), "branchy": Branchy()}
    data = {"llama": llama_batches(), "branchy": branchy_batches()}
    out = {}
    for name, (mk, crit, split, plan) in SCENARIOS.items():
        imp = one_scenario(models[mk], data[mk], crit, None)
        out[name] = {"stats": stats(imp)}
        if plan:
            out[name]["plan"] = llama_plan(models[mk], imp)
    imp = fxprune.importance.FluctuationImportance()
    with imp.compute_importance(models["branchy"]), torch.no_grad():
        for b in data["branchy"]:
            models["branchy"](b)
    out["by_hand"] = {"stats": stats(imp)}
    return out


def _assert_stats_close(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for attr, d in want.items():
        assert sorted(got[attr], key=repr) == sorted(d, key=repr), f"{where}: keys of {attr}"
        for k, v in d.items():
            g = got[attr][k]
            if isinstance(v, torch.Tensor):
                assert g.dtype == v.dtype and g.shape == v.shape, f"{where}: {attr}[{k!r}]"
                tol = 1e-10 if v.dtype == torch.float64 else 1e-5
                torch.testing.assert_close(g, v, rtol=tol, atol=tol * float(v.abs().max()),
                                           msg=f"{where}: {attr}[{k!r}]")
            else:
                assert g == v, f"{where}: {attr}[{k!r}] = {g} != {v}"


@pytest.mark.parametrize("name", list(SCENARIOS) + ["by_hand"])
def test_reduced_statistics_equal_one_process(ranks, single, name):
    for r in range(WORLD):
        _assert_stats_close(ranks[r][name]["stats"], single[name]["stats"], f"{name} rank {r}")
    # the ranks hold bit-identical statistics (one all_reduce result), not merely close ones
    for attr, d in ranks[0][name]["stats"].items():
        for k, v in d.items():
            other = ranks[1][name]["stats"][attr][k]
            assert torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other, f"{name} {attr} {k}"


def test_layer_seen_by_one_rank_is_reduced(ranks, single):
    # Branchy.side ran on rank 0's batches only; after the reduction both ranks hold its statistics
    for r in range(WORLD):
        assert "side" in ranks[r]["branchy_fluct_uneven2"]["stats"]["_n"]
        assert ranks[r]["branchy_fluct_uneven2"]["stats"]["_n"]["side"] == 3 + 3
    assert ranks[1]["branchy_act_empty"]["stats"]["_n"]["conv1"] == sum(
        b.shape[0] * 36 for b in branchy_batches())


@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s[3]])
def test_plans_equal_on_every_rank_and_one_process(ranks, single, name):
    assert ranks[0][name]["plan"] == ranks[1][name]["plan"] == single[name]["plan"]
    assert sum(len(v) for v in single[name]["plan"].values()) == 2 * 32  # 25 % of 128 in 2 MLPs


def test_local_statistics_would_differ(single):
    # the check above can fail: one rank's own shard gives other statistics and another plan
    model = tiny_llama()
    imp = one_scenario(model, [llama_batches()[i] for i in SPLITS["uneven"][1]], "fluctuation", None)
    assert not torch.allclose(imp.variances()["model.layers.0.mlp.down_proj"],
                              single["llama_fluct_uneven"]["stats"]["_m2"]["model.layers.0.mlp.down_proj"]
                              / single["llama_fluct_uneven"]["stats"]["_n"]["model.layers.0.mlp.down_proj"])
    assert llama_plan(model, imp) != single["llama_fluct_uneven"]["plan"]


def test_different_models_raise_a_typed_error_on_every_rank(ranks):
    for r in range(WORLD):
        assert ranks[r]["mismatch"].startswith("DistributedError: the ranks calibrate different models: "
                                               "parameter 'conv1.weight'"), ranks[r]["mismatch"]


def test_default_is_local_with_a_warning(ranks):
    for r in range(WORLD):
        got = ranks[r]["unreduced"]
        assert got["n"] == branchy_batches()[r].shape[0] * 36  # this rank's one batch only
        assert len(got["warnings"]) == 1 and "process_group=None" in got["warnings"][0], got["warnings"]
        assert got["files"] == [os.path.basename(__file__)]  # points at the caller, not at fxprune


def test_failing_rank_does_not_hang_the_others(ranks):
    assert ranks[1]["failure"].startswith("RuntimeError"), ranks[1]["failure"]
    assert ranks[0]["failure"].startswith("DistributedError: fxprune: calibration failed on 1 of 2 ranks "
                                          "(rank 1: RuntimeError"), ranks[0]["failure"]


def test_without_process_group_nothing_changes():
    # the default path: no collective, no warning, the same statistics as recording by hand
    m, batches = Branchy(), branchy_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fxprune.calibrate(m, batches, "fluctuation", progress=False)
        auto = fxprune.calibrate(m, batches, "fluctuation", progress=False, process_group="auto")
    want = fxprune.importance.FluctuationImportance()
    with want.compute_importance(m), torch.no_grad():
        for b in batches:
            m(b)
    for attr in want._stat_fields():
        for k, v in getattr(want, attr).items():
            for imp in (got, auto):
                g = getattr(imp, attr)[k]
                assert torch.equal(g, v) if isinstance(v, torch.Tensor) else g == v
    assert fxprune.importance.ActivationImportance().all_reduce("auto")._n == {}
    with pytest.raises(fxprune.DistributedError, match="not initialised"):
        fxprune.importance.ActivationImportance().all_reduce()
    with pytest.raises(fxprune.PlanError, match="process_group must be"):
        fxprune.calibrate(m, batches, "activation", progress=False, process_group="world")
    with pytest.raises(fxprune.PlanError, match="gave no batch"):
        fxprune.calibrate(m, [], "activation", progress=False)
