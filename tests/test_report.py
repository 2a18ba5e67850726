"""The HTML report, its charts and the exports, on seed claims and hand-made runs."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from inferaudit.cli import app
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import seed_claims
from inferaudit.intent.reconcile import RunSet, Status, reconcile
from inferaudit.measure.records import read_records
from inferaudit.present import charts, exports, report, series
from inferaudit.present.demo_claim import demo_claim
from test_reconcile import REFUSALS, forged_run, make_run, runs_of, tps_claim

NO_RUNS = RunSet("no runs given", (), ())
# Seed claims + tps-claim: compute (PFLOPS) and tokens/s, each by site and by vendor.
CAPACITY_CHARTS = 4


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_nice_ticks_and_numbers() -> None:
    assert charts.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert charts.nice_ticks(0, 3579) == [0, 1000, 2000, 3000, 4000]
    assert charts.nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert charts.fmt_num(3579) == "3.58k"
    assert charts.fmt_num(0.25) == "0.25"


def test_cdf_points() -> None:
    xs, ys = series.cdf([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]
    assert series.cdf([]) == ([], [])


def test_charts_count_their_series() -> None:
    svg = charts.line_chart(
        [
            charts.Series("a", [0, 1], [0, 1]),
            charts.Series("b", [0, 1], [1, 0]),
            charts.Series("empty", [], []),
        ],
        title="t <&>",
        x_label="x",
        y_label="y",
    )
    assert 'data-series="2"' in svg
    assert svg.count('class="series"') == 2
    assert "t &lt;&amp;&gt;" in svg
    bars = charts.hbar_chart(
        ["s1", "s2"], [("claimed", [3.0, 1.0]), ("verified", [1.0, 0.0])], title="b", unit="PFLOPS"
    )
    assert bars.count('class="series"') == 2
    assert bars.count("<rect x=") == 4 + 2  # 4 bars (a zero is a 2 px tick) + 2 swatches


def test_seed_report_shows_the_xining_discrepancy(tmp_path: Path, home: Path) -> None:
    out = report.write_report(tmp_path / "r.html", claims=seed_claims(), runs=NO_RUNS)
    page = out.read_text()
    assert "stated total 3,479 PFLOPS (signed) but the stated parts sum to" in page
    assert "3,579 PFLOPS (+100, +2.9%)" in page
    assert "Provenance mix of claimed capacity" in page
    assert "Claimed vs verified compute by site" in page
    # self-contained: nothing is fetched
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page
    assert "@import" not in page and "url(" not in page


def test_report_with_runs_and_a_sweep(tmp_path: Path, home: Path) -> None:
    run = make_run(tmp_path / "single", home, claim="tps-claim")
    make_run(tmp_path / "sw" / "point-000", home, interval_ms=100.0)
    make_run(tmp_path / "sw" / "point-001", home, interval_ms=50.0)
    (tmp_path / "sw" / "sweep.json").write_text('{"points": []}')
    claims = [*seed_claims(), tps_claim()]
    data = report.build(claims, runs_of(home, run, tmp_path / "sw"))
    assert [v.label for v in data.runs] == ["single", "sw/point-000", "sw/point-001"]
    assert all(len(v.charts) == 2 for v in data.runs)
    assert len(data.sweeps) == 1
    assert 'data-series="2"' in data.runs[0].charts[0]  # TTFT and E2E CDFs
    page = report.render(data)
    assert len(report.capacity_charts(data)) == CAPACITY_CHARTS
    assert page.count('<svg class="chart"') == 2 * 3 + 1 + CAPACITY_CHARTS + 1
    assert "Throughput vs load — sweep sw" in page
    tps = next(r for r in data.results if r.claim_id == "tps-claim")
    assert tps.status is Status.verified


def test_demo_claim_is_tested_by_a_twin_run(tmp_path: Path, home: Path) -> None:
    claim = demo_claim(
        deployment="twin-h100",
        model="llama-3.1-8b",
        accelerator="H100-SXM",
        count=1,
        claimed_tokens_per_s=900.0,
        concurrency=64,
        context_tokens=1024,
    )
    assert claim.claim_id == "demo-twin-h100"
    assert claim.subject.deployment == "twin-h100"
    assert "simulated" in claim.statement
    run = make_run(tmp_path / "twin", home, deployment="twin-h100")
    (r,) = reconcile([claim], runs_of(home, run))
    assert r.status is Status.verified


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_exports(tmp_path: Path, home: Path, fmt: str) -> None:
    run = make_run(tmp_path / "single", home, claim="tps-claim")
    claims = [*seed_claims(), tps_claim()]
    paths = exports.export(tmp_path / f"out.{fmt}", fmt, claims=claims, runs=runs_of(home, run))
    if fmt == "json":
        doc = json.loads(paths[0].read_text())
        rows = doc["reconciliation"]
        assert {r["group"] for r in doc["rollups"]} == {"project", "site", "vendor", "accelerator"}
    elif fmt == "parquet":
        assert [p.name for p in paths] == ["out.parquet", "out.rollups.parquet", "out.runs.parquet"]
        rows = pq.read_table(paths[0]).to_pylist()
    else:
        assert [p.name for p in paths] == ["out.csv", "out.rollups.csv", "out.runs.csv"]
        import csv

        with paths[0].open() as fh:
            rows = list(csv.DictReader(fh))
    assert len(rows) == 17
    tps = next(r for r in rows if r["claim_id"] == "tps-claim")
    assert tps["status"] == "verified"
    x = next(r for r in rows if r["claim_id"] == "xining-unicom-cctv-2025-09-16-signed")
    assert "3,579 PFLOPS" in x["findings"]
    with pytest.raises(ConfigError, match="--format 'xml'"):
        exports.export(tmp_path / "x", "xml", claims=claims, runs=NO_RUNS)


def test_cli_report(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    run = make_run(tmp_path / "single", home, deployment="dep-a")
    runner = CliRunner()
    out = tmp_path / "report.html"
    r = runner.invoke(app, ["report", "--out", str(out), "--run", str(run), "--example"])
    assert r.exit_code == 0, r.output
    assert "3,579 PFLOPS" in out.read_text()
    r = runner.invoke(
        app, ["report", "--out", str(tmp_path / "r.csv"), "--format", "csv", "--example"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.rollups.csv").exists()


@pytest.mark.parametrize("kind", [*REFUSALS, "untrusted key"])
def test_report_and_exports_refuse_evidence_that_does_not_verify(
    tmp_path: Path, home: Path, kind: str
) -> None:
    make_run(tmp_path / "good", home, deployment="dep-z")
    forged = forged_run(kind, tmp_path, home)
    runs = runs_of(home, tmp_path / "good", forged)
    (refused,) = runs.refused
    data = report.build([tps_claim()], runs)
    assert [v.label for v in data.runs] == ["good"]  # the forged run is never drawn
    page = report.render(data)
    assert f"evidence not verified: {refused.reason}" in html.unescape(page)
    assert runs.policy in html.unescape(page)
    (r,) = data.results
    assert r.status is Status.unverified and r.verified is None
    doc = json.loads(
        exports.export(tmp_path / "out.json", "json", claims=[tps_claim()], runs=runs)[
            0
        ].read_text()
    )
    assert doc["trust_policy"] == runs.policy
    assert doc["reconciliation"][0]["verified_tokens_per_s"] is None
    assert [(x["run"], x["evidence"], x["reason"]) for x in doc["runs"]] == [
        ("good", "verified", None),
        ("forged", "evidence not verified", refused.reason),
    ]


def test_the_page_tells_each_runs_verdicts_and_marks_what_has_no_evidence(
    tmp_path: Path, home: Path
) -> None:
    run = make_run(tmp_path / "bad-run", home, claim="tps-claim", failed_check=True)
    claims = [tps_claim(), tps_claim("other-claim", deployment="dep-none")]
    data = report.build(claims, runs_of(home, run))
    (view,) = data.runs
    verdicts = json.loads((run / "verdicts.json").read_text())
    assert [(c.check, c.verdict, c.summary) for c in view.checks] == [
        (v["check"], v["verdict"], v["summary"]) for v in verdicts
    ]
    assert view.checks[0].verdict == "fail"
    page = html.unescape(report.render(data))
    assert f"{verdicts[0]['summary']}" in page
    # neither claim has verified evidence: "no evidence", never a verified bar of zero
    (chart,) = [c for c in report.capacity_charts(data) if "tokens per second by site" in c]
    assert chart.count("no-evidence") == 1
    verified = chart.split('data-name="verified (lower bound)"', 1)[1].split("</g>", 1)[0]
    assert "<rect" not in verified and "no evidence" in verified


def test_invalid_sweep_points_are_marked(tmp_path: Path, home: Path) -> None:
    make_run(tmp_path / "sw" / "point-000", home, interval_ms=100.0)
    make_run(tmp_path / "sw" / "point-001", home, interval_ms=50.0, lag_ms=20.0)  # invalid
    (tmp_path / "sw" / "sweep.json").write_text('{"points": []}')
    data = report.build([tps_claim()], runs_of(home, tmp_path / "sw"))
    (sweep,) = data.sweeps
    assert sweep.count('class="invalid"') == 1
    assert [v.valid for v in data.runs] == [True, False]
    assert "invalid run" in report.render(data)


def test_numbers_are_rounded_to_what_they_mean() -> None:
    assert [charts.fmt_measure(x) for x in (8698.4, 123.456, 12.345, 1.23456, None)] == [
        "8,698",
        "123",
        "12.3",
        "1.23",
        "—",
    ]


def test_report_csv_escapes_formulas(tmp_path: Path) -> None:
    base = tps_claim("formula-claim")
    assert base.subject.site is not None
    site = base.subject.site.model_copy(update={"city": '=HYPERLINK("http://x")'})
    evil = base.model_copy(update={"subject": base.subject.model_copy(update={"site": site})})
    paths = exports.export(tmp_path / "r.csv", "csv", claims=[evil], runs=NO_RUNS)
    import csv

    with paths[0].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["site"] == '\'=HYPERLINK("http://x")'
    with paths[1].open(newline="") as fh:
        rolled = list(csv.DictReader(fh))
    assert '\'=HYPERLINK("http://x")' in [r["key"] for r in rolled]
    cells = [v for r in rows + rolled for v in r.values()]
    assert not [v for v in cells if v[:1] in ("=", "+", "-", "@")]


def test_run_view_credits_proven_tokens_and_shows_usage_beside(tmp_path: Path, home: Path) -> None:
    honest = make_run(tmp_path / "honest", home, claim="tps-claim")
    inflated = make_run(tmp_path / "inflated", home, claim="tps-claim", usage_extra=1)
    data = report.build([tps_claim()], runs_of(home, honest, inflated))
    views = {v.label: {f.name: f.value for f in v.facts} for v in data.runs}
    s = json.loads((inflated / "summary.json").read_text())
    assert views["inflated"]["output tok/s (proven)"] == views["honest"]["output tok/s (proven)"]
    assert views["inflated"]["usage-based tok/s (not credited)"] == charts.fmt_measure(
        s["token_credit"]["usage_based_throughput_tok_s"]
    )
    assert "usage-based tok/s (not credited)" not in views["honest"]  # nothing uncredited
    # the throughput chart's bins count the proven tokens: the same for both runs
    runs = {r.run_dir.name: r for r in runs_of(home, honest, inflated).verified}
    measured = {
        name: series.RequestSeries.of(read_records(name_dir / "records.jsonl"), runs[name].spec)
        for name, name_dir in (("honest", honest), ("inflated", inflated))
    }
    assert int(measured["honest"].tokens.sum()) > 0
    assert series.throughput_over_time(measured["inflated"]) == (
        series.throughput_over_time(measured["honest"])
    )


def test_throughput_over_time_bins_credited_tokens_at_done_times() -> None:
    # requests done at 0.5, 1.5, 2.5, 3.5, 4.5 and 6 s after the first scheduled send, 10 tokens
    # each: 2 bins (6 requests // 3) of 3 s, 3 requests each -> 30 tokens / 3 s = 10 tok/s
    s = series.RequestSeries(
        start_ns=0,
        ttft_ms=np.array([]),
        e2e_ms=np.array([]),
        done_ns=np.array([500, 1500, 2500, 3500, 4500, 6000], dtype=np.int64) * 1_000_000,
        tokens=np.array([10] * 6, dtype=np.int64),
    )
    assert series.throughput_over_time(s) == ([1.5, 4.5], [10.0, 10.0])
    empty = series.RequestSeries(None, np.array([]), np.array([]), np.array([]), np.array([]))
    assert series.throughput_over_time(empty) == ([], [])
