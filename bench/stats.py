"""Percentiles of one run's samples, and the median [min–max] of a figure over runs."""

import math
import statistics


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0–100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_ms(seconds: list[float], prefix: str, missing: int = 0) -> dict[str, float]:
    """`{prefix}_p50_ms`, `{prefix}_p99_ms` and `{prefix}_n` of latencies given in seconds.

    `missing` samples never arrived: they count as infinitely late, so a percentile that
    reaches them is infinite rather than flattered by leaving them out.
    """
    ms = [s * 1000 for s in seconds] + [math.inf] * max(missing, 0)
    return {
        f"{prefix}_p50_ms": round(percentile(ms, 50), 2),
        f"{prefix}_p99_ms": round(percentile(ms, 99), 2),
        f"{prefix}_n": len(seconds),
        f"{prefix}_missing": max(missing, 0),
    }


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return round(numerator / denominator, 2)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max over runs (NaN values, from failed runs, are left out)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}
