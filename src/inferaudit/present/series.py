"""Per-run views: what the page shows of one verified run (its numbers, its verdicts, its charts).

Per-request values come from ``measure.metrics.request_times`` (the summary's own definitions:
TTFT and E2E from the scheduled send; output tokens as the run's summary credits them, the
tokens the stream proves for a v2 protocol, usage else content chunks for v1), over the measured
phase of the run's ``records.jsonl`` — a file the run's verification bound by
digest — read once, streamed, into columns (:class:`RequestSeries`): a page's memory is bounded
by the run's request count times a few numbers, never by the records. Nothing here re-derives a
metric by hand.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from inferaudit.intent.reconcile import run_label
from inferaudit.measure.metrics import MEASURE_PHASE, request_times
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, iter_records
from inferaudit.measure.rundir import RECORDS_FILE
from inferaudit.present.charts import Series, fmt_measure, line_chart
from inferaudit.seal.verified import VerifiedRun

MAX_CDF_POINTS = 400


def cdf(values: Sequence[float] | np.ndarray) -> tuple[list[float], list[float]]:
    """Empirical CDF points (value, share of values <= it), at most 400 points."""
    xs = np.sort(np.asarray(values, dtype=np.float64))
    n = len(xs)
    if n == 0:
        return [], []
    stride = max(1, n // MAX_CDF_POINTS)
    idx = sorted({*range(0, n, stride), n - 1})
    return [float(xs[i]) for i in idx], [(i + 1) / n for i in idx]


@dataclass(frozen=True)
class RequestSeries:
    """The per-request numbers the charts need of a run's measured requests, as columns (8
    bytes a value): the records themselves are read once, streamed, and never held."""

    start_ns: int | None  # the earliest scheduled send (None: no measured request)
    ttft_ms: np.ndarray  # completed requests with a first content chunk
    e2e_ms: np.ndarray  # completed requests with a done time
    done_ns: np.ndarray  # completed requests with a done time: when ...
    tokens: np.ndarray  # ... and how many output tokens the summary credits them

    @classmethod
    def of(cls, records: Iterable[Record], spec: RunSpec) -> RequestSeries:
        start: int | None = None
        ttft = array("d")  # 8 bytes a value while reading, not a Python float's 32
        e2e = array("d")
        done = array("q")
        tokens = array("q")
        for r in records:
            if r.phase != MEASURE_PHASE:
                continue
            start = r.scheduled_ns if start is None else min(start, r.scheduled_ns)
            if not r.ok:
                continue
            t = request_times(r)
            if t.ttft_ms is not None:
                ttft.append(t.ttft_ms)
            if t.e2e_ms is not None:
                e2e.append(t.e2e_ms)
            if r.done_ns is not None:
                done.append(r.done_ns)
                tokens.append(t.credited_tokens(spec))
        return cls(
            start_ns=start,
            ttft_ms=np.frombuffer(ttft, dtype=np.float64),
            e2e_ms=np.frombuffer(e2e, dtype=np.float64),
            done_ns=np.frombuffer(done, dtype=np.int64),
            tokens=np.frombuffer(tokens, dtype=np.int64),
        )


def throughput_over_time(series: RequestSeries, bins: int = 40) -> tuple[list[float], list[float]]:
    """Credited output tokens/s per time bin (tokens counted at each request's done time)."""
    n = len(series.done_ns)
    if not n or series.start_ns is None:
        return [], []
    start = series.start_ns
    span = max(int(series.done_ns.max()) - start, 1)
    k = max(1, min(bins, n // 3 or 1))
    width = span / k
    tokens = [0] * k
    for t, count in zip(series.done_ns.tolist(), series.tokens.tolist(), strict=True):
        tokens[min(k - 1, int((t - start) // width))] += count
    return [(i + 0.5) * width / 1e9 for i in range(k)], [c / (width / 1e9) for c in tokens]


@dataclass(frozen=True)
class CheckLine:
    check: str
    verdict: str  # pass | fail | inconclusive
    summary: str  # the verdict's one line


@dataclass(frozen=True)
class Fact:
    name: str
    value: str


@dataclass
class RunView:
    label: str
    path: str
    simulation: bool
    valid: bool
    invalid_reasons: tuple[str, ...]
    facts: list[Fact]
    checks: list[CheckLine]
    signer: str
    ledger: str
    charts: list[Markup] = field(default_factory=list)


def _facts(run: VerifiedRun) -> list[Fact]:
    s = run.summary
    ms = "ms"
    credit = s.token_credit
    proven = "" if credit is None else " (proven)"
    facts = [
        Fact("model", run.spec.endpoint.model),
        Fact("load", s.load),
        Fact("deployment", run.spec.deployment or "—"),
        Fact("completed", f"{s.completed:,} / {s.requests:,}"),
        Fact(f"output tok/s{proven}", fmt_measure(s.output_throughput_tok_s)),
        Fact(f"95% low tok/s{proven}", fmt_measure(s.output_throughput_ci.low)),
    ]
    if credit is not None and credit.uncredited_tokens:
        usage_based = fmt_measure(credit.usage_based_throughput_tok_s)
        facts.append(Fact("usage-based tok/s (not credited)", usage_based))
    ttft = f"{fmt_measure(s.ttft_ms.p50)} / {fmt_measure(s.ttft_ms.p99)}"
    facts.append(Fact(f"TTFT p50 / p99 {ms}", ttft))
    facts.append(Fact(f"client lag p99 {ms}", fmt_measure(s.client_lag_ms.p99)))
    return facts


def run_view(run: VerifiedRun) -> RunView:
    """The page's view of one verified run: facts, each check's one line, and two charts."""
    label = run_label(run.run_dir, run.spec.label)
    spec = run.spec
    view = RunView(
        label=label,
        path=str(run.run_dir),
        simulation="twin" in (spec.deployment or "") or "simulat" in (spec.label or ""),
        valid=run.summary.valid,
        invalid_reasons=run.summary.invalid_reasons,
        facts=_facts(run),
        checks=[CheckLine(v.check, v.verdict.value, v.summary) for v in run.verdicts],
        signer=run.signer,
        ledger=f"entry {run.ledger_index} of {run.log_origin}",
    )
    path = run.run_dir / RECORDS_FILE
    if not path.exists():
        return view
    measured = RequestSeries.of(iter_records(path), spec)
    cdfs = [
        Series(name, *cdf(vals), step=True)
        for name, vals in (("TTFT", measured.ttft_ms), ("E2E", measured.e2e_ms))
    ]
    view.charts.append(
        line_chart(
            cdfs,
            title=f"Latency CDF — {label}",
            x_label="ms from scheduled send",
            y_label="share of completed requests",
        )
    )
    xs, ys = throughput_over_time(measured)
    tp = [Series("per time bin", xs, ys, markers=True)]
    low = run.summary.output_throughput_ci.low
    if low is not None and xs:
        tp.append(Series("95% lower bound", [xs[0], xs[-1]], [low, low], dashed=True))
    view.charts.append(
        line_chart(
            tp,
            title=f"Throughput over time — {label}",
            x_label="seconds since first scheduled request",
            y_label="output tokens/s",
        )
    )
    return view


def sweep_chart(parent: Path, points: Sequence[VerifiedRun]) -> Markup:
    """Throughput vs load over a sweep's verified points; invalid points are marked."""

    def load_x(run: VerifiedRun) -> float:
        load = run.spec.load
        return float(load.concurrency if load.concurrency is not None else load.rate or 0.0)

    pts = sorted(points, key=load_x)
    kind = "concurrency" if pts[0].spec.load.concurrency is not None else "requests/s offered"
    xs = [load_x(p) for p in pts]
    invalid = [not p.summary.valid for p in pts]
    point = [float(p.summary.output_throughput_tok_s or 0.0) for p in pts]
    series = [Series("point value", xs, point, markers=True, invalid=invalid)]
    lows = [(x, p.summary.output_throughput_ci.low) for x, p in zip(xs, pts, strict=True)]
    kept = [(x, float(v)) for x, v in lows if v is not None]
    if kept:
        series.append(
            Series(
                "95% lower bound",
                [x for x, _ in kept],
                [v for _, v in kept],
                dashed=True,
                markers=True,
            )
        )
    good = [(x, p.summary.goodput_tok_s) for x, p in zip(xs, pts, strict=True)]
    kept = [(x, float(v)) for x, v in good if v is not None]
    if kept:
        series.append(
            Series("goodput tokens/s", [x for x, _ in kept], [v for _, v in kept], markers=True)
        )
    return line_chart(
        series,
        title=f"Throughput vs load — sweep {parent.name}",
        x_label=kind,
        y_label="output tokens/s",
    )
