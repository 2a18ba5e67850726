"""Rich renderables for a run summary and a sweep; they build tables and never print.

``summary_table(summary)`` takes what ``metrics.summarize`` returns (optionally with the
``checks`` the run added); ``sweep_table(points)`` takes one such summary per point, or the rows
of ``sweep.json``. Both stay readable at 100 columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

NONE = "—"
LATENCY_ROWS = (
    ("TTFT", "ttft_ms"),
    ("TTFT from send", "ttft_from_sent_ms"),
    ("TPOT", "tpot_ms"),
    ("ITL", "itl_ms"),
    ("E2E", "e2e_ms"),
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


def _load_label(load: Any) -> str:
    if isinstance(load, Mapping):
        if load.get("rate") is not None:
            return f"rate={load['rate']:g}/s"
        if load.get("concurrency") is not None:
            return f"concurrency={load['concurrency']}"
        return NONE
    return NONE if load is None else str(load)


def latency_table(summary: Mapping[str, Any]) -> Table:
    """TTFT / TTFT from send / TPOT / ITL / E2E: n, mean and percentiles in milliseconds."""
    table = Table(title="Latency (ms)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("metric")
    table.add_column("n", justify="right")
    for name in LATENCY_COLUMNS:
        table.add_column(name, justify="right")
    for label, key in LATENCY_ROWS:
        dist = summary.get(key) or {}
        table.add_row(label, fmt(dist.get("n")), *(fmt(dist.get(c)) for c in LATENCY_COLUMNS))
    return table


def _throughput_line(summary: Mapping[str, Any]) -> str:
    line = f"{fmt(summary.get('output_throughput_tok_s'))} tok/s"
    ci = summary.get("output_throughput_ci") or {}
    if ci.get("subwindows"):
        pct = round(100 * ci.get("confidence", 0.95))
        line += (
            f"  ({pct}% CI {fmt(ci.get('low'))}–{fmt(ci.get('high'))}, "
            f"{ci['subwindows']} sub-windows)"
        )
    return line


def _tokens_line(summary: Mapping[str, Any]) -> str:
    line = fmt(summary.get("output_tokens"))
    src = summary.get("output_tokens_by_source") or {}
    if src:
        line += f"  (usage {fmt(src.get('usage'))}, content chunks {fmt(src.get('content_chunks'))}"
        disagree = (src.get("usage_above_chunks") or 0) + (src.get("usage_below_chunks") or 0)
        if disagree:
            line += f"; they differ for {disagree} requests"
        line += ")"
    return line


def overview_table(summary: Mapping[str, Any]) -> Table:
    """Counts, window, throughput, arrival rate, goodput, client lag, errors and validity."""
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    requests = f"{fmt(summary.get('completed'))} completed of {fmt(summary.get('requests'))}"
    requests += f", {fmt(summary.get('failed'))} failed"
    excluded = summary.get("excluded") or {}
    if excluded:
        requests += " (excluded: " + ", ".join(f"{k} {v}" for k, v in excluded.items()) + ")"
    table.add_row("load", _load_label(summary.get("load")))
    table.add_row("requests", requests)
    table.add_row("window", f"{fmt(summary.get('duration_s'))} s")
    table.add_row("requests/s", fmt(summary.get("request_throughput_rps")))
    table.add_row("output", _throughput_line(summary))
    table.add_row("output tokens", _tokens_line(summary))
    arrival = summary.get("arrival_rate") or {}
    if arrival:
        table.add_row(
            "arrival rate/s",
            f"requested {fmt(arrival.get('requested_rps'))}, scheduled "
            f"{fmt(arrival.get('scheduled_rps'))}, achieved {fmt(arrival.get('achieved_rps'))}",
        )
    if summary.get("goodput_rps") is None:
        table.add_row("goodput", "no SLO bounds in the protocol")
    else:
        table.add_row(
            "goodput",
            f"{fmt(summary.get('goodput_rps'))} req/s, {fmt(summary.get('goodput_tok_s'))} tok/s",
        )
    lag = summary.get("client_lag_ms") or {}
    table.add_row(
        "client lag ms",
        f"p50 {fmt(lag.get('p50'))}, p99 {fmt(lag.get('p99'))}, max {fmt(lag.get('max'))}",
    )
    errors = summary.get("errors") or {}
    table.add_row("errors", ", ".join(f"{k} {v}" for k, v in errors.items()) or "none")
    empty = summary.get("empty_chunks_before_content")
    if empty:
        table.add_row(
            "empty chunks",
            f"{fmt(empty)} before first content, in "
            f"{fmt(summary.get('requests_with_empty_chunks_before_content'))} requests",
        )
    if summary.get("valid"):
        table.add_row("validity", Text("VALID", style="bold green"))
    else:
        reasons = "; ".join(summary.get("invalid_reasons") or []) or "invalid"
        table.add_row("validity", Text(f"INVALID: {reasons}", style="bold red"))
    return table


def slo_table(slo: Mapping[str, Any]) -> Table:
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
        verdict = str(row.get("verdict"))
        more = row.get("additional_requests_needed")
        shown = verdict if not more else f"{verdict} (+{fmt(more)})"
        table.add_row(
            key,
            fmt(row.get("bound_ms")),
            fmt(row.get("n")),
            fmt(row.get("violations")),
            Text(shown, style=VERDICT_STYLE.get(verdict, "")),
            f"{fmt(row.get('min_requests_zero_violations'))} / "
            f"{fmt(row.get('min_requests_for_estimate'))}",
            fmt(row.get("estimate_ms")),
        )
    return table


def checks_table(checks: list[Mapping[str, Any]]) -> Table:
    """Integrity check verdicts, one line each."""
    table = Table(title="Checks", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for check in checks:
        verdict = str(check.get("verdict"))
        table.add_row(
            str(check.get("check")),
            Text(verdict, style=CHECK_STYLE.get(verdict, "")),
            str(check.get("summary", "")),
        )
    return table


# Printed under every summary; summary.json's "definitions" holds all of them.
PRINTED_DEFINITIONS = (
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
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


def summary_table(summary: Mapping[str, Any]) -> RenderableType:
    """Latency table, overview (throughput, goodput, lag, validity), SLO, checks, definitions."""
    parts: list[RenderableType] = [latency_table(summary), overview_table(summary)]
    if summary.get("slo"):
        parts.append(slo_table(summary["slo"]))
    if summary.get("checks"):
        parts.append(checks_table(summary["checks"]))
    if summary.get("definitions"):
        parts.append(Text(""))
        parts.append(definitions_text(summary["definitions"]))
    return Group(*parts)


def _pct(point: Mapping[str, Any], metric: str, pct: str) -> Any:
    """``point[metric_ms][pct]`` from a summary, or ``metric_pct_ms`` from a sweep.json row."""
    dist = point.get(f"{metric}_ms")
    if isinstance(dist, Mapping):
        return dist.get(pct)
    return point.get(f"{metric}_{pct}_ms")


def sweep_table(points: list[dict[str, Any]]) -> RenderableType:
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
    for point in points:
        lag = point.get("client_lag_ms") or {}
        valid = point.get("valid")
        table.add_row(
            _load_label(point.get("load")),
            fmt(point.get("request_throughput_rps")),
            fmt(point.get("output_throughput_tok_s")),
            fmt(point.get("goodput_rps")),
            fmt(_pct(point, "ttft", "p50")),
            fmt(_pct(point, "ttft", "p99")),
            fmt(_pct(point, "tpot", "p50")),
            fmt(_pct(point, "itl", "p99")),
            fmt(_pct(point, "e2e", "p99")),
            fmt(lag.get("p99")),
            Text(fmt(valid), style="green" if valid else "bold red"),
        )
    table.caption = "latencies and lag in ms; goodput in requests/s"
    return table
