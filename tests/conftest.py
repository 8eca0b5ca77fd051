"""Shared pytest setup: make ``tests/`` importable (``import helpers``) and seed every test."""
from __future__ import annotations

import os
import sys
import time

import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

# Under pytest-xdist (``make test`` runs one worker per core), each worker gets its share of the cores:
# two workers with two intra-op threads each would oversubscribe a 2-core machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield


# Opt-in CPU-time report (wall time is meaningless on a shared 2-core box): FXPRUNE_CPU_TIMES=1 pytest ...
_CPU_TIMES: dict = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("FXPRUNE_CPU_TIMES"):
        yield
        return
    t0 = time.process_time()
    yield
    _CPU_TIMES[item.nodeid] = time.process_time() - t0


def pytest_terminal_summary(terminalreporter):
    if not _CPU_TIMES:
        return
    terminalreporter.section("CPU seconds per test (setup + call + teardown, all threads)")
    for nodeid, t in sorted(_CPU_TIMES.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{t:8.2f}  {nodeid}")
    terminalreporter.write_line(f"{sum(_CPU_TIMES.values()):8.2f}  total")
