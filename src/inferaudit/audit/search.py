"""SLO capacity search: the highest open-loop arrival rate whose point meets the SLO.

Each point is a full run (``run.run_verification``) under the same protocol except the rate, in
its own directory ``point-000``, ``point-001``, ... under a parent directory that also holds
``search.json``. The rates are chosen by pure decision logic (``next_rate``), separate from the
execution, so that it can be tested on hand-made point results:

    1. bracketing: LO first; while every point so far passed, the next rate is ``growth`` (2) x
       the highest so far, capped at HI. LO failing ends the search (capacity below LO); HI
       passing ends it (capacity at least HI);
    2. bisection: between the highest passing and the lowest failing rate, at their geometric
       mean (the resolution is relative), until lowest failing / highest passing - 1 <=
       ``tolerance`` or ``max_points`` points have run;
    3. a point that is not a measurement of the endpoint (the client's lag exceeded the error
       budget, ``measure.budget``; its self-test refused; or the run was interrupted) ends the
       search: what was found so far stands, and ``search.json`` says why it stopped.

A point passes (``judge``) when, for every SLO bound ``<metric>_pXX``, both hold:
    - the observed percentile in the summary (``<metric>_ms.pXX``, completed requests) is
      within the bound, and
    - the share of measured requests violating the bound, failed requests included (as
      ``metrics.summarize`` counts them), is at most 1 - XX/100.
The observed percentiles decide, as in vLLM's and guidellm's SLO sweeps: MLPerf early stopping
at 99% confidence cannot pass a p99 bound below 459 requests per point, so it would tie the
search's resolution to the point length rather than to the endpoint. Its verdict is reported
for every point and for the result (``early_stopping``), so a buyer can see whether the
capacity figure is also proven at 99% confidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inferaudit.audit.run import (
    RunObserver,
    RunOptions,
    RunOutcome,
    prepare_dir,
    run_verification,
    write_json,
)
from inferaudit.errors import ClientOverloadError, ConfigError
from inferaudit.measure import stats
from inferaudit.measure.budget import summary_lag_problem
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.rundir import SEARCH_FILE
from inferaudit.measure.summary import Summary

__all__ = [
    "SEARCH_FILE",
    "PointResult",
    "SearchOutcome",
    "SearchPlan",
    "execute_search",
    "judge",
    "next_rate",
    "search_result",
]

RATE_DIGITS = 3  # significant digits of the rates the search picks

DEFINITIONS = {
    "pass": (
        "Every SLO bound <metric>_pXX holds: the summary's observed pXX (completed requests) "
        "<= bound, and violating requests, failed ones included, are at most 1 - XX/100 of the "
        "measured requests. The client's lag must be within the protocol's error budget."
    ),
    "decided_by": (
        "Observed percentiles decide; the MLPerf early-stopping verdict (99% confidence) of each "
        "bound is reported beside them, not used to decide: it cannot pass a p99 bound below "
        "459 requests per point."
    ),
    "rates": (
        "Bracketing from LO by a factor of `growth` up to HI, then bisection at the geometric "
        "mean of the highest passing and lowest failing rate, 3 significant digits."
    ),
    "resolution": "lowest failing rate / highest passing rate - 1 (relative).",
    "capacity_output_tok_s": (
        "Measured output throughput (output tokens of completed requests / window) of the "
        "point at the highest passing rate: the figure to compare with a capacity claim."
    ),
}


@dataclass(frozen=True)
class SearchPlan:
    """The search range and when to stop."""

    lo: float
    hi: float
    tolerance: float = 0.05  # relative: stop when lowest fail / highest pass - 1 <= tolerance
    max_points: int = 8
    growth: float = 2.0  # bracketing factor

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi:
            raise ConfigError(
                f"--search rate={self.lo:g}:{self.hi:g}: need 0 < LO < HI (requests/s)"
            )
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"--search-tolerance {self.tolerance:g}: must be in (0, 1)")
        if self.max_points < 2:
            raise ConfigError(f"--search-max-points {self.max_points}: must be at least 2")
        if not self.growth > 1:
            raise ConfigError(f"search growth {self.growth:g}: must be > 1")

    @classmethod
    def parse(cls, text: str, tolerance: float = 0.05, max_points: int = 8) -> SearchPlan:
        """``rate=LO:HI`` (requests/s)."""
        num = r"(\d+(?:\.\d+)?)"
        m = re.fullmatch(rf"\s*rate\s*=\s*{num}\s*:\s*{num}\s*", text)
        if not m:
            raise ConfigError(f"--search {text}: expected rate=LO:HI, e.g. rate=1:64")
        return cls(float(m.group(1)), float(m.group(2)), tolerance, max_points)


@dataclass(frozen=True)
class PointResult:
    """One point of a search: its rate, its status, why, and the numbers behind it."""

    rate: float
    status: str  # "pass" | "fail" | "invalid" (not a measurement of the endpoint)
    reasons: tuple[str, ...] = ()
    failed_bounds: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    dir: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["failed_bounds"] = list(self.failed_bounds)
        data["metrics"] = dict(self.metrics)
        return data


def _fmt_ms(value: float) -> str:
    return f"{value:,.4g} ms"


def judge(
    rate: float,
    summary: Summary,
    *,
    spec: RunSpec,
    interrupted: bool = False,
) -> PointResult:
    """Pass, fail or invalid for one point's summary (see the module docstring): invalid when
    interrupted or when the client lag voids the point under ``spec`` (``measure.budget``)."""
    metrics: dict[str, Any] = {**summary.row().to_json(), "bounds": {}}
    if interrupted:
        return PointResult(rate, "invalid", ("interrupted",), metrics=metrics)
    lagged = summary_lag_problem(
        spec,
        summary.client_lag_ms.p99,
        (summary.ttft_ms.p50, summary.ttft_ms.p99),
        (summary.ttft_from_sent_ms.p50, summary.ttft_from_sent_ms.p99),
    )
    if lagged is not None:
        return PointResult(rate, "invalid", (lagged,), metrics=metrics)
    reasons = list(summary.invalid_reasons)
    failed_bounds: list[str] = []
    for key, entry in summary.slo.items():
        dist = summary.dist(entry.metric)
        observed = None if dist is None else dist.pct(key.partition("_")[2])
        n, violations, bound = entry.n, entry.violations, entry.bound_ms
        allowed = n * (1.0 - entry.percentile / 100.0)
        share_ok = violations <= allowed + 1e-9
        observed_ok = observed is not None and observed <= bound
        metrics["bounds"][key] = {
            "bound_ms": bound,
            "observed_ms": observed,
            "violations": violations,
            "n": n,
            "holds": observed_ok and share_ok,
            "early_stopping": entry.verdict,
        }
        if not observed_ok:
            failed_bounds.append(key)
            seen = "no completed request" if observed is None else _fmt_ms(observed)
            reasons.append(f"{key} {seen} > {_fmt_ms(bound)}")
        elif not share_ok:
            failed_bounds.append(key)
            reasons.append(
                f"{key}: {violations} of {n} requests violate (failures included), "
                f"more than {100 - entry.percentile:g}%"
            )
    if failed_bounds or reasons:
        return PointResult(rate, "fail", tuple(reasons), tuple(failed_bounds), metrics)
    return PointResult(rate, "pass", metrics=metrics)


def _between(lo: float, hi: float) -> float | None:
    """A rate strictly between ``lo`` and ``hi`` at their geometric mean, rounded; or None."""
    mid = math.sqrt(lo * hi)
    for digits in (RATE_DIGITS, 6):
        rounded = stats.round_sig(mid, digits)
        assert rounded is not None
        if lo < rounded < hi:
            return rounded
    return None


def _bracket(plan: SearchPlan, history: Sequence[PointResult]) -> tuple[float | None, float | None]:
    """(highest passing rate below the lowest failing one, lowest failing rate)."""
    fails = [p.rate for p in history if p.status == "fail"]
    low_fail = min(fails) if fails else None
    passes = [p.rate for p in history if p.passed and (low_fail is None or p.rate < low_fail)]
    return (max(passes) if passes else None), low_fail


def next_rate(plan: SearchPlan, history: Sequence[PointResult]) -> float | None:
    """The next rate to measure after ``history`` (in order run), or None when done."""
    if not history:
        return plan.lo
    if len(history) >= plan.max_points or any(p.status == "invalid" for p in history):
        return None
    high_pass, low_fail = _bracket(plan, history)
    if high_pass is None:
        return None  # the lowest rate tried fails: capacity is below it
    if low_fail is None:
        if high_pass >= plan.hi:
            return None  # capacity is at least HI
        grown = stats.round_sig(min(plan.hi, high_pass * plan.growth), 6)
        assert grown is not None
        return grown
    if low_fail / high_pass - 1 <= plan.tolerance:
        return None
    return _between(high_pass, low_fail)


def _why_stopped(plan: SearchPlan, history: Sequence[PointResult]) -> str:
    if not history:
        return "no point was run"
    invalid = [p for p in history if p.status == "invalid"]
    if invalid:
        why = "; ".join(invalid[0].reasons) or "invalid"
        return f"point at {invalid[0].rate:g} req/s is not a measurement: {why}"
    high_pass, low_fail = _bracket(plan, history)
    if high_pass is None:
        return f"the lowest rate tried ({low_fail:g} req/s) fails the SLO"
    if low_fail is None and high_pass >= plan.hi:
        return f"the highest rate of the range ({plan.hi:g} req/s) passes"
    if low_fail is not None and low_fail / high_pass - 1 <= plan.tolerance:
        return f"resolution {low_fail / high_pass - 1:.3g} <= tolerance {plan.tolerance:g}"
    if len(history) >= plan.max_points:
        return f"maximum of {plan.max_points} points reached"
    return "not finished"


def search_result(plan: SearchPlan, history: Sequence[PointResult]) -> dict[str, Any]:
    """The result: highest passing and lowest failing rate, resolution, why it stopped."""
    high_pass, low_fail = _bracket(plan, history)
    best = next((p for p in history if p.passed and p.rate == high_pass), None)
    worst = next((p for p in history if p.status == "fail" and p.rate == low_fail), None)
    relative = absolute = None
    if high_pass is not None and low_fail is not None:
        relative, absolute = low_fail / high_pass - 1, low_fail - high_pass
    result: dict[str, Any] = {
        "capacity_rps": high_pass,
        "capacity_output_tok_s": None,
        "capacity_request_throughput_rps": None,
        "capacity_goodput_tok_s": None,
        "capacity_dir": None,
        "early_stopping": None,
        "lowest_failing_rps": low_fail,
        "lowest_failing_bounds": [] if worst is None else list(worst.failed_bounds),
        "lowest_failing_reasons": [] if worst is None else list(worst.reasons),
        "lowest_failing_dir": None if worst is None else worst.dir,
        "resolution": {
            "relative": stats.round_sig(relative),
            "absolute_rps": stats.round_sig(absolute),
            "tolerance": plan.tolerance,
            "reached": relative is not None and relative <= plan.tolerance,
        },
        "below_range": high_pass is None and low_fail is not None,
        "above_range": low_fail is None and high_pass is not None and high_pass >= plan.hi,
        "points": len(history),
        "stopped": _why_stopped(plan, history),
        "decided_by": "observed percentiles",
    }
    if best is not None:
        bounds = best.metrics.get("bounds") or {}
        result.update(
            capacity_output_tok_s=best.metrics.get("output_throughput_tok_s"),
            capacity_request_throughput_rps=best.metrics.get("request_throughput_rps"),
            capacity_goodput_tok_s=best.metrics.get("goodput_tok_s"),
            capacity_dir=best.dir,
            early_stopping={k: b["early_stopping"] for k, b in bounds.items()},
        )
    return result


def result_line(result: Mapping[str, Any]) -> str:
    """``capacity under SLO: 12.4 req/s (1,587 output tok/s); 13.1 req/s fails ttft_p99``."""
    low_fail = result.get("lowest_failing_rps")
    fails = ""
    if low_fail is not None:
        which = ", ".join(result.get("lowest_failing_bounds") or []) or "the SLO"
        fails = f"; {low_fail:g} req/s fails {which}"
    rate = result.get("capacity_rps")
    if rate is None:
        if low_fail is None:
            return "capacity under SLO: not found (no point measured the endpoint)"
        return f"capacity under SLO: below the search range{fails}"
    tok = result.get("capacity_output_tok_s")
    tok_text = "n/a" if tok is None else f"{tok:,.0f}"
    above = (
        " (the top of the search range; capacity may be higher)"
        if result.get("above_range")
        else ""
    )
    return f"capacity under SLO: {rate:g} req/s ({tok_text} output tok/s){above}{fails}"


@dataclass
class SearchOutcome:
    parent: Path
    points: list[PointResult]
    outcomes: list[RunOutcome]
    result: dict[str, Any]
    interrupted: bool = False


def search_json(plan: SearchPlan, spec: RunSpec, history: Sequence[PointResult]) -> dict[str, Any]:
    return {
        "search": {
            "parameter": "rate",
            "lo": plan.lo,
            "hi": plan.hi,
            "tolerance": plan.tolerance,
            "max_points": plan.max_points,
            "growth": plan.growth,
            "arrivals": spec.load.arrivals.value,
            "slo_ms": dict(spec.slo.bounds_ms),
            "definitions": dict(DEFINITIONS),
        },
        "points": [p.to_json() for p in history],
        "result": search_result(plan, history),
    }


def execute_search(
    spec: RunSpec,
    parent: Path,
    plan: SearchPlan,
    options: RunOptions = RunOptions(),
    observer: RunObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_point: Callable[[PointResult], None] | None = None,
) -> SearchOutcome:
    """Run the search's points under ``spec`` (its rate replaced) into ``parent``."""
    if not spec.slo.bounds_ms:
        raise ConfigError("--search needs --slo, e.g. --slo ttft_p99=2000ms,tpot_p99=100ms")
    if spec.load.rate is None:
        raise ConfigError("--search rate=LO:HI is open loop; drop --concurrency")
    prepare_dir(parent)
    history: list[PointResult] = []
    outcomes: list[RunOutcome] = []
    interrupted = False
    while (rate := next_rate(plan, history)) is not None:
        point_spec = spec.model_copy(update={"load": spec.load.model_copy(update={"rate": rate})})
        name = f"point-{len(history):03d}"
        try:
            outcome = run_verification(point_spec, parent / name, options, observer, should_stop)
        except ClientOverloadError as exc:
            point = PointResult(rate, "invalid", (exc.diagnostics(),), dir=name)
        else:
            outcomes.append(outcome)
            interrupted = outcome.interrupted
            point = judge(rate, outcome.summary, spec=point_spec, interrupted=interrupted)
            point = PointResult(
                point.rate, point.status, point.reasons, point.failed_bounds, point.metrics, name
            )
        history.append(point)
        write_json(parent / SEARCH_FILE, search_json(plan, spec, history))
        if on_point is not None:
            on_point(point)
        if interrupted:
            break
    result = search_result(plan, history)
    return SearchOutcome(parent, history, outcomes, result, interrupted)
