"""The report opens in headless Chromium: every chart drawn, no request leaves the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inferaudit.intent.claims import seed_claims
from inferaudit.present import report
from test_reconcile import make_run, runs_of, tps_claim

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"Debian chromium not found at {CHROMIUM}"
    ),
]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    home = tmp_path / "home"
    run = make_run(
        tmp_path / "twin-run", home, claim="tps-claim", deployment="twin-h100", jitter=True
    )
    for i, interval in enumerate((100.0, 50.0, 25.0)):
        make_run(tmp_path / "sweep" / f"point-{i:03d}", home, interval_ms=interval, jitter=True)
    (tmp_path / "sweep" / "sweep.json").write_text('{"points": []}')
    runs = runs_of(home, run, tmp_path / "sweep")
    data = report.build([*seed_claims(), tps_claim()], runs)
    out = tmp_path / "report.html"
    out.write_text(report.render(data), encoding="utf-8")
    expected_charts = 2 * len(data.runs) + len(data.sweeps) + len(report.capacity_charts(data)) + 1

    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "request",
                lambda req: outside.append(req.url) if not req.url.startswith("file:") else None,
            )
            page.goto(out.as_uri())
            charts = page.query_selector_all("svg.chart")
            assert len(charts) == expected_charts
            for chart in charts:
                box = chart.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100
                declared = int(chart.get_attribute("data-series") or "0")
                drawn = chart.query_selector_all(".series")
                assert declared >= 1 and len(drawn) == declared
                for series in drawn:
                    sbox = series.bounding_box()
                    assert sbox is not None and sbox["width"] > 0 and sbox["height"] > 0
            cdf = charts[len(report.capacity_charts(data)) + 1 + len(data.sweeps)]
            assert cdf.get_attribute("data-series") == "2"  # TTFT and E2E
            title = page.title()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
    assert title == data.title
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
