"""The measured requests of a run as compact columns: what the summary keeps of each record.

``metrics.summarize`` reads the records once (streamed from ``records.jsonl``, or a list) and
keeps, per measured request, only the numbers its figures need, in typed arrays (8 bytes a
number, about 70 bytes a request: 10^6 requests take ~70 MB), plus running counts and sums. No
:class:`~inferaudit.measure.records.Record`, text or chunk list outlives its line. The ITL
samples (one per token, so a run holds far more of them than requests) go to a
:class:`~inferaudit.measure.stats.StreamDistribution`, which keeps at most a bounded number and
otherwise reads the records again for its exact percentiles.

Each figure is computed from the columns exactly as it was from the records (same float
operations, integer sums in integers, record order irrelevant): the summary stays bit for bit
what earlier versions wrote, which ``verify`` and the v1/v2 evidence fixtures check.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferaudit.measure import stats
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record

__all__ = ["NONE", "Columns", "RequestTimes"]

NONE = -(1 << 63)  # an int column's "undefined" (no ns value reaches it)
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
CI_MAX_SUBWINDOWS = 10
CI_MIN_REQUESTS_PER_SUBWINDOW = 5


@dataclass(frozen=True)
class RequestTimes:
    """Per-request values of one record, as the summary defines them (times in ns, unrounded).

    ``metrics.request_times(record)`` is the one place TTFT, E2E, TPOT and ITL of a record are
    derived; the summary, the report and anything else that needs per-request values use it.
    Undefined values are None (a failed request has no TTFT; a 1-token reply has no TPOT).
    """

    ok: bool
    output_tokens: int  # usage when reported, else content chunks
    proven_tokens: int  # what the stream proves (``proven_tokens``): what a v2 summary credits
    ttft_ns: int | None = None  # scheduled send -> first content chunk
    ttft_sent_ns: int | None = None  # actual send -> first content chunk
    ttft_due_ns: int | None = None  # when it was due (scheduled, or its slot) -> first content
    e2e_ns: int | None = None  # scheduled send -> done
    tpot_ms: float | None = None
    itl_ms: tuple[float, ...] = ()

    @property
    def ttft_ms(self) -> float | None:
        return None if self.ttft_ns is None else self.ttft_ns / NS_PER_MS

    def credited_tokens(self, spec: RunSpec) -> int:
        """The tokens ``spec``'s summary credits this request with (proven; usage for v1)."""
        return self.proven_tokens if spec.credits_proven else self.output_tokens

    @property
    def e2e_ms(self) -> float | None:
        return None if self.e2e_ns is None else self.e2e_ns / NS_PER_MS


def _q(value: int | None) -> int:
    return NONE if value is None else value


def _span(lo: int | None, hi: int | None, count: int) -> float | None:
    """(count - 1) events over the span ``hi - lo``, per second (``_span_rate``)."""
    if count < 2 or lo is None or hi is None:
        return None
    return rate(count - 1, hi - lo)


def rate(count: int, span_ns: int | None) -> float | None:
    if span_ns is None or span_ns <= 0:
        return None
    return stats.round_sig(count * NS_PER_S / span_ns)


def dist_ns(values: np.ndarray) -> dict[str, float | int | None]:
    """``stats.distribution`` in ms of int64 ns values (each ``ns / 10**6``, as Python rounds)."""
    return stats.distribution_array(values.astype(np.float64) / NS_PER_MS)


@dataclass
class _Extremes:
    lo: int | None = None
    hi: int | None = None
    count: int = 0

    def add(self, value: int | None) -> None:
        if value is None:
            return
        self.count += 1
        self.lo = value if self.lo is None else min(self.lo, value)
        self.hi = value if self.hi is None else max(self.hi, value)


@dataclass
class Columns:
    """One pass over the measured records (``add``), then the figures (the other methods)."""

    itl_slo_pcts: tuple[float, ...] = ()  # per-request ITL percentiles the SLO bounds need
    turns: bool = False  # keep each request's turn (multi-turn workloads)
    n: int = 0
    ok: array[int] = field(default_factory=lambda: array("b"))
    ttft: array[int] = field(default_factory=lambda: array("q"))
    ttft_sent: array[int] = field(default_factory=lambda: array("q"))
    ttft_due: array[int] = field(default_factory=lambda: array("q"))
    e2e: array[int] = field(default_factory=lambda: array("q"))
    tpot: array[float] = field(default_factory=lambda: array("d"))  # NaN: undefined
    lag: array[int] = field(default_factory=lambda: array("q"))
    slot_wait: array[int] = field(default_factory=lambda: array("q"))  # NONE: never sent
    done: array[int] = field(default_factory=lambda: array("q"))
    credited: array[int] = field(default_factory=lambda: array("q"))
    turn: array[int] = field(default_factory=lambda: array("q"))
    itl_slo: dict[float, array[float]] = field(default_factory=dict)
    itl: stats.StreamDistribution = field(default_factory=stats.StreamDistribution)
    scheduled: _Extremes = field(default_factory=_Extremes)
    sent: _Extremes = field(default_factory=_Extremes)
    end: int | None = None
    errors: Counter[str | None] = field(default_factory=Counter)
    empty_chunks: int = 0
    requests_with_empty_chunks: int = 0
    # completed requests' token counts (``output_tokens_by_source``)
    usage_sum: int = 0
    with_usage: int = 0
    chunks_sum: int = 0
    usage_equals: int = 0
    usage_above: int = 0
    usage_below: int = 0
    usage_above_proven: int = 0
    usage_based: int = 0  # completed requests' output tokens (usage, else content events)
    credited_sum: int = 0  # completed requests' credited tokens

    def __post_init__(self) -> None:
        self.itl_slo = {p: array("d") for p in self.itl_slo_pcts}
        self._itl_batch: list[float] = []

    def add(self, r: Record, t: RequestTimes, credited: int) -> None:
        """Keep what the summary needs of one measured record ``r`` (``t``: its times)."""
        self.n += 1
        self.ok.append(t.ok)
        self.ttft.append(_q(t.ttft_ns))
        self.ttft_sent.append(_q(t.ttft_sent_ns))
        self.ttft_due.append(_q(t.ttft_due_ns))
        self.e2e.append(_q(t.e2e_ns))
        self.tpot.append(math.nan if t.tpot_ms is None else t.tpot_ms)
        self.lag.append(_q(r.lag_ns))
        self.slot_wait.append(NONE if r.sent_ns is None else r.slot_wait_ns)
        self.done.append(_q(r.done_ns))
        self.credited.append(credited)
        if self.turns:
            self.turn.append(r.turn or 0)
        for pct, column in self.itl_slo.items():
            itl = sorted(t.itl_ms)
            column.append(stats.percentile(itl, pct) if itl else math.nan)
        self.scheduled.add(r.scheduled_ns)
        self.sent.add(r.sent_ns)
        if r.done_ns is not None:
            self.end = r.done_ns if self.end is None else max(self.end, r.done_ns)
        self.empty_chunks += r.empty_chunks_before_content
        self.requests_with_empty_chunks += r.empty_chunks_before_content > 0
        if not t.ok:
            self.errors[r.error_class] += 1
            return
        self.add_itl(t.itl_ms)
        self.usage_based += t.output_tokens
        self.credited_sum += credited
        self.chunks_sum += r.content_chunks
        self.usage_above_proven += t.output_tokens > t.proven_tokens
        usage = r.usage_completion_tokens
        if usage is not None:
            self.with_usage += 1
            self.usage_sum += usage
            self.usage_equals += usage == r.content_chunks
            self.usage_above += usage > r.content_chunks
            self.usage_below += usage < r.content_chunks

    def add_itl(self, samples: Iterable[float]) -> None:
        self._itl_batch.extend(samples)
        if len(self._itl_batch) >= 65_536:
            self.flush_itl()

    def flush_itl(self) -> None:
        if self._itl_batch:
            self.itl.add(np.array(self._itl_batch, dtype=np.float64))
            self._itl_batch = []

    # -- the figures -------------------------------------------------------------------------

    def arr(self, column: array[Any], dtype: type) -> np.ndarray:
        return np.frombuffer(column, dtype=dtype) if len(column) else np.empty(0, dtype=dtype)

    def ok_mask(self) -> np.ndarray:
        return self.arr(self.ok, np.int8).astype(bool)

    def defined(self, column: array[int], mask: np.ndarray) -> np.ndarray:
        """The values of an int column where ``mask`` holds and the value is defined."""
        values = self.arr(column, np.int64)
        return np.asarray(values[mask & (values != NONE)])

    def span(self) -> tuple[int | None, int | None, int | None]:
        start, end = self.scheduled.lo, self.end
        return start, end, None if start is None or end is None else end - start

    def scheduled_rps(self) -> float | None:
        return _span(self.scheduled.lo, self.scheduled.hi, self.scheduled.count)

    def achieved_rps(self) -> float | None:
        return _span(self.sent.lo, self.sent.hi, self.sent.count)

    def lag_ms(self) -> dict[str, float | None]:
        lags = np.sort(self.defined(self.lag, np.ones(self.n, dtype=bool)) / NS_PER_MS)
        if not len(lags):
            return {"p50": None, "p99": None, "max": None}
        return {
            "p50": stats.round_sig(stats.percentile(lags, 50.0)),
            "p99": stats.round_sig(stats.percentile(lags, 99.0)),
            "max": stats.round_sig(float(lags[-1])),
        }

    def slo_values(self, metric: str, pct: float) -> np.ndarray:
        """Each request's own value for an SLO metric in ms; NaN where undefined."""
        if metric == "tpot":
            return self.arr(self.tpot, np.float64)
        if metric == "itl":
            return self.arr(self.itl_slo[pct], np.float64)
        assert metric in ("ttft", "e2e"), f"unknown SLO metric {metric}"
        ns = self.arr(self.ttft if metric == "ttft" else self.e2e, np.int64)
        return np.where(ns == NONE, math.nan, ns.astype(np.float64) / NS_PER_MS)

    def slo(self, bounds: dict[str, float]) -> tuple[dict[str, Any], np.ndarray]:
        """Early-stopping verdict per bound, and per request whether it met every bound."""
        ok = self.ok_mask()
        meets_all = ok.copy()
        out: dict[str, Any] = {}
        n = self.n
        for key in sorted(bounds):
            bound = bounds[key]
            metric, _, pct_name = key.partition("_")
            pct = float(pct_name[1:])
            values = self.slo_values(metric, pct)
            known = np.where(np.isnan(values), -math.inf, values)  # undefined meets any bound
            over = ok & (known > bound)
            violations = int((~ok).sum() + over.sum())
            meets_all &= ~over
            ranked = np.sort(np.where(ok, known, math.inf))  # failed -> +inf
            es = stats.early_stopping(n, violations, pct / 100.0)
            estimate = None
            if es.estimate_rank is not None:
                estimate = stats.round_sig(float(ranked[n - es.estimate_rank]))
            out[key] = {
                "metric": metric,
                "percentile": pct,
                "bound_ms": bound,
                "n": n,
                "violations": violations,
                "verdict": es.verdict,
                "confidence": stats.EARLY_STOPPING_CONFIDENCE,
                "min_requests_zero_violations": es.min_requests_zero_violations,
                "min_requests_for_estimate": es.min_requests_for_estimate,
                "additional_requests_needed": es.additional_requests_needed,
                "estimate_ms": estimate,
            }
        return out, meets_all

    def throughput_ci(self, start: int, span_ns: int | None) -> dict[str, Any]:
        """t-interval of output tokens/s over equal sub-windows; tokens counted at done time."""
        done = self.arr(self.done, np.int64)
        keep = self.ok_mask() & (done != NONE)
        done, tokens_of = done[keep], self.arr(self.credited, np.int64)[keep]
        k = min(CI_MAX_SUBWINDOWS, len(done) // CI_MIN_REQUESTS_PER_SUBWINDOW)
        out: dict[str, Any] = {
            "method": (
                "equal sub-windows of the measurement window; output tokens of requests done in "
                "each / sub-window length; Student-t interval of the mean"
            ),
            "confidence": stats.CI_CONFIDENCE,
            "subwindows": None,
            "mean": None,
            "low": None,
            "high": None,
        }
        if span_ns is None or span_ns <= 0 or k < 2:
            return out
        index = np.minimum(k - 1, (done - start) * k // span_ns)
        index = np.where(index < 0, index + k, index)  # as a Python list index would wrap
        assert bool((index >= 0).all()), "a request done long before the window began"
        tokens = np.zeros(k, dtype=np.int64)
        np.add.at(tokens, index, tokens_of)
        rates = [t * k * NS_PER_S / span_ns for t in tokens.tolist()]
        interval = stats.t_interval(rates)
        assert interval is not None
        mean, low, high = interval
        out.update(
            subwindows=k,
            mean=stats.round_sig(mean),
            low=stats.round_sig(low),
            high=stats.round_sig(high),
        )
        return out

    def turn_stats(self) -> list[dict[str, Any]]:
        """Per turn index: requests, completions, credited tokens, TTFT, TPOT and E2E."""
        turn = self.arr(self.turn, np.int64)
        ok = self.ok_mask()
        tpot = self.arr(self.tpot, np.float64)
        out = []
        for t in np.unique(turn).tolist():
            mine = turn == t
            good = mine & ok
            out.append(
                {
                    "turn": t,
                    "requests": int(mine.sum()),
                    "completed": int(good.sum()),
                    "output_tokens": int(self.arr(self.credited, np.int64)[good].sum()),
                    "ttft_ms": dist_ns(self.defined(self.ttft, good)),
                    "tpot_ms": stats.distribution_array(tpot[good & ~np.isnan(tpot)]),
                    "e2e_ms": dist_ns(self.defined(self.e2e, good)),
                }
            )
        return out
