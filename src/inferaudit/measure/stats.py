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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

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


def percentile(sorted_values: Sequence[float] | np.ndarray, q: float) -> float:
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


def distribution_array(values: np.ndarray) -> dict[str, float | int | None]:
    """``distribution(values.tolist())`` of a float64 array, bit for bit, without Python floats
    (8 bytes a value): sorted by numpy, the mean an exact sum (``ExactSum``) as ``fsum`` rounds."""
    if not len(values):
        return distribution([])
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    total = ExactSum()
    total.add(ordered)
    out: dict[str, float | int | None] = {"n": len(ordered)}
    out["mean"] = round_sig(total.value() / len(ordered))
    qs = np.percentile(ordered, [q for _, q in PERCENTILES], method="linear")
    for (name, _), value in zip(PERCENTILES, qs, strict=True):
        out[name] = round_sig(float(value))
    out["max"] = round_sig(float(ordered[-1]))
    return out


class ExactSum:
    """The exact sum of finite float64 values, in any order and any number of batches;
    ``value()`` rounds it once, as ``math.fsum`` does (so ``fsum(xs) == value()``).

    Each value is ``mantissa * 2**(exponent - 53)`` with an integer mantissa below 2**53
    (``frexp``); mantissas of one exponent are summed in int64 halves of 26 and 27 bits (exact
    for 2**36 values a batch) and added to one Python integer in units of 2**-1126 (below the
    least subnormal's unit).
    """

    _UNIT_SHIFT = 1126

    def __init__(self) -> None:
        self._acc = 0

    _BLOCK = 1 << 18  # values decomposed at a time (the temporaries: ~60 bytes a value)

    def add(self, values: np.ndarray) -> None:
        for i in range(0, len(values), self._BLOCK):
            self._add(values[i : i + self._BLOCK])

    def _add(self, values: np.ndarray) -> None:
        assert bool(np.isfinite(values).all()), "ExactSum takes finite values"
        mant_f, exp = np.frexp(np.asarray(values, dtype=np.float64))
        mant = np.ldexp(mant_f, 53).astype(np.int64)  # exact: |mant| < 2**53
        order = np.argsort(exp, kind="stable")
        exps = exp[order]
        starts = np.flatnonzero(np.concatenate(([True], exps[1:] != exps[:-1])))
        sorted_mant = mant[order]
        his = np.add.reduceat(sorted_mant >> 26, starts)
        los = np.add.reduceat(sorted_mant & ((1 << 26) - 1), starts)
        for e, hi, lo in zip(exps[starts].tolist(), his.tolist(), los.tolist(), strict=True):
            self._acc += ((hi << 26) + lo) << (e - 53 + self._UNIT_SHIFT)

    def value(self) -> float:
        """The sum, correctly rounded (integer true division rounds correctly)."""
        return self._acc / (1 << self._UNIT_SHIFT)


# -- exact percentiles of more values than memory holds ------------------------------------------

_BITS = 16  # key bits resolved per pass: a histogram of 65,536 counts
_SIGN = np.uint64(1 << 63)


def _keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values (negative: all bits flipped)."""
    bits = np.asarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _value(key: int) -> float:
    bits = key ^ (1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


@dataclass
class _Window:
    """The keys ``k`` with ``k >> shift == prefix``: ``below`` keys are smaller, ``count`` in it."""

    prefix: int
    shift: int
    below: int
    count: int
    collect: bool = False
    keys: list[np.ndarray] = field(default_factory=list)
    hist: np.ndarray | None = None


class _Ranked(Sequence[float]):
    """The sorted values at the ranks ``percentile`` reads (and the last), without the rest."""

    def __init__(self, n: int, at: dict[int, float]) -> None:
        self.n, self.at = n, at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> float:  # type: ignore[override]
        return self.at[i % self.n]


Batches = Callable[[], Iterable[np.ndarray]]


class StreamDistribution:
    """``distribution`` of a stream of values too many to hold, exactly (bit for bit).

    ``add`` takes the values (float64 batches) in one pass. Up to ``memory_values`` of them are
    kept and the result is ``distribution_array`` of them; past that, only the count, the exact
    sum, the maximum and a histogram of each value's top 16 key bits are kept, and ``result``
    reads the values again (``again()``: a fresh iterator over the same batches) to find the
    values at the percentiles' ranks: each further pass narrows the window holding each rank by
    16 bits, and a window of at most ``window_values`` values is read whole and sorted. Memory:
    ``memory_values`` (or ``window_values``) floats and 65,536 counts per rank; passes: at most 4
    after the first, 2 for any realistic latency data.
    """

    def __init__(self, memory_values: int = 2_000_000, window_values: int = 1_000_000) -> None:
        self.memory_values, self.window_values = memory_values, window_values
        self.kept: list[np.ndarray] | None = []
        self.n = 0
        self.total = ExactSum()
        self.top = -math.inf
        self.hist: np.ndarray | None = None
        self.passes = 1

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        self.n += len(values)
        self.total.add(values)
        self.top = max(self.top, float(values.max()))
        if self.kept is not None:
            self.kept.append(values)
            if self.n <= self.memory_values:
                return
            self.hist = np.zeros(1 << _BITS, dtype=np.int64)
            for kept in self.kept:
                self._histogram(kept)
            self.kept = None
        else:
            self._histogram(values)

    def _histogram(self, values: np.ndarray) -> None:
        assert self.hist is not None
        top = (_keys(values) >> np.uint64(64 - _BITS)).astype(np.int64)
        self.hist += np.bincount(top, minlength=1 << _BITS)

    def result(self, again: Batches) -> dict[str, float | int | None]:
        if self.kept is not None:
            return distribution_array(
                np.concatenate(self.kept) if self.kept else np.empty(0, dtype=np.float64)
            )
        assert self.hist is not None
        n = self.n
        ranks = set()
        for _, q in PERCENTILES:
            virtual = (n - 1) * (q / 100)
            if virtual < n - 1:
                ranks |= {math.floor(virtual), math.floor(virtual) + 1}
        at = self._select(sorted(ranks), again)
        at[n - 1] = self.top
        ordered = _Ranked(n, at)
        out: dict[str, float | int | None] = {"n": n, "mean": round_sig(self.total.value() / n)}
        for name, q in PERCENTILES:
            out[name] = round_sig(percentile(ordered, q))
        out["max"] = round_sig(self.top)
        return out

    def _select(self, ranks: list[int], again: Batches) -> dict[int, float]:
        """The value at each 0-based rank: windows narrowed pass by pass, then read whole."""
        assert self.hist is not None
        at: dict[int, float] = {}
        windows = self._windows(self.hist, 0, 64, 0, ranks)
        while windows:
            pending: list[tuple[_Window, list[int]]] = []
            for w, rs in windows:
                if w.shift == 0:  # one key: every rank in it has its value
                    at.update(dict.fromkeys(rs, _value(w.prefix)))
                    continue
                w.collect = w.count <= self.window_values // len(windows)
                pending.append((w, rs))
            if not pending:
                break
            self._pass([w for w, _ in pending], again)
            windows = []
            for w, rs in pending:
                if w.collect:
                    keys = np.sort(np.concatenate(w.keys)) if w.keys else np.empty(0, np.uint64)
                    assert len(keys) == w.count, "the values changed between passes"
                    at.update({r: _value(int(keys[r - w.below])) for r in rs})
                else:
                    assert w.hist is not None and int(w.hist.sum()) == w.count
                    windows += self._windows(w.hist, w.prefix, w.shift, w.below, rs)
        return at

    @staticmethod
    def _windows(
        hist: np.ndarray, prefix: int, shift: int, below: int, ranks: list[int]
    ) -> list[tuple[_Window, list[int]]]:
        """The sub-windows (next 16 bits under ``prefix``) holding ``ranks``, with their ranks."""
        cum = np.cumsum(hist)
        out: dict[int, tuple[_Window, list[int]]] = {}
        for r in ranks:
            b = int(np.searchsorted(cum, r - below, side="right"))
            if b not in out:
                count = int(hist[b])
                start = below + int(cum[b]) - count
                out[b] = (_Window((prefix << _BITS) | b, shift - _BITS, start, count), [])
            out[b][1].append(r)
        return list(out.values())

    def _pass(self, windows: list[_Window], again: Batches) -> None:
        self.passes += 1
        for w in windows:
            if not w.collect:
                w.hist = np.zeros(1 << _BITS, dtype=np.int64)
        for values in again():
            keys = _keys(values)
            for w in windows:
                inside = keys[(keys >> np.uint64(w.shift)) == np.uint64(w.prefix)]
                if not len(inside):
                    continue
                if w.collect:
                    w.keys.append(inside)
                else:
                    assert w.hist is not None
                    sub = (inside >> np.uint64(w.shift - _BITS)) & np.uint64((1 << _BITS) - 1)
                    w.hist += np.bincount(sub.astype(np.int64), minlength=1 << _BITS)


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
