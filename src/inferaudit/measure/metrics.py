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

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from inferaudit.errors import RecordError
from inferaudit.measure import stats
from inferaudit.measure.budget import figure_shifts, summary_lag_problem
from inferaudit.measure.columns import NS_PER_MS, NS_PER_S, Columns, RequestTimes, dist_ns, rate
from inferaudit.measure.definitions import CREDIT_BASIS, DEFINITIONS, USAGE_BASIS, definitions
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.scrapes import TelemetrySample
from inferaudit.measure.summary import BudgetBlock, FigureMove, Summary, TokenCredit
from inferaudit.measure.telemetry.figures import reported_figures

__all__ = [
    "CREDIT_BASIS",
    "DEFINITIONS",
    "MEASURE_PHASE",
    "USAGE_BASIS",
    "Records",
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


Records = Sequence[Record] | Path  # read twice at most: a list, or a records file (streamed)


def _measured(records: Records) -> Iterator[Record]:
    source = iter_records(records) if isinstance(records, Path) else iter(records)
    return (r for r in source if r.phase == MEASURE_PHASE)


def _itl_batches(records: Records) -> Iterator[np.ndarray]:
    """The ITL samples of the completed measured requests again, in batches (a later pass)."""
    batch: list[float] = []
    for r in _measured(records):
        if r.ok:
            batch.extend(itl_samples_ms(r))
            if len(batch) >= 65_536:
                yield np.array(batch, dtype=np.float64)
                batch = []
    if batch:
        yield np.array(batch, dtype=np.float64)


def summarize(
    records: Records,
    spec: RunSpec,
    telemetry: Sequence[TelemetrySample] | None = None,
) -> Summary:
    """The summary of one measurement point: pure, deterministic, JSON-ready (see module doc).

    ``records``: a list, or the path of a ``records.jsonl``, read as a stream: the summary keeps
    compact per-request numbers (``measure.columns``), never the records; a run whose ITL
    samples exceed what the columns keep is read a second time (exact percentiles).
    ``telemetry``: the run's operator-reported device samples (``telemetry.jsonl``), which add
    the ``reported`` block; they never change a measured figure."""
    bounds = dict(spec.slo.bounds_ms)
    itl_pcts = sorted({float(k.partition("_")[2][1:]) for k in bounds if k.startswith("itl_")})
    cols = Columns(itl_slo_pcts=tuple(itl_pcts), turns=spec.workload.sessions is not None)
    excluded: Counter[str] = Counter()
    source = iter_records(records) if isinstance(records, Path) else iter(records)
    for r in source:
        if r.phase != MEASURE_PHASE:
            excluded[r.phase] += 1
            continue
        t = request_times(r)
        cols.add(r, t, t.credited_tokens(spec))
    cols.flush_itl()
    n = cols.n
    completed = int(cols.ok_mask().sum())
    ok = cols.ok_mask()

    start, end, span = cols.span()
    proven = spec.credits_proven
    output_tokens = cols.credited_sum

    slo, meets_all = cols.slo(bounds)
    good = int(meets_all.sum())

    ttft_from_sent = dist_ns(cols.defined(cols.ttft_sent, ok))
    lag = cols.lag_ms()
    reasons: list[str] = []
    if n == 0:
        reasons.append("no measured requests")
    elif completed == 0:
        reasons.append("no measured request completed")
    ttft = dist_ns(cols.defined(cols.ttft, ok))
    lag_p99 = lag["p99"]
    # what the send lag moved: TTFT from when each request was due (its scheduled time, or its
    # slot under max_concurrency: a slot wait is the protocol's) against TTFT from its send
    due = dist_ns(cols.defined(cols.ttft_due, ok)) if spec.load.max_concurrency else ttft
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

    credit = None
    if proven:
        usage_based = cols.usage_based
        credit = TokenCredit(
            credited=CREDIT_BASIS,
            usage_based_tokens=usage_based,
            usage_based_throughput_tok_s=rate(usage_based, span),
            requests_usage_above_proven=cols.usage_above_proven,
            uncredited_tokens=usage_based - output_tokens,
        )
    tpot = cols.arr(cols.tpot, np.float64)
    good_tokens = int(cols.arr(cols.credited, np.int64)[meets_all].sum())
    return Summary.model_validate(
        {
            "load": spec.load.label(),
            "requests": n,
            "completed": completed,
            "failed": n - completed,
            "excluded": dict(sorted(excluded.items())),
            "duration_s": None if span is None else stats.round_sig(span / NS_PER_S),
            "output_tokens": output_tokens,
            "output_tokens_by_source": {
                "usage": cols.usage_sum if cols.with_usage else None,
                "content_chunks": cols.chunks_sum,
                "requests_with_usage": cols.with_usage,
                "requests_without_usage": completed - cols.with_usage,
                "usage_equals_chunks": cols.usage_equals,
                "usage_above_chunks": cols.usage_above,
                "usage_below_chunks": cols.usage_below,
                "throughput_uses": CREDIT_BASIS if proven else USAGE_BASIS,
            },
            "token_credit": credit,
            "request_throughput_rps": rate(completed, span),
            "output_throughput_tok_s": rate(output_tokens, span),
            "output_throughput_ci": cols.throughput_ci(start or 0, span),
            "arrival_rate": {
                "requested_rps": spec.load.rate,
                "scheduled_rps": cols.scheduled_rps(),
                "achieved_rps": cols.achieved_rps(),
            },
            "ttft_ms": ttft,
            "ttft_from_sent_ms": ttft_from_sent,
            "tpot_ms": stats.distribution_array(tpot[ok & ~np.isnan(tpot)]),
            "itl_ms": cols.itl.result(lambda: _itl_batches(records)),
            "e2e_ms": dist_ns(cols.defined(cols.e2e, ok)),
            "goodput_rps": rate(good, span) if bounds else None,
            "goodput_tok_s": rate(good_tokens, span) if bounds else None,
            "goodput_requests": good if bounds else None,
            "slo": slo,
            "client_lag_ms": lag,
            "error_budget": budget_block,
            "errors": dict(sorted(cols.errors.items())),
            "empty_chunks_before_content": cols.empty_chunks,
            "requests_with_empty_chunks_before_content": cols.requests_with_empty_chunks,
            "valid": not reasons,
            "invalid_reasons": tuple(reasons),
            "definitions": definitions(spec),
            "slot_wait_ms": (
                dist_ns(cols.defined(cols.slot_wait, np.ones(n, dtype=bool)))
                if spec.load.max_concurrency
                else None
            ),
            "turns": cols.turn_stats() if spec.workload.sessions else None,
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
