"""Percentiles and latency summaries: the one implementation the bench's figures use."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["LEVELS", "latency_summary", "ms", "percentile"]

# The latency levels the bench reports, as (name, fraction).
LEVELS: tuple[tuple[str, float], ...] = (
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p999", 0.999),
    ("max", 1.0),
)


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted ``ordered`` (``fraction`` 0.5 is p50).

    None when there are no values. Nearest rank never invents a value between two
    measured ones: p100 is the maximum, p0 the minimum.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds rounded to 0.01 ms (None stays None)."""
    return None if seconds is None else round(seconds * 1000, 2)


def latency_summary(
    latencies: Iterable[float], levels: Sequence[tuple[str, float]] = LEVELS
) -> dict[str, float | None]:
    """The ``levels`` of ``latencies`` (seconds, any order) in milliseconds, by level name."""
    ordered = sorted(latencies)
    return {name: ms(percentile(ordered, fraction)) for name, fraction in levels}
