"""The rule contract (fxprune/context.py, docs/rules.md): rules never import each other nor read private
context attributes, and the page's one-function rule works as the page says."""
from __future__ import annotations

import ast
import pathlib
import re
import warnings

import torch

import fxprune
from fxprune import cache

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = ROOT / "fxprune" / "rules"


def test_rules_import_no_other_rule_and_no_private_context_attribute():
    families = {p.stem for p in RULES.glob("*.py") if not p.stem.startswith("_")}
    bad = []
    for path in sorted(RULES.glob("*.py")):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                bad += [f"{path.name} imports rules.{n}" for n in names if n in families]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("ctx", "rctx", "vctx"):
                bad.append(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert families and not bad, bad


def _blocks() -> list:
    text = (ROOT / "docs" / "rules.md").read_text()
    section = text.split("## A rule in one function", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_one_function_rule_from_the_docs():
    op_and_model, rule = _blocks()
    ns: dict = {"__name__": "rules_md_example"}
    exec(compile(op_and_model, "docs/rules.md", "exec"), ns)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = fxprune.analyze(ns["Net"](), x).group_of("conv.weight", 0)
    assert before.pinned is not None and "channel_scale" in before.pinned
    assert any("channel_scale" in str(w.message) for w in caught)  # the missing rule is named

    exec(compile(rule, "docs/rules.md", "exec"), ns)
    cache.clear()
    torch.manual_seed(0)
    model = ns["Net"]().eval()
    g = fxprune.analyze(model, x).group_of("conv.weight", 0)
    assert g.pinned is None and len(g.all_classes) == 8
    assert {"conv.weight", "conv.bias", "s", "head.weight"} <= {name for name, _ in g.members}

    small = fxprune.prune(model, {"conv.weight:0": [1, 5]}, x)
    assert small.conv.out_channels == 6 and small.s.shape == (6,) and small.head.in_channels == 6
    # oracle: the original with output channels 1 and 5 of conv zeroed by hand
    zeroed = ns["Net"]().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.conv.weight[[1, 5]] = 0
        zeroed.conv.bias[[1, 5]] = 0
        want = zeroed(x)
        assert (want - model(x)).abs().max() > 1e-3  # the two channels mattered: the check can fail
        assert torch.allclose(small(x), want, atol=1e-5)
