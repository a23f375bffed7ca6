"""Latency statistics shared by the benchmark scripts (imported by scripts run from this folder)."""

from __future__ import annotations

import statistics


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_ms(samples_seconds: list[float]) -> dict[str, float]:
    """Median, p90, p99, mean, min and max of ``samples_seconds``, in milliseconds."""
    ms = sorted(s * 1000.0 for s in samples_seconds)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }
