"""Statistics for batches of simulations (pure).

>>> wilson_interval(50, 100)
(0.4038, 0.5962)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal distribution
DIGITS = 4


def wilson_interval(successes: int, n: int, z: float = Z95, digits: int | None = DIGITS) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95 % by default).
    n == 0 gives (0.0, 1.0): nothing is known. Rounded to `digits` (None: exact)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # At the bounds the interval touches 0 or 1 exactly (rounding would leave 1e-17).
    if successes == 0:
        low = 0.0
    if successes == n:
        high = 1.0
    return _round(low, digits), _round(high, digits)


def difference_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = Z95, digits: int | None = DIGITS
) -> tuple[float, float, float]:
    """p_b - p_a with Newcombe's hybrid score interval (method 10, built from the
    two Wilson intervals): (difference, low, high)."""
    pa = successes_a / n_a if n_a else 0.0
    pb = successes_b / n_b if n_b else 0.0
    la, ua = wilson_interval(successes_a, n_a, z, None)
    lb, ub = wilson_interval(successes_b, n_b, z, None)
    d = pb - pa
    low = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return _round(d, digits), _round(max(-1.0, low), digits), _round(min(1.0, high), digits)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); (0, 0) for no values, std 0 for one."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance)


def describe(values: Sequence[float], digits: int | None = DIGITS) -> dict:
    """{"mean", "std", "min", "max"} of the values (zeros when there are none)."""
    mean, std = mean_std(values)
    return {
        "mean": _round(mean, digits),
        "std": _round(std, digits),
        "min": min(values) if values else 0,
        "max": max(values) if values else 0,
    }


def proportion(successes: int, n: int, digits: int | None = DIGITS) -> dict:
    """{"count", "probability", "ci95": [low, high]} for successes out of n."""
    low, high = wilson_interval(successes, n, digits=digits)
    return {
        "count": successes,
        "probability": _round(successes / n if n else 0.0, digits),
        "ci95": [low, high],
    }


def _round(value: float, digits: int | None) -> float:
    return value if digits is None else round(value, digits)
