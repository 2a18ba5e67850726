"""The CLI's rendering of a summary and a sweep (``cli/tables.py``): the numbers shown, the
credited and usage-based token counts of a v2 protocol, and 100 columns at most."""

from __future__ import annotations

import io

from rich.console import Console

from inferaudit.cli.tables import summary_table, sweep_table
from inferaudit.judge.verdict import Outcome, Verdict
from inferaudit.measure import metrics
from inferaudit.measure.summary import SummaryRow
from test_metrics import BOUNDS, rec, scenario, spec, v2


def render(renderable: object) -> list[str]:
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def test_summary_table_shows_numbers_and_fits_100_columns() -> None:
    s = metrics.summarize(scenario(), spec(BOUNDS))
    lines = render(summary_table(s, [Verdict("usage", Outcome.failed, "usage lies")]))
    assert max(len(line) for line in lines) <= 100
    ttft = next(line for line in lines if line.strip().startswith("TTFT  "))
    assert ttft.split() == ["TTFT", "3", "13.33", "10.00", "18.00", "19.00", "19.80", "19.98"]
    text = "\n".join(lines)
    assert "29.51 tok/s" in text and "3.28 req/s, 3.28 tok/s" in text
    assert "9  (usage 9, content chunks 6; they differ for 1 requests)" in text
    assert "proven" not in text  # a v1 protocol credits usage, and says nothing else
    assert "p50 0.5, p99 1.97, max 2.00" in text
    assert "VALID" in text and "http_500 1" in text
    assert "insufficient (+834)" in text and "459 / 662" in text
    assert "usage lies" in text
    assert "ttft_ms: TTFT: scheduled send -> first chunk" in text


def test_summary_table_shows_credited_and_usage_based_tokens() -> None:
    s = metrics.summarize(scenario(), v2(BOUNDS))
    lines = render(summary_table(s))
    assert max(len(line) for line in lines) <= 100
    text = " ".join(" ".join(lines).split())  # folded lines joined
    assert "19.67 tok/s proven; usage-based 29.51 tok/s, not credited" in text
    assert (
        "6 credited (proven by the stream) (usage 9, content chunks 6; they differ for 1 "
        "requests; 3 usage tokens beyond the stream in 1 requests not credited)"
    ) in text
    assert "output_tokens: Credited output tokens of completed requests" in text


def test_summary_table_invalid_run() -> None:
    records = [rec(i, 10 * i, 10 * i + 9, 10 * i + 12, [(10 * i + 12, 1)], 10 * i + 13, usage=1)
               for i in range(4)]  # fmt: skip
    text = "\n".join(render(summary_table(metrics.summarize(records, spec()))))
    assert "INVALID: client fell behind its schedule: lag p99 9.0 ms > 5 ms" in text
    assert "no SLO bounds in the protocol" in text


def test_sweep_table_from_summary_rows() -> None:
    s = metrics.summarize(scenario(), spec(BOUNDS))
    row = SummaryRow(
        load="concurrency=128", requests=10, completed=9, failed=1, achieved_rps=None,
        request_throughput_rps=1234.5, output_throughput_tok_s=123456.0, goodput_rps=None,
        goodput_tok_s=None, ttft_p50_ms=12.5, ttft_p99_ms=1500.25, tpot_p50_ms=0.75,
        tpot_p99_ms=None, itl_p99_ms=None, e2e_p99_ms=None, client_lag_p99_ms=None, valid=False,
    )  # fmt: skip
    lines = render(sweep_table([s.row(), metrics.summarize(scenario(), v2(BOUNDS)).row(), row]))
    assert max(len(line) for line in lines) <= 100
    first, credited = (line for line in lines if line.strip().startswith("rate=10/s"))
    assert first.split() == [
        "rate=10/s", "9.84", "29.51", "3.28", "10.00", "19.80", "8.75", "10.00", "49.60", "1.97",
        "yes",
    ]  # fmt: skip
    assert credited.split()[2] == "19.67"  # a v2 row's tok/s is the credited (proven) one
    second = next(line for line in lines if line.strip().startswith("concurrency=128"))
    assert second.split() == [
        "concurrency=128", "1,234", "123,456", "—", "12.50", "1,500", "0.75", "—", "—", "—", "no",
    ]  # fmt: skip
