"""Small statistics: Wilson intervals and percentiles."""
from __future__ import annotations

import math
from typing import Sequence


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sensible at 0/n and n/n, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)

    z = 1.959963984540054
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (min(lo, p), max(hi, p))   # float error must not push p outside its interval


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
