"""Every class of ``torch.nn.modules.__all__`` has an op rule or an entry in the explicit "pinned, because"
table (``fxprune.rules.nn_extra.PINNED_MODULES``), and the table names only classes without a rule."""
from __future__ import annotations

import torch.nn.modules as nn_modules

import fxprune.rules  # noqa: F401  (registers every rule)
from fxprune.registry import lookup
from fxprune.rules.nn_extra import PINNED_MODULES

_CLASSES = {n: getattr(nn_modules, n) for n in nn_modules.__all__ if isinstance(getattr(nn_modules, n), type)}


def test_every_nn_module_has_a_rule_or_a_reason():
    missing = [n for n, c in _CLASSES.items() if lookup("call_module", c) is None and n not in PINNED_MODULES]
    assert not missing, f"torch.nn classes with neither a rule nor a PINNED_MODULES entry: {missing}"


def test_pinned_table_is_honest():
    ruled = [n for n in PINNED_MODULES if n in _CLASSES and lookup("call_module", _CLASSES[n]) is not None]
    assert not ruled, f"PINNED_MODULES lists classes that have a rule: {ruled}"
    assert all(isinstance(v, str) and len(v) > 10 for v in PINNED_MODULES.values())
    # most of torch.nn is prunable: the table stays the exception (losses, containers, bases, lazy forms)
    assert len(_CLASSES) - len([n for n in PINNED_MODULES if n in _CLASSES]) >= 110
