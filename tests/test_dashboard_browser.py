"""The dashboard in headless Chromium, served by uvicorn on 127.0.0.1: the seed claims, a hostile
claim and a REAL demo run (twin, sealed, uploaded as a bundle). Every page renders its charts,
holds no script, fires no dialog, asks nothing of any other host, and shows the hostile text as
text. Screenshots go to test-artifacts/dashboard-*.png."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from inferaudit.audit import demo
from inferaudit.measure.rundir import ENVELOPE_FILE
from inferaudit.present.demo_claim import demo_claim
from test_dashboard import IMG, SCRIPT, World, app_of, build_world
from test_report_browser import ARGS, ARTIFACTS, CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian chromium not found at {CHROMIUM}"
    ),
]

DEMO_CLAIM = f"demo-{demo.DEPLOYMENT}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World, int]]:
    """(base URL, the world, the demo run's ledger index), served until the module ends."""
    base = tmp_path_factory.mktemp("dash-browser")
    out = base / "demo-run"
    outcome = demo.run_demo(out, duration_s=6.0, home=base / "home")
    assert outcome.verification.ok, [
        f"{s.name}: {s.detail}" for s in outcome.verification.failures()
    ]
    claim = demo_claim(
        deployment=demo.DEPLOYMENT,
        model=demo.MODEL,
        accelerator=demo.ACCELERATOR,
        count=1,
        claimed_tokens_per_s=demo.CLAIMED_TOKENS_PER_S,
        slo=demo.SLO_TEXT,
    )
    world = build_world(base, demo_run=out, demo_claims=(claim,))
    index = world.source.ledger.find((out / ENVELOPE_FILE).read_bytes())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app_of(world.source), log_level="warning", lifespan="off", ws="none", http="h11"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            thread.join(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}", world, index
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        world.source.ledger.close()


def test_every_page_renders_inert_in_chromium(served: tuple[str, World, int]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    url, world, demo_index = served
    pages = {
        "overview": ("/", 3),
        "claim-demo": (f"/claims/{DEMO_CLAIM}", 0),
        "claim-hostile": ("/claims/hostile-claim", 0),
        "claim-history": ("/claims/tps-claim-draft", 0),
        "run-demo": (f"/runs/{demo_index}", 2),
        "run-made": (f"/runs/{world.good}", 2),
        "run-tampered": (f"/runs/{world.tampered}", 0),
        "runs": ("/runs", 0),
        "rollup-site": ("/rollups/site", 0),
        "ledger": ("/ledger", 0),
        "ledger-entry": (f"/ledger?entry={demo_index}", 0),
        "not-found": ("/claims/no-such-claim", 0),
    }
    outside: list[str] = []
    dialogs: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "request",
                lambda req: outside.append(req.url) if not req.url.startswith(url + "/") else None,
            )

            def dialog(d: object) -> None:
                dialogs.append(str(getattr(d, "message", d)))
                d.dismiss()  # type: ignore[attr-defined]

            page.on("dialog", dialog)
            texts: dict[str, str] = {}
            for name, (path, min_charts) in pages.items():
                response = page.goto(url + path)
                assert response is not None
                assert response.status == (404 if name == "not-found" else 200), name
                assert page.query_selector_all("script") == [], name
                assert page.query_selector_all("img") == [], name
                charts = page.query_selector_all("svg.chart")
                assert len(charts) >= min_charts, (name, len(charts))
                for chart in charts:
                    box = chart.bounding_box()
                    assert box is not None and box["width"] > 100 and box["height"] > 100, name
                    declared = int(chart.get_attribute("data-series") or "0")
                    assert declared >= 1 and len(chart.query_selector_all(".series")) == declared
                texts[name] = page.inner_text("main")
                page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)
            hostile = page.goto(url + "/claims/hostile-claim")
            assert hostile is not None
            assert page.inner_text("p.statement") == SCRIPT
            sources = page.inner_text("#sources")
            assert IMG in sources and "javascript:alert(1)" in sources
            assert page.query_selector_all('a[href^="javascript"]') == []
        finally:
            browser.close()
    assert outside == []
    assert dialogs == []
    overview = texts["overview"]
    assert DEMO_CLAIM in overview and "hostile-claim" in overview
    assert IMG in overview  # the hostile site label, as text
    assert "evidence not verified" in overview
    assert "simulation" in texts["run-demo"]
    assert "Latency and throughput" in texts["run-demo"]
    assert "inferaudit demo (simulated endpoint)" in texts["claim-demo"]
    assert "cosigned at" in texts["ledger"]
    assert "https://inferaudit.dev/inference-run/v2" in texts["ledger-entry"]
    for name in pages:
        assert (ARTIFACTS / f"dashboard-{name}.png").stat().st_size > 5_000, name
