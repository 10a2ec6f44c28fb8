"""One percentile for every figure the project reports (the dashboard, submit_test_job.py's
summary, the benchmarks), so that a p95 means the same thing everywhere. Pure."""
from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-quantile (0 <= q <= 1) of `values`, interpolated linearly between the two nearest
    ranks (numpy's default, "linear"); None when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
