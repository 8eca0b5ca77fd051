"""fxprune.hf.prune_checkpoint: a sharded safetensors checkpoint pruned tensor by tensor equals pruning the
loaded model, bit for bit; streamed scores choose the plan plan_by_ratio chooses; bad input raises a typed
error and leaves no files behind."""
from __future__ import annotations

import hashlib
import json
import os
import warnings

import pytest
import torch

import fxprune
from fxprune.hf import stream

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

HD = 16  # head_dim: hidden 64 / 4 heads


def _llama(dtype: torch.dtype, tied: bool, layers: int = 2, seed: int = 0):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   tie_word_embeddings=tied)
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so that every tensor says which indices it kept
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m.to(dtype)


def _save(m, path, shard="30KB"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save_pretrained(path, max_shard_size=shard)
    return path


def _load(path, dtype):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def _digest(path):
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def _ids():
    return torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))


def _same(ref, back):
    a, b = ref.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, back(ids).logits)


def _index_sizes(path):
    """total_size of the index and the bytes of the tensors the shards hold (read back)."""
    from safetensors import safe_open
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        index = json.load(f)
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(path, shard), "pt") as f:
            for k in f.keys():
                assert index["weight_map"][k] == shard
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    return index["metadata"]["total_size"], total, sorted(set(index["weight_map"].values()))


PER_LAYER = {"model.layers.0.mlp.gate_proj.weight:0": [1, 5, 9, 77],           # MLP channels, layer 0 only
             "model.layers.1.self_attn.v_proj.weight:0": list(range(HD, 2 * HD)),  # kv group 1 of layer 1
             "model.embed_tokens.weight:1": [5, 17, 40, 41]}                      # the hidden size


def test_sharded_fp32_per_layer_widths(tmp_path):
    """Per-layer widths: the config cannot say them, so fxprune.json is written and read back."""
    m = _llama(torch.float32, tied=False)
    src = _save(m, tmp_path / "src")
    before = _digest(src)
    with pytest.warns(UserWarning, match="fxprune.hf.from_pretrained"):
        info = fxprune.hf.prune_checkpoint(str(src), PER_LAYER, str(tmp_path / "dst"), progress=False)
    assert _digest(src) == before
    assert info["shards"] > 3 and info["fxprune_json"] and info["config"] == {"hidden_size": 60}
    back = fxprune.hf.from_pretrained(str(tmp_path / "dst"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fxprune.prune(_load(src, torch.float32), PER_LAYER, fxprune.Inputs(_ids(), use_cache=False))
    _same(ref, back)
    # an oracle outside the analysis: the hand-picked rows and columns of the original
    keep_h = [i for i in range(64) if i not in (5, 17, 40, 41)]
    keep_f = [i for i in range(128) if i not in (1, 5, 9, 77)]
    want = m.model.layers[0].mlp.up_proj.weight[keep_f][:, keep_h]
    assert torch.equal(back.model.layers[0].mlp.up_proj.weight, want)
    assert back.model.layers[1].self_attn.k_proj.weight.shape == (HD, 60)  # one kv head left
    assert back.model.layers[0].self_attn.k_proj.weight.shape == (2 * HD, 60)
    total, counted, shards = _index_sizes(tmp_path / "dst")
    assert total == counted == info["total_size"]
    assert shards == _index_sizes(src)[2]  # the same shard files, smaller
    assert all(os.path.getsize(tmp_path / "dst" / s) <= os.path.getsize(src / s) for s in shards)
    assert os.path.exists(tmp_path / "dst" / "generation_config.json")
    assert os.stat(tmp_path / "dst").st_mode & 0o777 == os.stat(src).st_mode & 0o777  # not mkdtemp's 0700


def test_sharded_bf16_tied_uniform(tmp_path):
    """A uniform plan on a tied bf16 model: stock from_pretrained loads it, bit for bit, still bf16."""
    m = _llama(torch.bfloat16, tied=True)
    src = _save(m, tmp_path / "src", shard="20KB")
    plan = {}
    for i in range(2):
        plan[f"model.layers.{i}.mlp.gate_proj.weight:0"] = [3, 4, 50, 51, 100, 127]
        plan[f"model.layers.{i}.self_attn.v_proj.weight:0"] = list(range(HD))  # kv group 0
    plan["model.embed_tokens.weight:1"] = [0, 1, 2, 63]
    info = fxprune.hf.prune_checkpoint(str(src), plan, str(tmp_path / "dst"), progress=False)
    assert not info["fxprune_json"] and not os.path.exists(tmp_path / "dst" / "fxprune.json")
    assert info["config"] == {"hidden_size": 60, "intermediate_size": 122, "num_attention_heads": 2,
                              "num_key_value_heads": 1}
    back = _load(tmp_path / "dst", torch.bfloat16)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16
    ref = fxprune.prune(_load(src, torch.bfloat16), plan, fxprune.Inputs(_ids(), use_cache=False))
    _same(ref, back)
    total, counted, _ = _index_sizes(tmp_path / "dst")
    assert total == counted


def test_streamed_scores_choose_plan_by_ratio(tmp_path):
    m = _llama(torch.float32, tied=True, seed=3)
    src = _save(m, tmp_path / "src")
    scores = fxprune.hf.checkpoint_scores(str(src))
    graph = fxprune.analyze(m, fxprune.Inputs(_ids(), use_cache=False))
    for heads in (False, True):
        want = fxprune.plan_by_ratio(graph, 0.25, heads=heads)
        assert len(want) > 0
        assert scores.plan_by_ratio(0.25, heads=heads) == want
    # the same scores through a file (what activation statistics computed elsewhere would give)
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({k: v.tolist() for k, v in scores.scores().items()}))
    assert fxprune.hf.plan_from_scores(scores.graph, str(path), 0.25) == fxprune.plan_by_ratio(graph, 0.25)
    # the same sums as a scores dict for fxprune.scores (plan_by_ratio(importance=), Pruner.from_scores)
    by_file = fxprune.plan_by_ratio(graph, 0.25, importance=scores.per_dim())
    assert by_file == fxprune.plan_by_ratio(graph, 0.25)
    # reversed scores pick other channels: the check can fail
    flipped = {k: -v for k, v in scores.scores().items()}
    assert fxprune.hf.plan_from_scores(scores.graph, flipped, 0.25) != fxprune.plan_by_ratio(graph, 0.25)
    with pytest.raises(fxprune.PlanError, match="no.such"):
        fxprune.hf.plan_from_scores(scores.graph, {"no.such:0": [1.0]}, 0.25)
    with pytest.raises(fxprune.PlanError, match="l2"):
        fxprune.hf.checkpoint_scores(str(src), scores.graph, criterion="taylor")


@pytest.fixture(scope="module")
def small_src(tmp_path_factory):
    return _save(_llama(torch.float32, tied=False, layers=1), tmp_path_factory.mktemp("ck") / "src")


@pytest.mark.parametrize("plan, match", [
    ({"model.layers.0.mlp.gate_prj.weight:0": [1]}, "gate_prj"),                 # unknown tensor
    ({"model.layers.0.mlp.gate_proj.weight:0": [128]}, "out of range"),          # index out of range
    ({"model.layers.0.mlp.gate_proj.weight:2": [0]}, "dim 2 out of range"),
])
def test_bad_plan(small_src, tmp_path, plan, match):
    before = _digest(small_src)
    with pytest.raises(fxprune.PlanError, match=match):
        fxprune.hf.prune_checkpoint(str(small_src), plan, str(tmp_path / "dst"), progress=False)
    assert _digest(small_src) == before
    assert os.listdir(tmp_path) == []  # neither dst nor a temporary folder


def test_config_that_does_not_save(small_src, tmp_path, monkeypatch):
    """A hidden size that is no multiple of the heads: transformers refuses the config, before any shard."""
    calls = []
    monkeypatch.setattr(stream, "_write_shard", lambda *a: calls.append(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(fxprune.SerializationError, match="does not save"):
            fxprune.hf.prune_checkpoint(str(small_src), {"model.embed_tokens.weight:1": [3]},
                                        str(tmp_path / "d"), progress=False)
    assert calls == [] and os.listdir(tmp_path) == []


def test_tensor_missing_from_checkpoint(tmp_path):
    from safetensors.torch import save_file
    m = _llama(torch.float32, tied=False, layers=1)
    src = tmp_path / "src"
    _save(m, src, shard="10GB")
    sd = {k: v for k, v in m.state_dict().items() if k != "model.layers.0.mlp.up_proj.weight"}
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(fxprune.PlanError, match="holds no tensor 'model.layers.0.mlp.up_proj.weight'"):
        fxprune.hf.prune_checkpoint(str(src), {"model.layers.0.mlp.up_proj.weight:0": [1]},
                                    str(tmp_path / "d"), progress=False)
    assert not os.path.exists(tmp_path / "d")


def test_bad_folders(small_src, tmp_path):
    plan = {"model.layers.0.mlp.gate_proj.weight:0": [1]}
    with pytest.raises(fxprune.SerializationError, match="source checkpoint"):
        fxprune.hf.prune_checkpoint(str(small_src), plan, str(small_src), progress=False)
    with pytest.raises(fxprune.SerializationError, match="source checkpoint"):
        fxprune.hf.prune_checkpoint(str(small_src), plan, str(small_src / "out"), progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(fxprune.SerializationError, match="not an empty folder"):
        fxprune.hf.prune_checkpoint(str(small_src), plan, str(tmp_path / "full"), progress=False)
    nocfg = tmp_path / "nocfg"
    nocfg.mkdir()
    for name in os.listdir(small_src):
        if name != "config.json":
            os.link(small_src / name, nocfg / name)
    with pytest.raises(fxprune.SerializationError, match="config.json"):
        fxprune.hf.prune_checkpoint(str(nocfg), plan, str(tmp_path / "d"), progress=False)
    with pytest.raises(fxprune.SerializationError, match="does not exist"):
        fxprune.hf.prune_checkpoint(str(tmp_path / "none"), plan, str(tmp_path / "d"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["full", "nocfg"]


def test_failure_while_writing_leaves_no_dst(small_src, tmp_path, monkeypatch):
    calls = []
    real = stream._write_shard

    def failing(*args):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(stream, "_write_shard", failing)
    before = _digest(small_src)
    with pytest.raises(OSError, match="disk full"):
        fxprune.hf.prune_checkpoint(str(small_src), {"model.layers.0.mlp.gate_proj.weight:0": [1]},
                                    str(tmp_path / "dst"), progress=False)
    assert len(calls) == 2 and os.listdir(tmp_path) == [] and _digest(small_src) == before


@pytest.mark.zoo
def test_1b_synthetic_checkpoint_streams_bit_for_bit(tmp_path):
    """The issue's check at scale (``benchmarks/llm_scale_stream.py``, a TinyLlama-1.1B shape in bf16 shards
    written shard by shard): 20 % of every MLP's width streamed out; ``from_pretrained`` of the result equals
    pruning the loaded model, tensor for tensor and logits; the bytes saved are exactly the MLP slices."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import llm_scale_stream

    res = llm_scale_stream.run({"shape": "1b", "workdir": str(tmp_path)})
    s = llm_scale_stream.SHAPES["1b"]
    assert 1.0e9 < res["synthetic"]["params"] < 1.2e9 and res["synthetic"]["shards"] > 1
    kept = s["intermediate_size"] - int(0.2 * s["intermediate_size"])
    assert res["prune"]["config"] == {"intermediate_size": kept}
    gone = s["num_hidden_layers"] * 3 * s["hidden_size"] * (s["intermediate_size"] - kept) * 2  # bf16 bytes
    assert res["synthetic"]["total_size"] - res["prune"]["total_size"] == gone
    assert res["check"]["n_differing"] == 0 and res["check"]["logits_equal"] and res["bit_for_bit"]


def test_plan_from_scores_names_the_groups_it_has_no_scores_for():
    """Two prunable groups, scores for one: that one loses its lowest classes, the other is kept and named."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6), torch.nn.ReLU(),
                            torch.nn.Linear(6, 2))
    graph = fxprune.analyze(m, torch.randn(1, 4))
    want = r"1 prunable group\(s\) have no scores \(plan_from_scores\).*2\.weight:0"
    with pytest.warns(UserWarning, match=want):
        plan = stream.plan_from_scores(graph, {"0.weight:0": [5., 1., 2., 8., 3., 4., 7., 6.]}, 0.25)
    assert plan == fxprune.PrunePlan({"0.weight:0": [1, 2]})
