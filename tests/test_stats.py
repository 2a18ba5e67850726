"""Known-answer tests for measure.stats (percentiles, MLPerf early stopping, t-interval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferaudit.measure import stats

# -- rounding and distributions -----------------------------------------------------------------


def test_round_sig_six_significant_digits() -> None:
    assert stats.round_sig(29.508196721) == 29.5082
    assert stats.round_sig(123456789.0) == 123457000.0
    assert stats.round_sig(0.000123456789) == 0.000123457
    assert stats.round_sig(-2.5) == -2.5
    assert stats.round_sig(None) is None
    assert stats.round_sig(math.inf) is None
    assert stats.round_sig(math.nan) is None


def test_percentile_is_numpy_linear() -> None:
    values = [1.0, 2.0, 4.0, 8.0, 100.0]
    assert stats.percentile(values, 50.0) == 4.0
    assert stats.percentile(values, 90.0) == pytest.approx(8.0 + 0.6 * 92.0)  # rank 3.6
    assert stats.percentile(values, 99.0) == float(np.percentile(values, 99.0))


@given(
    values=st.lists(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), min_size=1, max_size=60
    ),
    q=st.sampled_from([0.0, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0])
    | st.floats(min_value=0.0, max_value=100.0),
)
def test_percentile_matches_numpy_bit_for_bit(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert stats.percentile(ordered, q) == float(np.percentile(ordered, q, method="linear"))
    dist = stats.distribution(values)
    assert dist["p99.9"] == stats.round_sig(stats.percentile(ordered, 99.9))


def test_distribution_known_answer_and_order_free() -> None:
    expected = {
        "n": 3,
        "mean": 31.6667,
        "p50": 30.0,
        "p90": 46.0,
        "p95": 48.0,
        "p99": 49.6,
        "p99.9": 49.96,
        "max": 50.0,
    }
    assert stats.distribution([30.0, 50.0, 15.0]) == expected
    assert stats.distribution([50.0, 15.0, 30.0]) == expected


def test_distribution_empty_is_null() -> None:
    assert stats.distribution([]) == {
        "n": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "p99.9": None,
        "max": None,
    }


# -- MLPerf early stopping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "zero", "one"),
    [
        (0.99, 459, 662),  # MLPerf's published minimums for p99
        (0.90, 44, 64),
        (0.95, 90, 130),
        (0.999, 4603, 6636),
        (0.5, 7, 11),
    ],
)
def test_early_stopping_minimums(p: float, zero: int, one: int) -> None:
    assert stats.min_requests_zero_violations(p) == zero
    assert stats.min_requests_for_estimate(p) == one


def test_zero_violation_minimum_is_closed_form() -> None:
    # with no violation the odds are p**h: the least h with p**h <= 0.01
    for p in (0.5, 0.9, 0.95, 0.99):
        h = stats.min_requests_zero_violations(p)
        assert p**h <= 0.01 < p ** (h - 1)


def test_odds_is_binomial_cdf() -> None:
    # P[X <= 1], X ~ Binomial(661 + 1, 0.01), against the sum of the two terms
    n, q = 662, 0.01
    direct = (1 - q) ** n + n * q * (1 - q) ** (n - 1)
    assert stats.early_stopping_odds(661, 1, 0.99) == pytest.approx(direct, rel=1e-12)
    assert stats.early_stopping_odds(0, 5, 0.99) == 1.0


def test_allowed_violations_boundaries() -> None:
    assert stats.allowed_violations(458, 0.99) == -1
    assert stats.allowed_violations(459, 0.99) == 0
    assert stats.allowed_violations(661, 0.99) == 0
    assert stats.allowed_violations(662, 0.99) == 1
    assert stats.allowed_violations(838, 0.99) == 2
    assert stats.allowed_violations(837, 0.99) == 1
    assert stats.allowed_violations(0, 0.99) == -1


def test_early_stopping_verdicts() -> None:
    assert stats.early_stopping(458, 0, 0.99).verdict == "insufficient"
    ok = stats.early_stopping(459, 0, 0.99)
    assert (ok.verdict, ok.estimate_rank, ok.additional_requests_needed) == ("pass", None, None)
    one = stats.early_stopping(662, 1, 0.99)
    assert (one.verdict, one.estimate_rank) == ("pass", 1)
    short = stats.early_stopping(661, 1, 0.99)
    assert (short.verdict, short.additional_requests_needed) == ("fail", 1)
    bad = stats.early_stopping(1000, 50, 0.99)
    assert bad.verdict == "fail"
    assert bad.estimate_rank == stats.allowed_violations(1000, 0.99)
    # insufficient: the count to reach the k=0 minimum if every further request passes
    assert stats.early_stopping(4, 0, 0.99).additional_requests_needed == 455


# -- t-interval ---------------------------------------------------------------------------------


def test_t_interval_known_answer() -> None:
    # mean 25, s = sqrt(500/3), t(0.975, 3) = 3.182446305...: half width 20.5426
    mean, low, high = stats.t_interval([40.0, 10.0, 30.0, 20.0]) or (0, 0, 0)
    assert mean == 25.0
    assert low == pytest.approx(4.457397432, abs=1e-8)
    assert high == pytest.approx(45.542602568, abs=1e-8)
    assert stats.t_interval([1.0]) is None


# -- allocation ---------------------------------------------------------------------------------


def test_allocate_known_answers() -> None:
    assert stats.allocate(5, [4, 12]) == [1, 4]  # quotas 1.25, 3.75
    assert stats.allocate(4, [4, 12]) == [1, 3]
    assert stats.allocate(6, [5, 5, 5]) == [2, 2, 2]
    assert stats.allocate(7, [1, 1, 1]) == [3, 2, 2]  # equal remainders: earlier index first
    assert stats.allocate(7, [0, 0, 0]) == [3, 2, 2]  # no characters: equal weights
    assert stats.allocate(10, [1, 1, 1, 1, 100]) == [1, 1, 1, 1, 6]  # raised to 1, taken back
    assert stats.allocate(5, [1, 1, 1, 1, 100]) == [1, 1, 1, 1, 1]
    assert stats.allocate(3, [0, 9, 0]) == [1, 1, 1]


@given(
    weights=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=40),
    extra=st.integers(min_value=0, max_value=300),
)
def test_allocate_properties(weights: list[int], extra: int) -> None:
    total = len(weights) + extra
    parts = stats.allocate(total, weights)
    assert sum(parts) == total
    assert min(parts) >= 1
    ws = weights if any(weights) else [1] * len(weights)
    quotas = [total * w / sum(ws) for w in ws]
    if all(q >= 1 for q in quotas):  # nothing raised: plain largest remainder
        assert all(abs(p - q) < 1 for p, q in zip(parts, quotas, strict=True))
