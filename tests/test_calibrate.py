"""Calibration criteria (fluctuation, activation, Taylor over batches) and bias compensation.

Oracles are independent of the library: numpy formulas over inputs captured by our own hooks, gradients
from ``torch.autograd.grad`` on a copy, and the original model with the removed inputs of a layer replaced by
their mean through a forward pre-hook.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxprune
import fxprune.importance as imp
from helpers import assert_state_unchanged, state_snapshot


def _mlp(bias2: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3, bias=bias2)).eval()


def _batches(n: int = 3, shape=(4, 5, 6), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _inputs_of(model: nn.Module, layer: str, batches) -> np.ndarray:
    """Every input row (token / position) that ``layer`` sees, captured by our own hook."""
    rows = []
    h = model.get_submodule(layer).register_forward_pre_hook(
        lambda m, a: rows.append(a[0].detach().reshape(-1, a[0].shape[-1]).double().numpy()))
    with torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    return np.concatenate(rows)


# -- criteria ------------------------------------------------------------------------------------------------
def test_fluctuation_score_is_input_variance_times_weight_column_norm():
    m, batches = _mlp(), _batches()
    f = imp.FluctuationImportance(normalizer=None)
    with f.compute_importance(m):
        for b in batches:
            m(b)
    h = _inputs_of(m, "2", batches)  # [60 tokens, 10]
    w2 = m[2].weight.detach().double().numpy()
    expected = h.var(axis=0) * (w2 ** 2).sum(axis=0)  # population variance x squared column norm
    g = fxprune.analyze(m, batches[0]).group_of("0.weight", 0)
    np.testing.assert_allclose(f(g, m).double().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(f.input_means()["2"].double().numpy(), h.mean(axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected, (w2 ** 2).sum(axis=0))  # the variance matters


def test_fluctuation_on_conv_uses_every_position():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 2, 1)).eval()
    xs = _batches(2, (2, 3, 6, 6))
    f = imp.FluctuationImportance(normalizer=None)
    with f.compute_importance(m):
        for x in xs:
            m(x)
    with torch.no_grad():
        h = torch.cat([torch.relu(m[0](x)) for x in xs]).permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
    w = m[2].weight.detach().double().numpy()
    expected = h.var(axis=0) * (w ** 2).sum(axis=(0, 2, 3))
    g = fxprune.analyze(m, xs[0]).group_of("0.weight", 0)
    np.testing.assert_allclose(f(g, m).double().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["activation", "fluctuation"])
def test_calibrate_over_batches_equals_all_tokens_at_once(name):
    m, batches = _mlp(), _batches()
    m.train()
    snap = state_snapshot(m)
    one = fxprune.calibrate(m, batches, name, progress=False)
    assert m.training and all(p.grad is None for p in m.parameters())  # flags and .grad as they were
    whole = imp.get_importance(name)
    with whole.compute_importance(m.eval()):
        m(torch.cat(batches))
    g = fxprune.analyze(m, batches[0]).group_of("0.weight", 0)
    torch.testing.assert_close(one(g, m), whole(g, m), rtol=1e-6, atol=0)
    for k, v in whole.input_means().items():
        torch.testing.assert_close(one.input_means()[k], v, rtol=1e-6, atol=1e-7)
    assert sorted(one.input_means()) == ["0", "2"]
    assert_state_unchanged(m, snap)


def test_calibrate_takes_tuples_dicts_inputs_and_max_batches():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x, scale=1.0):
            return self.b(torch.relu(self.a(x)) * scale)

    m, xs = Kw().eval(), _batches(4, (3, 4))
    batches = [xs[0], (xs[1],), {"x": xs[2], "scale": 2.0}, fxprune.Inputs(xs[3], scale=0.5)]
    a = fxprune.calibrate(m, batches, imp.ActivationImportance(), max_batches=3, progress=False)
    with torch.no_grad():
        into_b = torch.cat([torch.relu(m.a(xs[0])), torch.relu(m.a(xs[1])), 2.0 * torch.relu(m.a(xs[2]))])
    torch.testing.assert_close(a.input_means()["a"], torch.cat(xs[:3]).mean(0))
    torch.testing.assert_close(a.input_means()["b"], into_b.mean(0))  # the dict's keyword reached forward
    assert a._n["b"] == 9  # three batches of three rows, the fourth not run


def test_calibrate_taylor_accumulates_the_per_batch_formula():
    m, batches = _mlp(), _batches()
    m[0].weight.grad = torch.full_like(m[0].weight, 7.0)  # a user's gradient: kept as it was
    loss_fn = lambda model, b: model(b).pow(2).mean()  # noqa: E731
    t = fxprune.calibrate(m, batches, imp.TaylorImportance(normalizer=None, group_reduction="sum"),
                          loss_fn=loss_fn, progress=False)
    assert torch.equal(m[0].weight.grad, torch.full_like(m[0].weight, 7.0)) and m[2].weight.grad is None
    ref = copy.deepcopy(m)
    w0, w2 = ref[0].weight, ref[2].weight
    expected = torch.zeros(10, dtype=torch.float64)
    for b in batches:  # per batch: (sum_i W0[j, i] dW0[j, i])^2 + (sum_k W2[k, j] dW2[k, j])^2
        g0, g2 = torch.autograd.grad(loss_fn(ref, b), (w0, w2))
        expected += ((w0 * g0).sum(1).double() ** 2 + (w2 * g2).sum(0).double() ** 2).detach() / len(batches)
    g = fxprune.analyze(m, batches[0]).group_of("0.weight", 0)
    torch.testing.assert_close(t(g, m).double(), expected, rtol=1e-4, atol=0)


def test_calibrate_gradient_criterion_without_a_loss_is_a_plan_error():
    m, batches = _mlp(), _batches()
    with pytest.raises(fxprune.PlanError, match="loss_fn"):
        fxprune.calibrate(m, batches, "taylor", progress=False)
    with pytest.warns(UserWarning, match="records nothing"):
        fxprune.calibrate(m, batches, "l2", progress=False)


# -- bias compensation ---------------------------------------------------------------------------------------
def _mean_filled(model: nn.Module, layer: str, removed, mean: torch.Tensor) -> nn.Module:
    """The original with ``layer``'s inputs ``removed`` replaced by their mean (the oracle)."""
    ref = copy.deepcopy(model)
    idx = torch.tensor(removed)

    def hook(mod, args):
        x = args[0].clone()
        x[..., idx] = mean[idx].to(x.dtype)
        return (x,) + args[1:]
    ref.get_submodule(layer).register_forward_pre_hook(hook)
    return ref


@pytest.mark.parametrize("bias2", [True, False])
def test_compensated_mlp_equals_the_original_with_removed_channels_at_their_mean(bias2):
    m = _mlp(bias2)
    means = fxprune.calibrate(m, _batches(), "fluctuation", progress=False).input_means()
    x = _batches(1, (7, 6), seed=5)[0]  # not the calibration data
    removed = [1, 4, 5, 8]
    plan = fxprune.PrunePlan({"0.weight:0": removed})
    snap = state_snapshot(m)
    small = fxprune.prune(m, plan, x, compensate=means)
    assert small.get_submodule("2").in_features == 6 and small.get_submodule("2").bias is not None
    oracle = _mean_filled(m, "2", removed, means["2"])
    with torch.no_grad():
        torch.testing.assert_close(small(x), oracle(x), atol=1e-6, rtol=1e-6)
        plain = fxprune.prune(m, plan, x)
        assert not torch.allclose(plain(x), oracle(x), atol=1e-3)  # compensation changes the output
    assert fxprune.verify(m, small, plan, x, compensate=means).max_abs_diff < 1e-5
    with pytest.raises(fxprune.VerificationError):
        fxprune.verify(m, small, plan, x)
    assert_state_unchanged(m, snap)


def test_compensation_warns_once_for_layers_without_means_and_saves():
    m = _mlp(False)
    x = _batches(1, (7, 6))[0]
    plan = fxprune.PrunePlan({"0.weight:0": [0, 2]})
    with pytest.warns(UserWarning, match=r"1 layer\(s\) .* no entry in `compensate`.*: 2$"):
        small = fxprune.prune(m, plan, x, compensate={"0": torch.zeros(6)})
    assert small.get_submodule("2").bias is None
    means = {"2": torch.linspace(-1, 1, 10)}
    with pytest.raises(fxprune.PlanError, match="9 entries but the layer has 10"):
        fxprune.prune(m, fxprune.PrunePlan({"0.weight:0": [0]}), x, compensate={"2": torch.zeros(9)})
    small = fxprune.prune(m, plan, x, compensate=means)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        fxprune.save(small, d, x)
        again = fxprune.load(d, model=m)
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x))


def test_pruner_bias_compensation_needs_recorded_means():
    m, x = _mlp(), _batches(1, (7, 6))[0]
    with pytest.raises(fxprune.PlanError, match="records none"):
        fxprune.Pruner(m, x, importance=imp.MagnitudeImportance(), bias_compensation=True)
    a = fxprune.calibrate(m, _batches(), "activation", progress=False)
    p = fxprune.Pruner(m, x, importance=a, pruning_ratio=0.3, bias_compensation=True, ignored_layers=[m[2]])
    small = p.step()
    removed = p.plan["0.weight:0"]
    assert len(removed) == 3
    oracle = _mean_filled(m, "2", removed, a.input_means()["2"])
    with torch.no_grad():
        torch.testing.assert_close(small(x), oracle(x), atol=1e-6, rtol=1e-6)


# -- Hugging Face causal LM ----------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra; not installed")


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                   max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(3)
    calib = [torch.randint(0, 100, (2, 12), generator=g) for _ in range(3)]
    return model, torch.randint(0, 100, (1, 8), generator=g), calib


def test_llama_mlp_fluctuation_with_compensation(tmp_path):
    model, ids, calib = _llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    f = fxprune.calibrate(model, calib, "fluctuation", progress=False)
    pruner = fxprune.Pruner(model, inputs, importance=f, pruning_ratio=0.0, bias_compensation=True,
                            pruning_ratio_dict={layer.mlp.gate_proj: 0.25 for layer in model.model.layers})
    small = pruner.step()
    assert type(small) is transformers.LlamaForCausalLM
    assert [layer.mlp.down_proj.in_features for layer in small.model.layers] == [96, 96]
    assert set(pruner.plan) == {f"model.layers.{i}.mlp.gate_proj.weight:0" for i in range(2)}
    oracle = copy.deepcopy(model)
    for i in range(2):  # FLAP's scores by hand: the 32 lowest Var(x_j) * ||W_down[:, j]||^2 go
        name = f"model.layers.{i}.mlp.down_proj"
        h = _inputs_of(model, name, calib)
        w = model.get_submodule(name).weight.detach().double().numpy()
        removed = sorted(np.argsort(h.var(axis=0) * (w ** 2).sum(axis=0))[:32].tolist())
        assert pruner.plan[f"model.layers.{i}.mlp.gate_proj.weight:0"] == removed
        oracle = _mean_filled(oracle, name, removed, torch.from_numpy(h.mean(axis=0)))
    means = f.input_means()
    with torch.no_grad():
        torch.testing.assert_close(small(ids).logits, oracle(ids).logits, atol=1e-5, rtol=1e-5)
    assert fxprune.verify(model, small, pruner.plan, inputs, compensate=means).max_abs_diff < 1e-4
    with pytest.raises(fxprune.VerificationError):
        fxprune.verify(model, small, pruner.plan, inputs)
    assert torch.equal(small.generate(ids, max_new_tokens=5, do_sample=False),
                       oracle.generate(ids, max_new_tokens=5, do_sample=False))
    assert (small.config.mlp_bias, model.config.mlp_bias) == (True, False)
    small.save_pretrained(tmp_path)  # the stock class loads the compensated biases (config.mlp_bias)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, small(ids).logits)
    gm = fxprune.prune(model, pruner.plan, inputs, compensate=means, output="graph")  # the graph target too
    assert fxprune.verify(model, gm, pruner.plan, inputs, compensate=means).max_abs_diff < 1e-4


def test_llama_taylor_calibrates_with_the_default_lm_loss():
    model, ids, calib = _llama()
    t = fxprune.calibrate(model, calib, "taylor", progress=False)
    ref = copy.deepcopy(model)
    w = ref.model.layers[0].mlp.down_proj.weight
    expected = torch.zeros(128, dtype=torch.float64)
    for b in calib:
        (g,) = torch.autograd.grad(ref(b, labels=b).loss, (w,))
        expected += (w * g).sum(0).double().detach() ** 2 / 3
    name = "model.layers.0.mlp.down_proj.weight"
    assert t._count[name] == 3
    got = t.layer_score(name, 1, model.get_parameter(name), model.model.layers[0].mlp.down_proj)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-12)


def test_pruner_default_on_a_causal_lm_is_fluctuation_not_magnitude():
    model, ids, _ = _llama()
    inputs = fxprune.Inputs(ids, use_cache=False)
    ratio = {layer.mlp.gate_proj: 0.25 for layer in model.model.layers}
    with pytest.warns(UserWarning, match="FluctuationImportance.*calibration set"):
        default = fxprune.Pruner(model, inputs, pruning_ratio=0.0, pruning_ratio_dict=ratio)
    assert type(default.importance) is imp.FluctuationImportance
    default.step()
    by_hand = fxprune.Pruner(model, inputs, pruning_ratio=0.0, pruning_ratio_dict=ratio,
                             importance=fxprune.calibrate(model, [inputs], "fluctuation", progress=False))
    by_hand.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        l2 = fxprune.Pruner(model, inputs, pruning_ratio=0.0, pruning_ratio_dict=ratio,
                            importance=imp.MagnitudeImportance())
    l2.step()
    assert default.plan.to_json() == by_hand.plan.to_json() != l2.plan.to_json()
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert type(fxprune.Pruner(plain, torch.randn(1, 4)).importance) is imp.MagnitudeImportance


def test_conv_layers_are_named_not_compensated():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    means = fxprune.calibrate(m, [x], "activation", progress=False).input_means()
    plan = fxprune.PrunePlan({"0.weight:0": [1, 3]})
    with pytest.warns(UserWarning, match=r"not nn.Linear layers .*: 2 \(Conv2d\)"):
        small = fxprune.prune(m, plan, x, compensate=means)
    assert small.get_submodule("2").bias.shape == (2,)
    with torch.no_grad():  # not compensated: the zeroed original
        torch.testing.assert_close(small(x), fxprune.prune(m, plan, x)(x))
