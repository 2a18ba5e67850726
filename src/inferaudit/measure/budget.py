"""The error budget (DESIGN §10): the one rule for how much client lag a run may carry.

The client is part of the measurement. Latencies are measured from the *scheduled* send, so the
client's own lag (actual send - scheduled send) adds to every TTFT and E2E it reports. The rule:

    the lag the client adds may move a reported figure by at most
    max(share x figure, floor_ms)                      (``allowed_lag_ms``; default 2% or 1 ms)

applied to TTFT: a run is valid when its client lag p99 is at most the allowance of its TTFT p50
(``lag_bound``), TTFT taken from the actual send so that the client's own lag cannot enlarge its
allowance. TTFT p99 >= TTFT p50, so 99% of requests were moved by at most the budget of both the
p50 and the p99 figure. The slowest 1% of lags is not bounded by this rule; the summary reports
the lag maximum beside it.

The same function sets the self-test's bound, the search's, reconciliation's and the health
windows' (``HealthWindow.healthy``). A protocol that states ``max_client_lag_p99_ms`` (every v1
spec, or ``--max-lag-ms``) keeps that fixed bound instead: v1 evidence re-verifies exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inferaudit.measure.protocol import ErrorBudget, RunSpec

__all__ = [
    "LagBound",
    "allowed_lag_ms",
    "figure_of",
    "lag_bound",
    "lag_problem",
    "min_figure_ms",
    "summary_lag_problem",
]


def allowed_lag_ms(budget: ErrorBudget, figure_ms: float) -> float:
    """The most the client may move ``figure_ms``: ``max(share x figure, floor_ms)``."""
    return max(budget.share * figure_ms, budget.floor_ms)


def min_figure_ms(budget: ErrorBudget, lag_ms: float) -> float:
    """The smallest figure whose allowance carries ``lag_ms`` (0 when the floor does)."""
    return 0.0 if lag_ms <= budget.floor_ms else lag_ms / budget.share


@dataclass(frozen=True)
class LagBound:
    """The client-lag p99 bound of one run and where it comes from."""

    bound_ms: float
    rule: Literal["budget", "fixed"]
    budget: ErrorBudget | None = None  # for "budget"
    figure_ms: float | None = None  # TTFT p50 the budget was taken of; None: unknown (floor)

    def describe(self) -> str:
        """``2% of TTFT p50 412 ms, at least 1 ms`` or ``the protocol's max_client_lag_p99_ms``."""
        if self.rule == "fixed" or self.budget is None:
            return "the protocol's max_client_lag_p99_ms"
        b = self.budget
        if self.figure_ms is None:
            return f"error budget floor {b.floor_ms:g} ms (no TTFT measured)"
        return (
            f"error budget {b.share:.0%} of TTFT p50 {self.figure_ms:.4g} ms, "
            f"at least {b.floor_ms:g} ms"
        )


def lag_bound(spec: RunSpec, ttft_p50_ms: float | None) -> LagBound:
    """The client-lag p99 bound for ``spec`` given the run's TTFT p50 (from the actual send)."""
    if spec.max_client_lag_p99_ms is not None:
        return LagBound(spec.max_client_lag_p99_ms, "fixed")
    budget = spec.error_budget
    if ttft_p50_ms is None:
        return LagBound(budget.floor_ms, "budget", budget, None)
    return LagBound(allowed_lag_ms(budget, ttft_p50_ms), "budget", budget, ttft_p50_ms)


def lag_problem(bound: LagBound, lag_p99_ms: float | None) -> str | None:
    """None when the lag p99 is within ``bound``; else the one-line reason the run is invalid.

    A missing p99 (no request was sent) is a problem: nothing shows the client kept up.
    """
    if lag_p99_ms is None:
        return "no client lag measured: no request was sent"
    if lag_p99_ms <= bound.bound_ms:
        return None
    if bound.rule == "fixed":  # the v1 wording, byte for byte (v1 summaries re-verify)
        return (
            f"client fell behind its schedule: lag p99 {lag_p99_ms:.1f} ms > "
            f"{bound.bound_ms:g} ms — the client, not the endpoint, was the bottleneck"
        )
    return (
        f"client fell behind its schedule: lag p99 {lag_p99_ms:.3g} ms > {bound.bound_ms:.3g} ms "
        f"allowed ({bound.describe()}) — the client, not the endpoint, was the bottleneck"
    )


def figure_of(ttft_from_sent_p50_ms: float | None) -> float | None:
    """The figure the allowance is a share of: TTFT p50 from the actual send (the summary's
    ``ttft_from_sent_ms.p50``), so that the client's own send lag cannot enlarge it."""
    return ttft_from_sent_p50_ms


def summary_lag_problem(
    spec: RunSpec, lag_p99_ms: float | None, ttft_from_sent_p50_ms: float | None
) -> str | None:
    """The validity rule of ``metrics.summarize`` applied to stored values: the reason a run's
    client lag voids it, or None (also None without a lag p99: no measured request was sent,
    and the summary says so in its own reason)."""
    if lag_p99_ms is None:
        return None
    return lag_problem(lag_bound(spec, figure_of(ttft_from_sent_p50_ms)), lag_p99_ms)
