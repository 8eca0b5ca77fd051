"""Every docstring example in the library runs and prints what it says (doctest)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import pytest

import fxprune
import fxprune.passes

_MODULES = sorted({m.name for pkg in (fxprune, fxprune.passes)
                   for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")}
                  | {"fxprune", "fxprune.passes"})  # passes/ is its own folder in a source checkout


@pytest.mark.parametrize("name", _MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # examples show results; warnings are tested where they matter
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                              report=True)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples in {name} failed (see output above)"
