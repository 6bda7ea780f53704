"""The one timing loop of the benchmarks: untimed warm-up calls, then the median of synchronised timed calls.

What is timed: the wall-clock time (``time.perf_counter``) of each of ``repeats`` calls of
``fn()``, from just before the call until the device has finished the work the call queued
(``torch.cuda.synchronize`` on CUDA; CPU work is done when ``fn`` returns). The ``warmup``
calls before them are not timed (compilation, cuDNN autotuning, caches); the device is
synchronised after them, so that queued warm-up work is not counted in the first timed call.
Cost: ``warmup + repeats`` calls of ``fn``.

>>> calls = []
>>> ms = median_ms(lambda: calls.append(1), repeats=3, warmup=2, device=torch.device("cpu"))
>>> len(calls), ms >= 0
(5, True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["median_ms"]


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median over ``repeats`` synchronised calls of ``fn()``, in milliseconds, after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"median_ms needs repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)
