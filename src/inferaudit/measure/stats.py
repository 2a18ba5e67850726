"""Statistics behind the summary: percentiles, MLPerf early stopping, a t-interval, allocation.

Everything here is a pure function of its arguments and gives the same answer on every platform:
sums use ``math.fsum`` (exactly rounded), percentiles use numpy's ``linear`` method on sorted
data (as vLLM ``bench serve`` does), and integer work stays in integers.

Early stopping follows MLPerf LoadGen (``loadgen/early_stopping.cc`` and
``PerformanceSummary::EarlyStopping`` in ``results.cc``) with tolerance 0 and confidence 0.99:
with ``h`` requests within a latency bound and ``t`` over it, the claim "the ``p``-th percentile
is within the bound" holds iff ``I_p(h, t + 1) <= 0.01``, where ``I`` is the regularized
incomplete beta function; ``I_p(h, t + 1)`` equals ``P[X <= t]`` for ``X ~ Binomial(h + t, 1 - p)``,
the chance of seeing ``t`` or fewer violations if the true violation rate were exactly ``1 - p``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc
from scipy.stats import t as student_t

EARLY_STOPPING_CONFIDENCE = 0.99
CI_CONFIDENCE = 0.95
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)
SIGNIFICANT_DIGITS = 6


def round_sig(x: float | None, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """``x`` rounded to ``digits`` significant decimal digits; None for None, NaN or infinity."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy ``percentile(values, q, method="linear")`` of sorted, non-empty values, in Python.

    The same float operations as numpy's ``_quantile``/``_lerp`` (so the same result, bit for
    bit) without numpy's per-call overhead, for the per-request percentiles of the SLO check.
    """
    n = len(sorted_values)
    assert n, "percentile of no values"
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        return float(sorted_values[-1])
    lo = math.floor(virtual)
    gamma = virtual - lo
    a, b = float(sorted_values[lo]), float(sorted_values[lo + 1])
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``p50`` ... ``p99.9`` and ``max`` of ``values``, rounded; nulls when empty.

    The input order does not matter: values are sorted first and the mean is an exact ``fsum``.
    """
    ordered = sorted(values)
    out: dict[str, float | int | None] = {"n": len(ordered)}
    if not ordered:
        out["mean"] = None
        out.update(dict.fromkeys((name for name, _ in PERCENTILES), None))
        out["max"] = None
        return out
    arr = np.asarray(ordered, dtype=np.float64)
    out["mean"] = round_sig(math.fsum(ordered) / len(ordered))
    qs = np.percentile(arr, [q for _, q in PERCENTILES], method="linear")
    for (name, _), value in zip(PERCENTILES, qs, strict=True):
        out[name] = round_sig(float(value))
    out["max"] = round_sig(ordered[-1])
    return out


# -- MLPerf early stopping ----------------------------------------------------------------------


def early_stopping_odds(passing: int, violations: int, p: float) -> float:
    """``P[X <= violations]``, ``X ~ Binomial(passing + violations, 1 - p)`` (MLPerf ``odds``)."""
    assert passing >= 0 and violations >= 0 and 0.0 < p < 1.0
    if passing == 0:
        return 1.0  # every request violated: nothing supports the claim
    return float(betainc(passing, violations + 1, p))


def min_passing(violations: int, p: float, confidence: float = EARLY_STOPPING_CONFIDENCE) -> int:
    """Fewest requests within the bound that, alongside ``violations``, prove the percentile.

    MLPerf's ``MinPassingQueriesFinder``: the least ``h`` with odds ``<= 1 - confidence``.
    """
    alpha = 1.0 - confidence
    lo, hi = 1, 1
    while early_stopping_odds(hi, violations, p) > alpha:  # odds fall as h grows
        lo, hi = hi + 1, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if early_stopping_odds(mid, violations, p) <= alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def min_requests_zero_violations(p: float) -> int:
    """Fewest requests that prove the ``p`` percentile when none violates (459 for p99)."""
    return min_passing(0, p)


def min_requests_for_estimate(p: float) -> int:
    """Fewest requests for an early-stopping percentile estimate (662 for p99): one violation."""
    return min_passing(1, p) + 1


def allowed_violations(n: int, p: float, confidence: float = EARLY_STOPPING_CONFIDENCE) -> int:
    """Most violations among ``n`` requests that still prove the ``p`` percentile; -1 if none."""
    alpha = 1.0 - confidence

    def proves(t: int) -> bool:
        return early_stopping_odds(n - t, t, p) <= alpha

    if n <= 0 or not proves(0):
        return -1
    lo, hi = 0, n  # proves(lo) holds; proves(n) never does (no passing request)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if proves(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class EarlyStopping:
    """Outcome of the early-stopping test of one percentile bound."""

    n: int
    violations: int
    verdict: str  # "pass" | "fail" | "insufficient"
    min_requests_zero_violations: int
    min_requests_for_estimate: int
    estimate_rank: int | None  # 1-based rank from the top of the estimate sample; None if none
    additional_requests_needed: int | None  # for "fail"/"insufficient", if all further passed


def early_stopping(n: int, violations: int, p: float) -> EarlyStopping:
    """Verdict of the MLPerf early-stopping criterion for ``violations`` among ``n`` requests.

    ``insufficient``: ``n`` is below the minimum even with no violation; ``pass``: the percentile
    claim holds with 99% confidence; ``fail``: it does not (yet). The estimate is MLPerf's: with
    ``t`` the most violations ``n`` requests could absorb (at least 1), the ``t``-th highest value.
    """
    assert 0 <= violations <= n
    zero = min_requests_zero_violations(p)
    one = min_requests_for_estimate(p)
    needed_passing = min_passing(violations, p)
    passing = n - violations
    if n < zero:
        verdict = "insufficient"
    elif passing >= needed_passing:
        verdict = "pass"
    else:
        verdict = "fail"
    t = allowed_violations(n, p)
    return EarlyStopping(
        n=n,
        violations=violations,
        verdict=verdict,
        min_requests_zero_violations=zero,
        min_requests_for_estimate=one,
        estimate_rank=t if t >= 1 else None,
        additional_requests_needed=None if verdict == "pass" else needed_passing - passing,
    )


# -- throughput confidence interval -------------------------------------------------------------


def t_interval(
    samples: Sequence[float], confidence: float = CI_CONFIDENCE
) -> tuple[float, float, float] | None:
    """Student-t interval of the mean of ``samples``: ``(mean, low, high)``; None below 2."""
    k = len(samples)
    if k < 2:
        return None
    ordered = sorted(samples)
    mean = math.fsum(ordered) / k
    var = math.fsum((x - mean) ** 2 for x in ordered) / (k - 1)
    half = float(student_t.ppf(0.5 + confidence / 2, k - 1)) * math.sqrt(var / k)
    return mean, mean - half, mean + half


# -- allocation ---------------------------------------------------------------------------------


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into one integer part per weight, proportional, each part at least 1.

    Largest-remainder (Hamilton) apportionment in exact integer arithmetic: parts start at
    ``max(1, floor(quota))``; missing units go to the largest remainders (ties: earlier index);
    surplus units (from parts raised to 1) come off the parts furthest above their quota, one
    per part per round (ties: earlier index), never below 1. All-zero weights count as equal.
    Requires ``total >= len(weights) >= 1``.
    """
    m = len(weights)
    assert m >= 1 and total >= m, f"cannot give {total} units to {m} parts, at least 1 each"
    assert all(w >= 0 for w in weights)
    ws = list(weights) if any(weights) else [1] * m
    whole = sum(ws)
    parts = [max(1, total * w // whole) for w in ws]
    gap = total - sum(parts)
    if gap > 0:
        # only unraised parts can be under their quota; each gets at most one unit
        order = sorted(
            (i for i in range(m) if total * ws[i] // whole >= 1),
            key=lambda i: (-(total * ws[i] % whole), i),
        )
        for i in order[:gap]:
            parts[i] += 1
    elif gap < 0:
        # excess over quota (in 1/whole units) is parts*whole - total*w; largest goes first
        order = sorted(range(m), key=lambda i: (-(parts[i] * whole - total * ws[i]), i))
        surplus = -gap
        while surplus:
            for i in order:
                if surplus and parts[i] > 1:
                    parts[i] -= 1
                    surplus -= 1
    assert sum(parts) == total and min(parts) >= 1
    return parts
