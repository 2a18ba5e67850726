"""The Summary of one measurement point as a frozen typed model (contract C1).

``metrics.summarize(records, spec)`` builds it; ``Summary.to_json()`` is the ``summary.json``
object, byte for byte what v0.1 wrote for the same records and protocol (same keys, order and
values), so v1 evidence keeps verifying. ``Summary.from_json`` parses a stored summary: the v1
form (its ``checks`` are verdicts, not metrics, and are left out: read them from the evidence),
the ``error_budget`` block that budget-ruled protocols add, and the ``token_credit`` block of a
v2 protocol (its ``output_tokens`` are the proven ones; the block holds the usage-based count).

``Summary.row()`` is the one flat projection (sweep.json rows, search points, the sweep table).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferaudit.errors import DataError, validation_message
from inferaudit.measure.telemetry.figures import Reported

__all__ = [
    "ArrivalRate",
    "BudgetBlock",
    "Dist",
    "FigureMove",
    "Lag",
    "SloBound",
    "Summary",
    "SummaryRow",
    "ThroughputCI",
    "TokenCredit",
    "TokenSources",
    "TurnStats",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Dist(_Frozen):
    """``stats.distribution``: n, mean, percentiles and max in ms (nulls when n == 0)."""

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    p99_9: float | None = Field(alias="p99.9")
    max: float | None

    def pct(self, name: str) -> float | None:
        """The value named ``p50``, ``p99.9``, ``mean``, ... (None for an unknown name)."""
        value = self.model_dump(by_alias=True).get(name)
        return value if isinstance(value, float) else None


class TokenSources(_Frozen):
    usage: int | None
    content_chunks: int
    requests_with_usage: int
    requests_without_usage: int
    usage_equals_chunks: int
    usage_above_chunks: int
    usage_below_chunks: int
    throughput_uses: str


class TokenCredit(_Frozen):
    """What a v2 summary credits (``output_tokens``: proven) and the usage-based count beside it
    (absent from v1 summaries, which credit usage)."""

    credited: str  # the per-request rule of the credited count
    usage_based_tokens: int  # per request usage when reported, else content events
    usage_based_throughput_tok_s: float | None  # over the same window
    requests_usage_above_proven: int  # completed requests whose usage exceeds what is proven
    uncredited_tokens: int  # usage_based_tokens - output_tokens (>= 0)


class ThroughputCI(_Frozen):
    method: str
    confidence: float
    subwindows: int | None
    mean: float | None
    low: float | None
    high: float | None


class ArrivalRate(_Frozen):
    requested_rps: float | None
    scheduled_rps: float | None
    achieved_rps: float | None


class SloBound(_Frozen):
    metric: str
    percentile: float
    bound_ms: float
    n: int
    violations: int
    verdict: str
    confidence: float
    min_requests_zero_violations: int
    min_requests_for_estimate: int
    additional_requests_needed: int | None
    estimate_ms: float | None


class Lag(_Frozen):
    p50: float | None
    p99: float | None
    max: float | None


class FigureMove(_Frozen):
    """How far the client's send lag moved one reported figure (``budget.figure_shifts``)."""

    figure: str  # "ttft_p50" | "ttft_p99"
    figure_ms: float  # as reported, from the scheduled send
    moved_ms: float  # reported minus the same figure from the actual send
    allowed_ms: float  # max(share x figure, floor_ms)


class BudgetBlock(_Frozen):
    """The error budget as this run applied it (absent for a fixed ``max_client_lag_p99_ms``)."""

    share: float
    floor_ms: float
    figures: tuple[FigureMove, ...]
    lag_p99_ms: float | None
    within: bool


class TurnStats(_Frozen):
    """One turn index of a multi-turn run (``Summary.turns``)."""

    turn: int
    requests: int
    completed: int
    output_tokens: int
    ttft_ms: Dist
    tpot_ms: Dist
    e2e_ms: Dist


class SummaryRow(_Frozen):
    """The flat projection of a Summary: one sweep/search row, one line of the sweep table."""

    load: str
    requests: int
    completed: int
    failed: int
    achieved_rps: float | None
    request_throughput_rps: float | None
    output_throughput_tok_s: float | None
    goodput_rps: float | None
    goodput_tok_s: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    itl_p99_ms: float | None
    e2e_p99_ms: float | None
    client_lag_p99_ms: float | None
    valid: bool

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Summary(_Frozen):
    """What ``metrics.summarize`` computes (see its ``DEFINITIONS`` for each field)."""

    load: str
    requests: int
    completed: int
    failed: int
    excluded: dict[str, int]
    duration_s: float | None
    output_tokens: int
    output_tokens_by_source: TokenSources
    token_credit: TokenCredit | None = None  # v2 protocols only (not in v1)
    request_throughput_rps: float | None
    output_throughput_tok_s: float | None
    output_throughput_ci: ThroughputCI
    arrival_rate: ArrivalRate
    ttft_ms: Dist
    ttft_from_sent_ms: Dist
    tpot_ms: Dist
    itl_ms: Dist
    e2e_ms: Dist
    goodput_rps: float | None
    goodput_tok_s: float | None
    goodput_requests: int | None
    slo: dict[str, SloBound]
    client_lag_ms: Lag
    error_budget: BudgetBlock | None = None  # only for budget-ruled protocols (not in v1)
    errors: dict[str, int]
    empty_chunks_before_content: int
    requests_with_empty_chunks_before_content: int
    valid: bool
    invalid_reasons: tuple[str, ...]
    definitions: dict[str, str]
    # Only where the protocol has them: a concurrency cap on an open loop, multi-turn sessions.
    slot_wait_ms: Dist | None = None
    turns: tuple[TurnStats, ...] | None = None
    # What the operator's telemetry agent reported over the window (never a measured figure).
    reported: Reported | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object (v1: byte for byte what v0.1 wrote)."""
        data = self.model_dump(mode="json", by_alias=True)
        for optional in ("token_credit", "error_budget", "slot_wait_ms", "turns", "reported"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, obj: object) -> Summary:
        """Parse a stored summary (v1 with ``checks``, or a newer form); DataError if not one."""
        if not isinstance(obj, dict):
            raise DataError("summary: expected a JSON object")
        fields = {k: v for k, v in obj.items() if k != "checks"}
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise DataError(f"summary: {validation_message(exc)}") from None

    def dist(self, metric: str) -> Dist | None:
        """The distribution of ``ttft``, ``ttft_from_sent``, ``tpot``, ``itl`` or ``e2e``."""
        value = getattr(self, f"{metric}_ms", None)
        return value if isinstance(value, Dist) else None

    def row(self) -> SummaryRow:
        """The flat projection used by sweep.json, search points and the sweep table."""
        return SummaryRow(
            load=self.load,
            requests=self.requests,
            completed=self.completed,
            failed=self.failed,
            achieved_rps=self.arrival_rate.achieved_rps,
            request_throughput_rps=self.request_throughput_rps,
            output_throughput_tok_s=self.output_throughput_tok_s,
            goodput_rps=self.goodput_rps,
            goodput_tok_s=self.goodput_tok_s,
            ttft_p50_ms=self.ttft_ms.p50,
            ttft_p99_ms=self.ttft_ms.p99,
            tpot_p50_ms=self.tpot_ms.p50,
            tpot_p99_ms=self.tpot_ms.p99,
            itl_p99_ms=self.itl_ms.p99,
            e2e_p99_ms=self.e2e_ms.p99,
            client_lag_p99_ms=self.client_lag_ms.p99,
            valid=self.valid,
        )
