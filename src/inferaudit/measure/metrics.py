"""Records -> summary: the metrics of one measurement point, as a pure function.

``summarize(records, spec)`` is what ``inferaudit run`` writes to ``summary.json`` and what
``inferaudit verify`` recomputes and compares for equality, so it is deterministic: the result
does not depend on record order, integers stay integers, every computed float is rounded to 6
significant digits (``stats.round_sig``), and a JSON round trip gives back the same object.

Only records with ``phase == "measure"`` count. The definitions follow vLLM ``bench serve`` and
MLPerf LoadGen and are stated next to the numbers, in the summary's ``definitions``
(``measure.definitions``).

Credited output tokens (issue 8, "credit only what is verified"). A v2 protocol's summary credits
per request the tokens the stream proves (``proven_tokens``: its content events, capped by
``usage`` when the server reports fewer) and shows the usage-based count beside them
(``token_credit``); throughput, its confidence interval and goodput tokens use the proven count.
A v1 protocol's summary credits ``usage`` (else the content events), exactly as v0.1 did.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inferaudit.errors import RecordError
from inferaudit.measure import stats
from inferaudit.measure.budget import figure_shifts, summary_lag_problem
from inferaudit.measure.definitions import CREDIT_BASIS, DEFINITIONS, USAGE_BASIS, definitions
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.scrapes import TelemetrySample
from inferaudit.measure.summary import BudgetBlock, FigureMove, Summary, TokenCredit
from inferaudit.measure.telemetry.figures import reported_figures

__all__ = [
    "CREDIT_BASIS",
    "DEFINITIONS",
    "MEASURE_PHASE",
    "USAGE_BASIS",
    "RequestTimes",
    "TokenCounter",
    "definitions",
    "itl_samples_ms",
    "proven_tokens",
    "request_times",
    "summarize",
    "tokens_per_chunk",
]

MEASURE_PHASE = "measure"
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
CI_MAX_SUBWINDOWS = 10
CI_MIN_REQUESTS_PER_SUBWINDOW = 5


class TokenCounter(Protocol):
    """What ``proven_tokens`` needs of a tokenizer (``measure.tokenizer.Tokenizer`` has it)."""

    def count(self, text: str) -> int: ...


def proven_tokens(record: Record, tokenizer: TokenCounter | None = None) -> int:
    """The output tokens the stream itself proves were delivered: the credit-worthy count.

    The one definition (``judge.counting.proven_tokens`` calls it). The content events, each
    carrying at least one token; with a tokenizer, the larger of the events and the re-tokenized
    count of the kept text (re-tokenization only merges generated tokens, so it cannot overstate
    them; a text cut by ``max_text_bytes`` only counts fewer); capped by ``usage`` when the
    server reports fewer (it has no reason to under-report).
    """
    proven = record.content_chunks
    if tokenizer is not None and record.output_text is not None:
        proven = max(proven, tokenizer.count(record.output_text))
    if record.usage_completion_tokens is not None:
        proven = min(proven, record.usage_completion_tokens)
    return proven


@dataclass(frozen=True)
class RequestTimes:
    """Per-request values of one record, as the summary defines them (times in ns, unrounded).

    ``request_times(record)`` is the one place TTFT, E2E, TPOT and ITL of a record are derived;
    the summary, the report and anything else that needs per-request values use it. Undefined
    values are None (a failed request has no TTFT; a 1-token reply has no TPOT).
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


def tokens_per_chunk(record: Record) -> list[int]:
    """Tokens attributed to each content chunk of ``record`` (see ``tokens_per_chunk`` def)."""
    m = len(record.chunk_ns)
    usage = record.usage_completion_tokens
    if m and usage is not None and usage > m:
        return stats.allocate(usage, record.chunk_chars)
    return [1] * m


def itl_samples_ms(record: Record) -> list[float]:
    """ITL samples of one record in ms: each gap spread evenly over its chunk's tokens."""
    times = record.chunk_ns
    tokens = tokens_per_chunk(record)
    out: list[float] = []
    for i in range(1, len(times)):
        gap = times[i] - times[i - 1]
        k = tokens[i]
        out.extend([gap / (k * NS_PER_MS)] * k)
    return out


def _check(record: Record) -> None:
    if len(record.chunk_ns) != len(record.chunk_chars):
        raise RecordError(
            f"record {record.id}: chunk_ns has {len(record.chunk_ns)} entries but chunk_chars "
            f"has {len(record.chunk_chars)}"
        )
    if record.chunk_ns and len(record.chunk_ns) != record.content_chunks:
        raise RecordError(
            f"record {record.id}: content_chunks is {record.content_chunks} but "
            f"{len(record.chunk_ns)} chunk times were recorded"
        )
    if any(b < a for a, b in zip(record.chunk_ns, record.chunk_ns[1:], strict=False)):
        raise RecordError(f"record {record.id}: chunk times go backwards")
    if any(c < 0 for c in record.chunk_chars):
        raise RecordError(f"record {record.id}: negative chunk_chars")
    if record.usage_completion_tokens is not None and record.usage_completion_tokens < 0:
        raise RecordError(f"record {record.id}: negative usage_completion_tokens")


def request_times(record: Record) -> RequestTimes:
    """TTFT, E2E, TPOT and ITL of one record (see ``DEFINITIONS``); RecordError if inconsistent."""
    _check(record)
    tokens = record.output_tokens
    proven = proven_tokens(record)
    if not record.ok:
        return RequestTimes(ok=False, output_tokens=tokens, proven_tokens=proven)
    first, done = record.first_content_ns, record.done_ns
    tpot = None
    if first is not None and done is not None and tokens > 1:
        tpot = (done - first) / ((tokens - 1) * NS_PER_MS)
    return RequestTimes(
        ok=True,
        output_tokens=tokens,
        proven_tokens=proven,
        ttft_ns=None if first is None else first - record.scheduled_ns,
        ttft_sent_ns=None if first is None or record.sent_ns is None else first - record.sent_ns,
        ttft_due_ns=None if first is None else first - record.scheduled_ns - record.slot_wait_ns,
        e2e_ns=None if done is None else done - record.scheduled_ns,
        tpot_ms=tpot,
        itl_ms=tuple(itl_samples_ms(record)),
    )


def _opt(x: float | int | None) -> float | None:
    return None if x is None else float(x)


def _round(x: float) -> float:
    rounded = stats.round_sig(x)
    assert rounded is not None, f"{x} is finite"
    return rounded


def _ms(ns: int) -> float:
    return ns / NS_PER_MS


def _slo_value(req: RequestTimes, metric: str, pct: float) -> float | None:
    """The request's own value for an SLO metric in ms; None when undefined for it."""
    if metric == "ttft":
        return None if req.ttft_ns is None else _ms(req.ttft_ns)
    if metric == "e2e":
        return None if req.e2e_ns is None else _ms(req.e2e_ns)
    if metric == "tpot":
        return req.tpot_ms
    assert metric == "itl", f"unknown SLO metric {metric}"
    return stats.percentile(sorted(req.itl_ms), pct) if req.itl_ms else None


def _slo(
    requests: list[RequestTimes], bounds: dict[str, float]
) -> tuple[dict[str, Any], list[bool]]:
    """Early-stopping verdict per bound, and per request whether it met every bound."""
    meets_all = [r.ok for r in requests]
    out: dict[str, Any] = {}
    for key in sorted(bounds):
        bound = bounds[key]
        metric, _, pct_name = key.partition("_")
        pct = float(pct_name[1:])
        ranked: list[float] = []  # failed -> +inf, undefined -> -inf (meets any bound)
        violations = 0
        for i, req in enumerate(requests):
            if not req.ok:
                ranked.append(math.inf)
                violations += 1
                continue
            value = _slo_value(req, metric, pct)
            ranked.append(-math.inf if value is None else value)
            if value is not None and value > bound:
                violations += 1
                meets_all[i] = False
        ranked.sort()
        n = len(requests)
        es = stats.early_stopping(n, violations, pct / 100.0)
        estimate = None
        if es.estimate_rank is not None:
            estimate = stats.round_sig(ranked[n - es.estimate_rank])
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


def _rate(count: int, span_ns: int | None) -> float | None:
    if span_ns is None or span_ns <= 0:
        return None
    return stats.round_sig(count * NS_PER_S / span_ns)


def _span_rate(times: list[int]) -> float | None:
    """(n - 1) events over the span of their times, per second."""
    if len(times) < 2:
        return None
    return _rate(len(times) - 1, max(times) - min(times))


def _throughput_ci(
    done_tokens: list[tuple[int, int]], start: int, span_ns: int | None
) -> dict[str, Any]:
    """t-interval of output tokens/s over equal sub-windows; tokens counted at done time."""
    k = min(CI_MAX_SUBWINDOWS, len(done_tokens) // CI_MIN_REQUESTS_PER_SUBWINDOW)
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
    tokens = [0] * k
    for done, n_tok in done_tokens:
        tokens[min(k - 1, (done - start) * k // span_ns)] += n_tok
    rates = [t * k * NS_PER_S / span_ns for t in tokens]
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


def _lag(records: list[Record]) -> dict[str, float | None]:
    lags = sorted(_ms(r.lag_ns) for r in records if r.lag_ns is not None)
    if not lags:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": stats.round_sig(stats.percentile(lags, 50.0)),
        "p99": stats.round_sig(stats.percentile(lags, 99.0)),
        "max": stats.round_sig(lags[-1]),
    }


def _token_sources(records: list[Record], proven: bool) -> dict[str, Any]:
    """Output tokens of completed requests counted from usage and from content chunks."""
    done = [r for r in records if r.ok]
    with_usage = [r for r in done if r.usage_completion_tokens is not None]
    usage_sum = sum(r.usage_completion_tokens or 0 for r in with_usage)
    return {
        "usage": usage_sum if with_usage else None,
        "content_chunks": sum(r.content_chunks for r in done),
        "requests_with_usage": len(with_usage),
        "requests_without_usage": len(done) - len(with_usage),
        "usage_equals_chunks": sum(
            1 for r in with_usage if r.usage_completion_tokens == r.content_chunks
        ),
        "usage_above_chunks": sum(
            1 for r in with_usage if (r.usage_completion_tokens or 0) > r.content_chunks
        ),
        "usage_below_chunks": sum(
            1 for r in with_usage if (r.usage_completion_tokens or 0) < r.content_chunks
        ),
        "throughput_uses": CREDIT_BASIS if proven else USAGE_BASIS,
    }


def summarize(
    records: Sequence[Record],
    spec: RunSpec,
    telemetry: Sequence[TelemetrySample] | None = None,
) -> Summary:
    """The summary of one measurement point: pure, deterministic, JSON-ready (see module doc).
    ``telemetry``: the run's operator-reported device samples (``telemetry.jsonl``), which add
    the ``reported`` block; they never change a measured figure."""
    measured = sorted(
        (r for r in records if r.phase == MEASURE_PHASE),
        key=lambda r: (r.id, r.worker, r.scheduled_ns),
    )
    excluded = Counter(r.phase for r in records if r.phase != MEASURE_PHASE)
    derived = [request_times(r) for r in measured]
    done_reqs = [d for d in derived if d.ok]
    n, completed = len(measured), len(done_reqs)

    start = min((r.scheduled_ns for r in measured), default=None)
    end = max((r.done_ns for r in measured if r.done_ns is not None), default=None)
    span = None if start is None or end is None else end - start
    proven = spec.credits_proven
    output_tokens = sum(d.credited_tokens(spec) for d in done_reqs)

    bounds = dict(spec.slo.bounds_ms)
    slo, meets_all = _slo(derived, bounds)
    good = [d for d, ok in zip(derived, meets_all, strict=True) if ok]

    ttft_from_sent = _dist_ns([d.ttft_sent_ns for d in done_reqs])
    lag = _lag(measured)
    reasons: list[str] = []
    if n == 0:
        reasons.append("no measured requests")
    elif completed == 0:
        reasons.append("no measured request completed")
    ttft = _dist_ns([d.ttft_ns for d in done_reqs])
    lag_p99 = lag["p99"]
    # what the send lag moved: TTFT from when each request was due (its scheduled time, or its
    # slot under max_concurrency: a slot wait is the protocol's) against TTFT from its send
    due = _dist_ns([d.ttft_due_ns for d in done_reqs]) if spec.load.max_concurrency else ttft
    pair = (_opt(due["p50"]), _opt(due["p99"]))
    pair_sent = (_opt(ttft_from_sent["p50"]), _opt(ttft_from_sent["p99"]))
    problem = summary_lag_problem(spec, lag_p99, pair, pair_sent)
    if problem is not None:
        reasons.append(problem)
    budget_block = None
    if spec.max_client_lag_p99_ms is None:
        budget = spec.error_budget
        budget_block = BudgetBlock(
            share=budget.share,
            floor_ms=budget.floor_ms,
            figures=tuple(
                FigureMove(
                    figure=f.name,
                    figure_ms=_round(f.figure_ms),
                    moved_ms=_round(f.shift_ms),
                    allowed_ms=_round(f.allowed_ms),
                )
                for f in figure_shifts(budget, pair, pair_sent)
            ),
            lag_p99_ms=lag_p99,
            within=lag_p99 is not None and problem is None,
        )

    done_tokens = [
        (r.done_ns, d.credited_tokens(spec))
        for r, d in zip(measured, derived, strict=True)
        if d.ok and r.done_ns is not None
    ]
    credit = None
    if proven:
        usage_based = sum(d.output_tokens for d in done_reqs)
        credit = TokenCredit(
            credited=CREDIT_BASIS,
            usage_based_tokens=usage_based,
            usage_based_throughput_tok_s=_rate(usage_based, span),
            requests_usage_above_proven=sum(
                1 for d in done_reqs if d.output_tokens > d.proven_tokens
            ),
            uncredited_tokens=usage_based - output_tokens,
        )
    return Summary.model_validate(
        {
            "load": spec.load.label(),
            "requests": n,
            "completed": completed,
            "failed": n - completed,
            "excluded": dict(sorted(excluded.items())),
            "duration_s": None if span is None else stats.round_sig(span / NS_PER_S),
            "output_tokens": output_tokens,
            "output_tokens_by_source": _token_sources(measured, proven),
            "token_credit": credit,
            "request_throughput_rps": _rate(completed, span),
            "output_throughput_tok_s": _rate(output_tokens, span),
            "output_throughput_ci": _throughput_ci(done_tokens, start or 0, span),
            "arrival_rate": {
                "requested_rps": spec.load.rate,
                "scheduled_rps": _span_rate([r.scheduled_ns for r in measured]),
                "achieved_rps": _span_rate(
                    [r.sent_ns for r in measured if r.sent_ns is not None]
                ),
            },
            "ttft_ms": ttft,
            "ttft_from_sent_ms": ttft_from_sent,
            "tpot_ms": stats.distribution(
                [d.tpot_ms for d in done_reqs if d.tpot_ms is not None]
            ),
            "itl_ms": stats.distribution([x for d in done_reqs for x in d.itl_ms]),
            "e2e_ms": _dist_ns([d.e2e_ns for d in done_reqs]),
            "goodput_rps": _rate(len(good), span) if bounds else None,
            "goodput_tok_s": (
                _rate(sum(d.credited_tokens(spec) for d in good), span) if bounds else None
            ),
            "goodput_requests": len(good) if bounds else None,
            "slo": slo,
            "client_lag_ms": lag,
            "error_budget": budget_block,
            "errors": dict(sorted(Counter(r.error_class for r in measured if not r.ok).items())),
            "empty_chunks_before_content": sum(r.empty_chunks_before_content for r in measured),
            "requests_with_empty_chunks_before_content": sum(
                1 for r in measured if r.empty_chunks_before_content > 0
            ),
            "valid": not reasons,
            "invalid_reasons": tuple(reasons),
            "definitions": definitions(spec),
            "slot_wait_ms": (
                _dist_ns([r.slot_wait_ns for r in measured if r.sent_ns is not None])
                if spec.load.max_concurrency
                else None
            ),
            "turns": _turns(measured, derived, spec) if spec.workload.sessions else None,
            "reported": (
                None
                if not telemetry or start is None or end is None
                else reported_figures(
                    [(t.t_ns, d) for t in telemetry if t.ok for d in t.devices],
                    (start, end),
                    output_tokens,
                )
            ),
        }
    )


def _turns(
    measured: Sequence[Record], derived: Sequence[RequestTimes], spec: RunSpec
) -> list[dict[str, Any]]:
    """Per turn index of a multi-turn run: requests, completions, credited tokens, TTFT, TPOT
    and E2E (each as the overall figures define them, over that turn's requests)."""
    by_turn: dict[int, list[RequestTimes]] = {}
    for r, d in zip(measured, derived, strict=True):
        by_turn.setdefault(r.turn or 0, []).append(d)
    out = []
    for turn, group in sorted(by_turn.items()):
        ok = [d for d in group if d.ok]
        out.append(
            {
                "turn": turn,
                "requests": len(group),
                "completed": len(ok),
                "output_tokens": sum(d.credited_tokens(spec) for d in ok),
                "ttft_ms": _dist_ns([d.ttft_ns for d in ok]),
                "tpot_ms": stats.distribution([d.tpot_ms for d in ok if d.tpot_ms is not None]),
                "e2e_ms": _dist_ns([d.e2e_ns for d in ok]),
            }
        )
    return out


def _dist_ns(values: Sequence[int | None]) -> dict[str, float | int | None]:
    """``stats.distribution`` in ms of the values that are not None (ns)."""
    return stats.distribution([_ms(v) for v in values if v is not None])
