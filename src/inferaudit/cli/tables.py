"""Rich renderables for a run summary and a sweep; they build tables and never print.

``summary_table(summary, verdicts)`` takes what ``metrics.summarize`` returns and the run's
verdicts; ``sweep_table(rows)`` takes one ``Summary.row()`` per point. Both stay readable at 100
columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from inferaudit.judge.verdict import Verdict
from inferaudit.measure.summary import SloBound, Summary, SummaryRow

NONE = "—"
LATENCY_ROWS = (
    ("TTFT", "ttft"),
    ("TTFT from send", "ttft_from_sent"),
    ("TPOT", "tpot"),
    ("ITL", "itl"),
    ("E2E", "e2e"),
)
LATENCY_COLUMNS = ("mean", "p50", "p90", "p95", "p99", "p99.9")
VERDICT_STYLE = {"pass": "green", "fail": "bold red", "insufficient": "yellow"}
CHECK_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def fmt(value: Any) -> str:
    """A number for a table cell: thousands separators, 3-4 significant figures below 1000."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not isinstance(value, float):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def latency_table(summary: Summary) -> Table:
    """TTFT / TTFT from send / TPOT / ITL / E2E: n, mean and percentiles in milliseconds."""
    table = Table(title="Latency (ms)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("metric")
    table.add_column("n", justify="right")
    for name in LATENCY_COLUMNS:
        table.add_column(name, justify="right")
    for label, metric in LATENCY_ROWS:
        dist = summary.dist(metric)
        assert dist is not None, f"{metric} is a distribution of the summary"
        table.add_row(label, fmt(dist.n), *(fmt(dist.pct(c)) for c in LATENCY_COLUMNS))
    return table


def _throughput_line(summary: Summary) -> str:
    line = f"{fmt(summary.output_throughput_tok_s)} tok/s"
    credit = summary.token_credit
    if credit is not None:
        line += " proven"
    ci = summary.output_throughput_ci
    if ci.subwindows:
        pct = round(100 * ci.confidence)
        line += f"  ({pct}% CI {fmt(ci.low)}–{fmt(ci.high)}, {ci.subwindows} sub-windows)"
    if credit is not None and credit.uncredited_tokens:
        line += f"; usage-based {fmt(credit.usage_based_throughput_tok_s)} tok/s, not credited"
    return line


def _tokens_line(summary: Summary) -> str:
    src = summary.output_tokens_by_source
    credit = summary.token_credit
    line = fmt(summary.output_tokens)
    if credit is not None:
        line += " credited (proven by the stream)"
    line += f"  (usage {fmt(src.usage)}, content chunks {fmt(src.content_chunks)}"
    disagree = src.usage_above_chunks + src.usage_below_chunks
    if disagree:
        line += f"; they differ for {disagree} requests"
    if credit is not None and credit.uncredited_tokens:
        line += (
            f"; {fmt(credit.uncredited_tokens)} usage tokens beyond the stream in "
            f"{fmt(credit.requests_usage_above_proven)} requests not credited"
        )
    return line + ")"


def _lag_line(summary: Summary) -> str:
    lag = summary.client_lag_ms
    line = f"p50 {fmt(lag.p50)}, p99 {fmt(lag.p99)}, max {fmt(lag.max)}"
    budget = summary.error_budget
    if budget is not None:
        moves = ", ".join(
            f"{m.figure.replace('_', ' ')} moved {fmt(m.moved_ms)} of {fmt(m.allowed_ms)} allowed"
            for m in budget.figures
        )
        floor = fmt(budget.floor_ms)
        line += f"  ({moves}: budget {budget.share:.0%} of the figure, at least {floor})"
    return line


def overview_table(summary: Summary) -> Table:
    """Counts, window, throughput, arrival rate, goodput, client lag, errors and validity."""
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    requests = f"{fmt(summary.completed)} completed of {fmt(summary.requests)}"
    requests += f", {fmt(summary.failed)} failed"
    if summary.excluded:
        requests += (
            " (excluded: " + ", ".join(f"{k} {v}" for k, v in summary.excluded.items()) + ")"
        )
    table.add_row("load", summary.load)
    table.add_row("requests", requests)
    table.add_row("window", f"{fmt(summary.duration_s)} s")
    table.add_row("requests/s", fmt(summary.request_throughput_rps))
    table.add_row("output", _throughput_line(summary))
    table.add_row("output tokens", _tokens_line(summary))
    arrival = summary.arrival_rate
    table.add_row(
        "arrival rate/s",
        f"requested {fmt(arrival.requested_rps)}, scheduled {fmt(arrival.scheduled_rps)}, "
        f"achieved {fmt(arrival.achieved_rps)}",
    )
    if summary.goodput_rps is None:
        table.add_row("goodput", "no SLO bounds in the protocol")
    else:
        table.add_row(
            "goodput", f"{fmt(summary.goodput_rps)} req/s, {fmt(summary.goodput_tok_s)} tok/s"
        )
    table.add_row("client lag ms", _lag_line(summary))
    errors = ", ".join(f"{k} {v}" for k, v in summary.errors.items())
    table.add_row("errors", errors or "none")
    if summary.empty_chunks_before_content:
        table.add_row(
            "empty chunks",
            f"{fmt(summary.empty_chunks_before_content)} before first content, in "
            f"{fmt(summary.requests_with_empty_chunks_before_content)} requests",
        )
    if summary.valid:
        table.add_row("validity", Text("VALID", style="bold green"))
    else:
        reasons = "; ".join(summary.invalid_reasons) or "invalid"
        table.add_row("validity", Text(f"INVALID: {reasons}", style="bold red"))
    return table


def slo_table(slo: Mapping[str, SloBound]) -> Table:
    """Per SLO bound: MLPerf early-stopping verdict, counts and percentile estimate."""
    table = Table(
        title="SLO bounds (MLPerf early stopping, 99% confidence)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name, justify in (
        ("bound", "left"),
        ("ms", "right"),
        ("n", "right"),
        ("violations", "right"),
        ("verdict", "left"),
        ("min n (k=0 / est.)", "right"),
        ("estimate ms", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, row in slo.items():
        more = row.additional_requests_needed
        shown = row.verdict if not more else f"{row.verdict} (+{fmt(more)})"
        table.add_row(
            key,
            fmt(row.bound_ms),
            fmt(row.n),
            fmt(row.violations),
            Text(shown, style=VERDICT_STYLE.get(row.verdict, "")),
            f"{fmt(row.min_requests_zero_violations)} / {fmt(row.min_requests_for_estimate)}",
            fmt(row.estimate_ms),
        )
    return table


def checks_table(verdicts: Sequence[Verdict]) -> Table:
    """Integrity check verdicts, one line each."""
    table = Table(title="Checks", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for v in verdicts:
        outcome = v.verdict.value
        table.add_row(v.check, Text(outcome, style=CHECK_STYLE.get(outcome, "")), v.summary)
    return table


# Printed under every summary; summary.json's "definitions" holds all of them.
PRINTED_DEFINITIONS = (
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "output_tokens",
    "output_throughput_tok_s",
    "goodput_rps",
    "client_lag_ms",
)


def definitions_text(definitions: Mapping[str, str]) -> Text:
    """The core metric definitions as a dim footnote (the rest are in summary.json)."""
    text = Text("Definitions (all of them: summary.json 'definitions')\n", style="bold dim")
    for name in PRINTED_DEFINITIONS:
        if name in definitions:
            text.append(f"{name}: ", style="dim bold")
            text.append(f"{definitions[name]}\n", style="dim")
    text.rstrip()
    return text


def summary_table(summary: Summary, verdicts: Sequence[Verdict] = ()) -> RenderableType:
    """Latency table, overview (throughput, goodput, lag, validity), SLO, checks, definitions."""
    parts: list[RenderableType] = [latency_table(summary), overview_table(summary)]
    if summary.slo:
        parts.append(slo_table(summary.slo))
    if verdicts:
        parts.append(checks_table(verdicts))
    if summary.definitions:
        parts.append(Text(""))
        parts.append(definitions_text(summary.definitions))
    return Group(*parts)


def sweep_table(rows: Sequence[SummaryRow]) -> RenderableType:
    """One row per sweep point: load, throughput, goodput, key latencies, lag and validity."""
    table = Table(
        title="Sweep", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, padding=(0, 1)
    )
    table.add_column("load", no_wrap=True)
    for name in (
        "req/s",
        "tok/s",
        "goodput\nreq/s",
        "TTFT\np50",
        "TTFT\np99",
        "TPOT\np50",
        "ITL\np99",
        "E2E\np99",
        "lag\np99",
        "valid",
    ):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            row.load,
            fmt(row.request_throughput_rps),
            fmt(row.output_throughput_tok_s),
            fmt(row.goodput_rps),
            fmt(row.ttft_p50_ms),
            fmt(row.ttft_p99_ms),
            fmt(row.tpot_p50_ms),
            fmt(row.itl_p99_ms),
            fmt(row.e2e_p99_ms),
            fmt(row.client_lag_p99_ms),
            Text(fmt(row.valid), style="green" if row.valid else "bold red"),
        )
    table.caption = "latencies and lag in ms; goodput in requests/s"
    return table
