"""Hugging Face families pruned into their own class (issue 11): MLP channels and whole heads (a whole GQA kv
group in the decoders) chosen by hand, checked against an oracle written here, not by fxprune's analysis:
the original with exactly those weight slices zeroed must give the pruned model's outputs, and greedy
``generate`` the same tokens. Widths are checked by hand, the config round-trips (through transformers'
``from_pretrained`` when the config can describe the model, else through ``fxprune.hf``), the plan replays
on a fresh copy, and the user's model is untouched."""
from __future__ import annotations

import copy
import tempfile
import warnings
from typing import Callable, Dict, List, NamedTuple, Tuple

import pytest
import torch

import fxprune

T = pytest.importorskip("transformers", reason="transformers is in the test extra; not installed")

_DEC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
HD, H, KV, I, D = 16, 4, 2, 128, 64  # head size, heads, kv heads, MLP width, hidden size
Slices = List[Tuple[str, int, List[int]]]  # (parameter, dim, indices) the oracle zeroes


def _rng(a: int, n: int) -> List[int]:
    return list(range(a, a + n))


class Family(NamedTuple):
    build: Callable[[], torch.nn.Module]
    mlp: Callable[[int, List[int]], Tuple[Dict[str, List[int]], Slices]]  # layer, channels -> plan, zeroed
    head: Callable[[int, int], Tuple[Dict[str, List[int]], Slices]]       # layer, head (kv group) -> ...
    widths: Callable[[torch.nn.Module, int], Tuple[int, int]]            # layer -> (MLP width, q rows)
    causal: bool = True


def _llama_like(cfg_cls, model_cls, bias=False, **kw):
    def mlp(layer, ch):
        p = f"model.layers.{layer}.mlp."
        return {p + "gate_proj.weight:0": ch}, [(p + "gate_proj.weight", 0, ch), (p + "up_proj.weight", 0, ch),
                                                (p + "down_proj.weight", 1, ch)]

    def head(layer, g):  # kv group g: its k/v rows, the rows of its query heads, their o_proj columns
        p, rep = f"model.layers.{layer}.self_attn.", H // KV
        q, kv = _rng(g * rep * HD, rep * HD), _rng(g * HD, HD)
        zero = [(p + "q_proj.weight", 0, q), (p + "k_proj.weight", 0, kv), (p + "v_proj.weight", 0, kv),
                (p + "o_proj.weight", 1, q)]
        if bias:
            zero += [(p + "q_proj.bias", 0, q), (p + "k_proj.bias", 0, kv), (p + "v_proj.bias", 0, kv)]
        return {p + "k_proj.weight:0": kv}, zero

    def widths(m, layer):
        blk = m.model.layers[layer]
        return blk.mlp.down_proj.in_features, blk.self_attn.q_proj.out_features

    return Family(lambda: model_cls(cfg_cls(**{**_DEC, **kw})), mlp, head, widths)


def _phi3():
    def mlp(layer, ch):  # fused gate|up rows: gate j and up j are one channel
        p = f"model.layers.{layer}.mlp."
        rows = ch + [I + c for c in ch]
        return {p + "down_proj.weight:1": ch}, [(p + "gate_up_proj.weight", 0, rows), (p + "down_proj.weight", 1, ch)]

    def head(layer, g):
        p, rep = f"model.layers.{layer}.self_attn.", H // KV
        q, kv = _rng(g * rep * HD, rep * HD), _rng(g * HD, HD)
        rows = q + [H * HD + i for i in kv] + [(H + KV) * HD + i for i in kv]
        return {p + "o_proj.weight:1": q}, [(p + "qkv_proj.weight", 0, rows), (p + "o_proj.weight", 1, q)]

    def widths(m, layer):
        blk = m.model.layers[layer]
        return blk.mlp.down_proj.in_features, blk.self_attn.o_proj.in_features

    return Family(lambda: T.Phi3ForCausalLM(T.Phi3Config(**_DEC, pad_token_id=0)), mlp, head, widths)


def _gpt2():
    def mlp(layer, ch):
        p = f"transformer.h.{layer}.mlp."
        return {p + "c_fc.weight:1": ch}, [(p + "c_fc.weight", 1, ch), (p + "c_fc.bias", 0, ch),
                                            (p + "c_proj.weight", 0, ch)]

    def head(layer, h):
        p = f"transformer.h.{layer}.attn."
        cols = [s * D + i for s in range(3) for i in _rng(h * HD, HD)]
        return ({p + "c_proj.weight:0": _rng(h * HD, HD)},
                [(p + "c_attn.weight", 1, cols), (p + "c_attn.bias", 0, cols), (p + "c_proj.weight", 0, _rng(h * HD, HD))])

    def widths(m, layer):
        blk = m.transformer.h[layer]
        return blk.mlp.c_fc.nf, blk.attn.c_proj.weight.shape[0]

    cfg = T.GPT2Config(n_embd=D, n_layer=2, n_head=H, vocab_size=100, n_positions=64, n_inner=I)
    return Family(lambda: T.GPT2LMHeadModel(cfg), mlp, head, widths)


def _encoder(model_cls, cfg, att: str, q: str, k: str, v: str, o: str, up: str, down: str):
    """BERT and ViT: per-layer ``att`` module with q/k/v Linear, output projection ``o``, MLP up/down."""
    def mlp(layer, ch):
        p = f"{att.split('{L}')[0]}{layer}."
        return {p + up + ".weight:0": ch}, [(p + up + ".weight", 0, ch), (p + up + ".bias", 0, ch),
                                             (p + down + ".weight", 1, ch)]

    def head(layer, h):
        p = f"{att.split('{L}')[0]}{layer}."
        r = _rng(h * HD, HD)
        zero = [(p + n + s, 0, r) for n in (q, k, v) for s in (".weight", ".bias")] + [(p + o + ".weight", 1, r)]
        return {p + q + ".weight:0": r}, zero

    def widths(m, layer):
        sub = m.get_submodule(att.replace("{L}", str(layer)).rstrip("."))
        return sub.get_submodule(up).out_features, sub.get_submodule(q).out_features

    return Family(lambda: model_cls(cfg), mlp, head, widths, causal=False)


def _t5():
    def mlp(layer, ch):
        p = f"encoder.block.{layer}.layer.1.DenseReluDense."
        return {p + "wi.weight:0": ch}, [(p + "wi.weight", 0, ch), (p + "wo.weight", 1, ch)]

    def head(layer, h):
        p, r = f"encoder.block.{layer}.layer.0.SelfAttention.", _rng(h * HD, HD)
        return {p + "q.weight:0": r}, [(p + n + ".weight", 0, r) for n in "qkv"] + [(p + "o.weight", 1, r)]

    def widths(m, layer):
        blk = m.encoder.block[layer].layer
        return blk[1].DenseReluDense.wi.out_features, blk[0].SelfAttention.q.out_features

    cfg = T.T5Config(d_model=D, d_kv=HD, d_ff=I, num_layers=2, num_heads=H, vocab_size=100)
    return Family(lambda: T.T5ForConditionalGeneration(cfg), mlp, head, widths, causal=False)


_BERT = T.BertConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=I, vocab_size=100,
                     max_position_embeddings=64)
_VIT = T.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=I, image_size=32,
                   patch_size=8)
FAMILIES = {
    "llama": _llama_like(T.LlamaConfig, T.LlamaForCausalLM),
    "qwen2": _llama_like(T.Qwen2Config, T.Qwen2ForCausalLM, bias=True),
    "mistral": _llama_like(T.MistralConfig, T.MistralForCausalLM),
    "qwen3": _llama_like(T.Qwen3Config, T.Qwen3ForCausalLM, head_dim=HD),
    "gemma": _llama_like(T.GemmaConfig, T.GemmaForCausalLM, head_dim=HD),
    "phi3": _phi3(),
    "gpt2": _gpt2(),
    "bert": _encoder(T.BertModel, _BERT, "encoder.layer.{L}.", "attention.self.query", "attention.self.key",
                     "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "vit": _encoder(T.ViTModel, _VIT, "layers.{L}.", "attention.q_proj", "attention.k_proj", "attention.v_proj",
                    "attention.o_proj", "mlp.fc1", "mlp.fc2"),
    "t5": _t5(),
}


def _inputs(name: str) -> fxprune.Inputs:
    torch.manual_seed(1)
    if name == "vit":
        return fxprune.Inputs(torch.randn(2, 3, 32, 32))
    ids = torch.randint(0, 100, (2, 8))
    if name == "t5":
        return fxprune.Inputs(ids, decoder_input_ids=ids[:, :5], use_cache=False)
    return fxprune.Inputs(ids) if name == "bert" else fxprune.Inputs(ids, use_cache=False)


def _out(model: torch.nn.Module, inputs: fxprune.Inputs) -> torch.Tensor:
    with torch.no_grad():
        o = model(*inputs.args, **inputs.kwargs)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _auto_round_trip(small: torch.nn.Module) -> torch.nn.Module:
    """``small`` through transformers alone: ``save_pretrained``, then
    ``AutoModelForCausalLM.from_pretrained``."""
    with tempfile.TemporaryDirectory() as d:
        small.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return T.AutoModelForCausalLM.from_pretrained(d).eval()


def _zeroed(model: torch.nn.Module, slices: Slices) -> torch.nn.Module:
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, dim, idx in slices:
            params[name].index_fill_(dim, torch.tensor(idx), 0.0)
    return masked


def _case(name: str):
    fam = FAMILIES[name]
    torch.manual_seed(0)
    model = fam.build().eval()
    plan, zero = {}, []
    # T5 adds block 0's relative position bias to every layer: head h is one head in all layers
    second = 1 if name == "t5" else 0
    for part in (fam.mlp(0, [1, 5, 9, 77]), fam.mlp(1, [0, 127]), fam.head(0, 1), fam.head(1, second)):
        plan.update(part[0])
        zero += part[1]
    return fam, model, plan, zero


def _prune(model, plan, inputs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = fxprune.prune(model, plan, inputs)
    return small, [str(w.message) for w in caught if "fxprune" in str(w.message)]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_pruned_into_its_own_class_equals_the_zeroed_original(name):
    fam, model, plan, zero = _case(name)
    inputs = _inputs(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, said = _prune(model, plan, inputs)
    assert type(small) is type(model), said
    # widths by hand: layer 0 lost 4 MLP channels, layer 1 two; one kv group (GQA) or one head per layer
    q_lost = (H // KV) * HD if name in ("llama", "qwen2", "mistral", "qwen3", "gemma", "phi3") else HD
    assert fam.widths(small, 0) == (I - 4, H * HD - q_lost)
    assert fam.widths(small, 1) == (I - 2, H * HD - q_lost)
    want = _out(_zeroed(model, zero), inputs)
    got = _out(small, inputs)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(_out(model, inputs), want, atol=1e-3)  # the zeroed slices mattered
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    # the plan replays on a fresh copy of the unpruned model: the same tensors
    again, _ = _prune(copy.deepcopy(model), plan, inputs)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_round_trips_through_save_and_load(name):
    _, model, plan, _ = _case(name)
    inputs = _inputs(name)
    small, said = _prune(model, plan, inputs)
    with tempfile.TemporaryDirectory() as d:
        if fxprune.hf.config_mismatches(small):
            # said so when pruned, and fxprune.hf carries what the config cannot
            assert any("fxprune.hf.save_pretrained" in s for s in said), said
            fxprune.hf.save_pretrained(small, d)
            back = fxprune.hf.from_pretrained(d)
        else:
            small.save_pretrained(d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = type(model).from_pretrained(d).eval()
    assert type(back) is type(model)
    a, b = small.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_out(small, inputs), _out(back, inputs))


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma", "phi3", "gpt2"])
def test_greedy_generate_gives_the_zeroed_originals_tokens(name):
    _, model, plan, zero = _case(name)
    inputs = _inputs(name)
    small, _ = _prune(model, plan, inputs)
    ids = inputs.args[0][:1]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = _zeroed(model, zero).generate(ids, **kw)
        got = small.generate(ids, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "qwen3", "gemma", "phi3"])
def test_uniform_pruning_round_trips_through_transformers_alone(name):
    """Every layer the same widths: ``config.json`` describes the model; stock ``from_pretrained`` loads it."""
    fam, model, _, _ = _case(name)
    inputs = _inputs(name)
    plan = {**fam.mlp(0, [3, 4])[0], **fam.mlp(1, [3, 4])[0], **fam.head(0, 0)[0], **fam.head(1, 1)[0]}
    small, said = _prune(model, plan, inputs)
    assert not said and fxprune.hf.config_mismatches(small) == []
    assert (small.config.intermediate_size, small.config.num_attention_heads, small.config.num_key_value_heads) == (
        I - 2, H - H // KV, KV - 1)
    assert (model.config.intermediate_size, model.config.num_attention_heads) == (I, H)  # the user's config
    back = _auto_round_trip(small)
    assert type(back) is type(model)
    assert torch.equal(_out(small, inputs), _out(back, inputs))


def _zero_removed(original: torch.nn.Module, small: torch.nn.Module) -> torch.nn.Module:
    """The original with every slice the pruned model lacks zeroed, found from the values: each kept row
    (or column) of a pruned 2-D weight equals exactly one of the original's (random weights), so the removed
    ones are the rest; a bias follows its weight's rows. An oracle that does not read fxprune's plan."""
    masked = copy.deepcopy(original)
    small_p = dict(small.named_parameters())
    with torch.no_grad():
        for name, p in masked.named_parameters():
            q = small_p[name]
            if p.shape == q.shape or p.ndim != 2:
                continue
            (dim,) = [d for d in range(2) if p.shape[d] != q.shape[d]]
            rows, kept = p.movedim(dim, 0), q.movedim(dim, 0)
            hit = (rows[None, :, :] == kept[:, None, :]).all(-1)  # [kept, original]
            assert (hit.sum(1) == 1).all(), name
            removed = torch.tensor(sorted(set(range(p.shape[dim])) - set(hit.nonzero()[:, 1].tolist())))
            p.index_fill_(dim, removed, 0.0)
            bias = dict(masked.named_parameters()).get(name.rpartition(".")[0] + ".bias")
            if bias is not None and dim == 0 and bias.shape[0] == p.shape[0]:
                bias.index_fill_(0, removed, 0.0)
    return masked


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "bert"])
def test_pruner_removes_heads_and_mlp_channels_of_chosen_layers(name):
    """``Pruner(prune_num_heads, head_pruning_ratio, pruning_ratio_dict)``: half the heads of every layer,
    a quarter of layer 0's MLP only; the result is the model's own class and equals the original with the
    removed slices (found from the values) zeroed."""
    fam, model, _, _ = _case(name)
    inputs = _inputs(name)
    up0 = model.get_submodule(fam.mlp(0, [0])[1][0][0].rpartition(".")[0])  # its outputs: the MLP width
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = fxprune.Pruner(model, inputs, pruning_ratio=0.0, pruning_ratio_dict={up0: 0.25},
                                prune_num_heads=True, head_pruning_ratio=0.5, prune_head_dims=False)
        small = pruner.step()
    assert type(small) is type(model)
    assert fam.widths(small, 0) == (I - I // 4, H * HD // 2)
    assert fam.widths(small, 1) == (I, H * HD // 2)
    want = _out(_zero_removed(model, small), inputs)
    assert torch.allclose(_out(small, inputs), want, atol=1e-5)


def test_pruner_target_params_on_a_decoder():
    fam, model, _, _ = _case("llama")
    inputs = _inputs("llama")
    from fxprune.count import count_params

    before = count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.Pruner(model, inputs, target_params=0.7 * before, prune_num_heads=True,
                               prune_head_dims=False).step()
    assert type(small) is type(model)
    after = count_params(small)
    assert 0.6 * before < after <= 0.7 * before


@pytest.mark.parametrize("rows, named", [
    (_rng(0, HD), "heads 0 of model.layers.0.self_attn.q_proj"),  # one query head: GQA needs it in every kv group
    ([3, 19, 35, 51], "head dims 3 of heads 0..3"),              # head dim 3 without its RoPE partner 11
    (_rng(16, 4), "head dims 0..3 of heads 1"),                  # 4 dims of kv head 1: in every head, with partners
])
def test_a_plan_that_breaks_a_head_raises_naming_it_when_strict(rows, named):
    _, model, _, _ = _case("llama")
    inputs = _inputs("llama")
    key = "model.layers.0.self_attn.q_proj.weight:0" if rows[0] != 16 else "model.layers.0.self_attn.k_proj.weight:0"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(fxprune.PlanError, match=named.replace(".", r"\.")):
        fxprune.prune(model, {key: rows}, inputs, strict=True)
    with pytest.warns(UserWarning, match="a valid plan also removes"):  # not strict: closed, and said so
        small = fxprune.prune(model, {key: rows}, inputs)
    # q/k lose head dims that v keeps: only a GraphModule carries that (warned); it is smaller either way
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["llama", "qwen3", "phi3"])
def test_hidden_size_pruned_everywhere_reports_the_norm_statistics(name):
    """The hidden size: embeddings, every projection, the RMSNorm weights and ``lm_head`` lose the same
    channels. The norms' statistics change (mean of squares over fewer channels), so verify recomputes them
    and says which nodes; the config says the new ``hidden_size`` and the head size it no longer derives."""
    _, model, _, _ = _case(name)
    inputs = _inputs(name)
    gone = [0, 7, 33, 60]
    small, said = _prune(model, {"model.embed_tokens.weight:1": gone}, inputs)
    assert type(small) is type(model) and not said
    assert small.model.embed_tokens.embedding_dim == D - 4 and small.lm_head.in_features == D - 4
    assert small.model.norm.weight.shape == (D - 4,)
    assert small.config.hidden_size == D - 4 and fxprune.hf.config_mismatches(small) == []
    report = fxprune.verify(model, small, {"model.embed_tokens.weight:1": gone}, inputs)
    assert report.max_abs_diff < 1e-4 and report.recomputed  # the norms, recomputed and named
    assert all("norm" in k or "pow" in k or "mean" in k for k in report.recomputed), report.recomputed
    with torch.no_grad():
        assert small.generate(inputs.args[0][:1], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 11)


def test_pruner_default_on_a_decoder_round_trips_through_transformers():
    """``Pruner(model, inputs, pruning_ratio)`` on a transformers decoder keeps head dims (one ``head_dim``
    serves q, k and v, and the config would recompute the attention scale): MLP and hidden size lose a
    quarter, and stock ``save_pretrained``/``from_pretrained`` round-trip. ``prune_head_dims=True`` still
    removes head dims, and then ``fxprune.hf`` carries the original scale."""
    _, model, _, _ = _case("llama")
    inputs = _inputs("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.Pruner(model, inputs, pruning_ratio=0.25, importance="l2").step()
        dims = fxprune.Pruner(model, inputs, pruning_ratio=0.25, importance="l2", prune_head_dims=True).step()
    assert (small.config.intermediate_size, small.config.hidden_size, small.config.head_dim) == (96, 48, HD)
    assert fxprune.hf.config_mismatches(small) == []
    back = _auto_round_trip(small)
    assert torch.equal(_out(small, inputs), _out(back, inputs))
    assert dims.config.head_dim < HD and any("scaling" in s for s in fxprune.hf.config_mismatches(dims))
    with tempfile.TemporaryDirectory() as d:
        fxprune.hf.save_pretrained(dims, d)
        back = fxprune.hf.from_pretrained(d)
    assert torch.equal(_out(dims, inputs), _out(back, inputs))


def _gqa_llama(heads: int, kv: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(**{**_DEC, "hidden_size": heads * 8, "num_attention_heads": heads,
                           "num_key_value_heads": kv, "head_dim": 8})
    return T.LlamaForCausalLM(cfg).eval()


def _removed_rows(original: torch.Tensor, kept: torch.Tensor, size: int) -> List[int]:
    """Which blocks of ``size`` rows of ``original`` are missing from ``kept`` (rows matched by value)."""
    hit = (original[None, :, :] == kept[:, None, :]).all(-1).any(0)
    return [b for b in range(original.shape[0] // size) if not hit[b * size:(b + 1) * size].any()]


@pytest.mark.parametrize("heads,kv,ratio,q_kept,kv_kept", [
    (9, 3, 1 / 3, 6, 3),   # SmolLM2's 9 / 3: one query head of every kv group, every kv head kept
    (6, 2, 1 / 2, 3, 1),   # 3 query heads: only a whole kv group (with its 3 queries) removes exactly 3
    (6, 2, 1 / 3, 4, 2),   # 2 query heads: one of each group
])
def test_head_pruning_ratio_counts_query_heads_under_gqa(heads, kv, ratio, q_kept, kv_kept):
    """``head_pruning_ratio`` is a share of query heads; the kept heads stay a grid (the same query head of
    every group, or whole kv groups). Exact widths and config, the removed heads (found from the weights'
    values) form that grid, equal outputs to the original with those heads zeroed, and a transformers-only
    save/load round trip."""
    model = _gqa_llama(heads, kv)
    inputs = _inputs("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = fxprune.Pruner(model, inputs, importance="l2", pruning_ratio=0.0, prune_num_heads=True,
                                head_pruning_ratio=ratio, prune_head_dims=False)
        small = pruner.step()
    per = heads // kv
    assert type(small) is type(model)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (q_kept, kv_kept)
    assert sorted(pruner.num_heads.values()) == [q_kept, q_kept]
    zero: Slices = []
    for i, (a, b) in enumerate(zip(model.model.layers, small.model.layers)):
        sa, sb = a.self_attn, b.self_attn
        assert (sb.q_proj.out_features, sb.k_proj.out_features, sb.v_proj.out_features,
                sb.o_proj.in_features) == (q_kept * 8, kv_kept * 8, kv_kept * 8, q_kept * 8)
        gone_q = _removed_rows(sa.q_proj.weight, sb.q_proj.weight, 8)
        gone_kv = _removed_rows(sa.k_proj.weight, sb.k_proj.weight, 8)
        assert _removed_rows(sa.v_proj.weight, sb.v_proj.weight, 8) == gone_kv
        # a grid: whole removed kv groups with all their queries, plus the same positions in every other group
        positions = {h % per for h in gone_q if h // per not in gone_kv}
        want_q = {g * per + j for g in range(kv) for j in range(per) if g in gone_kv or j in positions}
        assert set(gone_q) == want_q and len(gone_kv) == kv - kv_kept
        assert len(positions) == per - q_kept // kv_kept
        p = f"model.layers.{i}.self_attn."
        rows = [r for h in gone_q for r in _rng(h * 8, 8)]
        kv_rows = [r for g in gone_kv for r in _rng(g * 8, 8)]
        zero += [(p + "q_proj.weight", 0, rows), (p + "o_proj.weight", 1, rows)]
        zero += [(p + "k_proj.weight", 0, kv_rows), (p + "v_proj.weight", 0, kv_rows)] if kv_rows else []
    want = _out(_zeroed(model, zero), inputs)
    assert torch.allclose(_out(small, inputs), want, atol=1e-5)
    assert not torch.allclose(_out(model, inputs), want, atol=1e-3)  # the removed heads mattered
    assert model.config.num_attention_heads == heads  # the user's model is untouched
    back = _auto_round_trip(small)
    assert torch.equal(_out(small, inputs), _out(back, inputs))


def test_head_pruning_ratio_below_one_grid_step_removes_no_gqa_head_and_says_so():
    """9 query / 3 kv heads, ratio 0.1 (one query head): no grid loses exactly one; nothing is removed, with
    a warning naming the attention."""
    model = _gqa_llama(9, 3)
    with pytest.warns(UserWarning, match=r"head_pruning_ratio 0.1 removes no head of 2 GQA .*layers\.0"):
        small = fxprune.Pruner(model, _inputs("llama"), importance="l2", pruning_ratio=0.0,
                               prune_num_heads=True, head_pruning_ratio=0.1, prune_head_dims=False).step()
    assert small.model.layers[0].self_attn.q_proj.out_features == 72
