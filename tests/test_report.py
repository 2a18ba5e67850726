"""The HTML report, its charts and the exports, on seed claims and hand-made runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from inferaudit.cli import app
from inferaudit.errors import ConfigError
from inferaudit.intent.claims import seed_claims
from inferaudit.intent.reconcile import Status, load_evidence, reconcile
from inferaudit.present import report
from test_reconcile import make_run, tps_claim


def test_nice_ticks_and_numbers() -> None:
    assert report.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert report.nice_ticks(0, 3579) == [0, 1000, 2000, 3000, 4000]
    assert report.nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert report.fmt_num(3579) == "3.58k"
    assert report.fmt_num(0.25) == "0.25"


def test_cdf_points() -> None:
    xs, ys = report.cdf([3.0, 1.0, 2.0, 2.0])
    assert xs == [1.0, 2.0, 2.0, 3.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]
    assert report.cdf([]) == ([], [])


def test_charts_count_their_series() -> None:
    svg = report.line_chart(
        [
            report.Series("a", [0, 1], [0, 1]),
            report.Series("b", [0, 1], [1, 0]),
            report.Series("empty", [], []),
        ],
        title="t <&>",
        x_label="x",
        y_label="y",
    )
    assert 'data-series="2"' in svg
    assert svg.count('class="series"') == 2
    assert "t &lt;&amp;&gt;" in svg
    bars = report.hbar_chart(
        ["s1", "s2"], [("claimed", [3.0, 1.0]), ("verified", [1.0, 0.0])], title="b", unit="PFLOPS"
    )
    assert bars.count('class="series"') == 2
    assert bars.count("<rect x=") == 4 + 2  # 4 bars (a zero is a 2 px tick) + 2 swatches


def test_seed_report_shows_the_xining_discrepancy(tmp_path: Path) -> None:
    out = report.write_report(tmp_path / "r.html", claims=seed_claims())
    page = out.read_text()
    assert "stated total 3,479 PFLOPS (signed) but the stated parts sum to" in page
    assert "3,579 PFLOPS (+100, +2.9%)" in page
    assert "Provenance mix of claimed capacity" in page
    assert "Claimed vs verified compute by site" in page
    # self-contained: nothing is fetched
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page
    assert "@import" not in page and "url(" not in page


def test_report_with_runs_and_a_sweep(tmp_path: Path) -> None:
    run = make_run(tmp_path / "single", claim="tps-claim")
    make_run(tmp_path / "sw" / "point-000", interval_ms=100.0)
    make_run(tmp_path / "sw" / "point-001", interval_ms=50.0)
    (tmp_path / "sw" / "sweep.json").write_text('{"points": []}')
    claims = [*seed_claims(), tps_claim()]
    data = report.build(claims, [run, tmp_path / "sw"])
    assert [v.label for v in data.runs] == ["single", "sw/point-000", "sw/point-001"]
    assert all(len(v.charts) == 2 for v in data.runs)
    assert len(data.sweeps) == 1
    assert 'data-series="2"' in data.runs[0].charts[0]  # TTFT and E2E CDFs
    page = report.render(data)
    assert page.count('<svg class="chart"') == 2 * 3 + 1 + len(report._capacity_charts(data)) + 1
    assert "Throughput vs load — sweep sw" in page
    tps = next(r for r in data.results if r.claim_id == "tps-claim")
    assert tps.status is Status.verified


def test_demo_claim_is_tested_by_a_twin_run(tmp_path: Path) -> None:
    claim = report.demo_claim(
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
    run = make_run(tmp_path / "twin", deployment="twin-h100")
    (r,) = reconcile([claim], load_evidence([run]))
    assert r.status is Status.verified


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_exports(tmp_path: Path, fmt: str) -> None:
    run = make_run(tmp_path / "single", claim="tps-claim")
    claims = [*seed_claims(), tps_claim()]
    paths = report.export(tmp_path / f"out.{fmt}", fmt, claims=claims, run_dirs=[run])
    if fmt == "json":
        doc = json.loads(paths[0].read_text())
        rows = doc["reconciliation"]
        assert {r["group"] for r in doc["rollups"]} == {"project", "site", "vendor", "accelerator"}
    elif fmt == "parquet":
        assert [p.name for p in paths] == ["out.parquet", "out.rollups.parquet"]
        rows = pq.read_table(paths[0]).to_pylist()
    else:
        assert [p.name for p in paths] == ["out.csv", "out.rollups.csv"]
        import csv

        with paths[0].open() as fh:
            rows = list(csv.DictReader(fh))
    assert len(rows) == 17
    tps = next(r for r in rows if r["claim_id"] == "tps-claim")
    assert tps["status"] == "verified"
    x = next(r for r in rows if r["claim_id"] == "xining-unicom-cctv-2025-09-16-signed")
    assert "3,579 PFLOPS" in x["findings"]
    with pytest.raises(ConfigError, match="--format 'xml'"):
        report.export(tmp_path / "x", "xml", claims=claims)


def test_cli_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERAUDIT_DB", raising=False)
    run = make_run(tmp_path / "single", deployment="dep-a")
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
