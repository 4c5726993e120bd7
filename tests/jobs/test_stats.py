"""Statistics: Wilson intervals (known values), the difference of two proportions, mean/std."""

from __future__ import annotations

import math

import pytest

from runner_service.jobs import stats


@pytest.mark.parametrize(
    "successes, n, expected",
    [
        # Reference values (Newcombe 1998, table I; Agresti & Coull 1998), z = 1.96.
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (50, 100, (0.4038, 0.5962)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_interval_known_values(successes, n, expected):
    low, high = stats.wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=1.5e-4)
    assert high == pytest.approx(expected[1], abs=1.5e-4)


def test_wilson_interval_edges():
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.wilson_interval(0, 5)[0] == 0.0
    assert stats.wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        stats.wilson_interval(6, 5)


def test_wilson_interval_contains_the_estimate_and_narrows():
    for n in (10, 100, 1000):
        low, high = stats.wilson_interval(n // 3, n, digits=None)
        assert low < (n // 3) / n < high
    assert (lambda a, b: a[1] - a[0] > b[1] - b[0])(stats.wilson_interval(30, 100), stats.wilson_interval(300, 1000))


def test_difference_interval_newcombe_example():
    # Newcombe 1998 (table II, example (a)): 56/70 vs 48/80, difference 0.2, method 10:
    # 0.0524 to 0.3339.  Here the difference is b - a.
    d, low, high = stats.difference_interval(48, 80, 56, 70)
    assert d == pytest.approx(0.2, abs=1e-4)
    assert low == pytest.approx(0.0524, abs=2e-4)
    assert high == pytest.approx(0.3339, abs=2e-4)


def test_difference_interval_of_equal_proportions_contains_zero():
    d, low, high = stats.difference_interval(40, 100, 40, 100)
    assert d == 0 and low < 0 < high


def test_mean_std():
    assert stats.mean_std([]) == (0.0, 0.0)
    assert stats.mean_std([3]) == (3.0, 0.0)
    mean, std = stats.mean_std([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0 and std == pytest.approx(math.sqrt(32 / 7))
    assert stats.describe([1, 2, 3]) == {"mean": 2.0, "std": 1.0, "min": 1, "max": 3}
