"""Wall-clock CPU latency of a forward pass.

Example:
    >>> import torch
    >>> from fxprune.latency import cpu_latency_ms
    >>> ms = cpu_latency_ms(torch.nn.Linear(16, 4), torch.randn(1, 16), warmup=1, repeat=3)
    >>> ms > 0
    True
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["cpu_latency_ms"]


def cpu_latency_ms(
    model: torch.nn.Module,
    example_inputs: Any,
    warmup: int = 3,
    repeat: int = 10,
    progress: Callable[[], None] | None = None,
) -> float:
    """Median wall time in milliseconds of ``model(*example_inputs)`` under ``torch.no_grad``.

    The model runs in eval mode (training flags are restored afterwards): ``warmup`` untimed runs,
    then ``repeat`` timed ones. ``progress``, when given, is called once after every run (warmup
    included), e.g. a progress bar's ``update``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeat):
                t0 = time.perf_counter()
                model(*args)
                dt = time.perf_counter() - t0
                if i >= warmup:
                    times.append(dt)
                if progress is not None:
                    progress()
    finally:
        for m, training in flags:
            m.training = training
    return statistics.median(times) * 1e3
