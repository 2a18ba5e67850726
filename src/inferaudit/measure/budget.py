"""The error budget (DESIGN §10): the one rule for how much the client may move a figure.

The client is part of the measurement. Latencies are measured from the *scheduled* send, so the
client's own lag (actual send - scheduled send) adds to every TTFT and E2E it reports. The rule:

    the lag the client adds may move a reported figure by at most
    max(share x figure, floor_ms)                      (``allowed_lag_ms``; default 2% or 1 ms)

applied to the TTFT figures a claim is judged by, p50 and p99 (``figure_shifts``): each is
reported from the scheduled send and also from the actual send, and the difference between the
two *is* what the client's send lag moved that figure by. A run is valid when both moves are
within their allowance. This judges the figures, not single requests: a few late sends that do
not move p99 do not void a run, and a lag that does move it does, however small its p99. The lag
distribution is reported beside it. (Read delays on the client's side are not in the records:
the health windows judge them, for the timing checks.)

``lag_bound`` (the allowance of one figure, applied to a lag p99) sets the self-test's bound and
the health windows' (``HealthWindow.healthy``), where no from-send twin of a figure exists. A
protocol that states ``max_client_lag_p99_ms`` (every v1 spec, or ``--max-lag-ms``) keeps that
fixed bound on the lag p99 instead: v1 evidence re-verifies exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inferaudit.measure.protocol import ErrorBudget, RunSpec

__all__ = [
    "FigureShift",
    "LagBound",
    "allowed_lag_ms",
    "figure_of",
    "figure_shifts",
    "lag_bound",
    "lag_problem",
    "min_figure_ms",
    "shift_problem",
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


@dataclass(frozen=True)
class FigureShift:
    """How far the client's send lag moved one reported figure, and how far it may."""

    name: str  # "ttft_p50" | "ttft_p99"
    figure_ms: float  # the figure as reported (from the scheduled send)
    shift_ms: float  # reported minus the same figure from the actual send
    allowed_ms: float  # allowed_lag_ms(budget, figure_ms)

    @property
    def within(self) -> bool:
        return self.shift_ms <= self.allowed_ms


def figure_shifts(
    budget: ErrorBudget,
    ttft: tuple[float | None, float | None],
    ttft_from_sent: tuple[float | None, float | None],
) -> tuple[FigureShift, ...]:
    """The TTFT p50 and p99 moves, from (p50, p99) pairs from the scheduled and the actual send
    (a figure missing from either is not judged)."""
    out = []
    for name, fig, sent in zip(("ttft_p50", "ttft_p99"), ttft, ttft_from_sent, strict=True):
        if fig is not None and sent is not None:
            out.append(FigureShift(name, fig, fig - sent, allowed_lag_ms(budget, fig)))
    return tuple(out)


def shift_problem(budget: ErrorBudget, shifts: tuple[FigureShift, ...]) -> str | None:
    """None when every move is within its allowance; else the one-line reason (the largest)."""
    over = [f for f in shifts if not f.within]
    if not over:
        return None
    worst = max(over, key=lambda f: f.shift_ms / f.allowed_ms)
    return (
        f"client fell behind its schedule: its send lag moved {worst.name.replace('_', ' ')} "
        f"{worst.figure_ms:.4g} ms by {worst.shift_ms:.3g} ms > {worst.allowed_ms:.3g} ms allowed "
        f"(error budget {budget.share:.0%} of the figure, at least {budget.floor_ms:g} ms) — the "
        "client, not the endpoint, was the bottleneck"
    )


def summary_lag_problem(
    spec: RunSpec,
    lag_p99_ms: float | None,
    ttft: tuple[float | None, float | None],
    ttft_from_sent: tuple[float | None, float | None],
) -> str | None:
    """The validity rule of ``metrics.summarize`` applied to stored values: the reason a run's
    client lag voids it, or None (also None without a lag p99: no measured request was sent,
    and the summary says so in its own reason). ``ttft``/``ttft_from_sent``: (p50, p99) ms."""
    if lag_p99_ms is None:
        return None
    if spec.max_client_lag_p99_ms is not None:
        return lag_problem(LagBound(spec.max_client_lag_p99_ms, "fixed"), lag_p99_ms)
    budget = spec.error_budget
    return shift_problem(budget, figure_shifts(budget, ttft, ttft_from_sent))
