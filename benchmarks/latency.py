"""Timing helpers: warm repeated calls and the statistics a re-run can be judged against.

A median alone hides noise; p95 and the relative interquartile range (IQR / median) say how
much two runs may differ before the difference means anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(function: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds taken by each of ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, mean, min (ms) and relative IQR of timings; their count as ``n``."""
    if not seconds:
        raise ValueError("no timings to summarize")
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    q25, median, q75, p95 = np.percentile(ms, [25, 50, 75, 95])
    return {
        "n": len(ms),
        "median_ms": float(median),
        "p95_ms": float(p95),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "iqr_rel": float((q75 - q25) / median) if median > 0 else 0.0,
    }
