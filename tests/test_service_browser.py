"""The REAL `inferaudit serve` process (one real witness) in headless Chromium: the seed claims
and a hostile claim logged with `claims import --publish`, a twin run with `run --publish`
(sealed, logged, its bundle uploaded and verified by the service). Every page renders without a
script, a dialog or a request to another host, the hostile text is shown as text, the run is
credited as verified, and the ledger page shows the checkpoint with the witness's cosignature.
Screenshots go to test-artifacts/service-*.png."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferaudit.intent.claims import SIGNER_NAME, dump_claims, seed_claims
from inferaudit.present.demo_claim import demo_claim
from inferaudit.seal.keys import DEFAULT_SIGNER_NAME, load_or_create_signer
from inferaudit.seal.ledger.note import parse_tlog_proof, split_note
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from service_procs import WitnessProc, cli, witnesses
from test_dashboard import IMG, SCRIPT, hostile_claim
from test_report_browser import ARGS, ARTIFACTS, CHROMIUM
from test_service import Served, prepare, serve

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"Debian chromium not found at {CHROMIUM}"
    ),
]

WITNESS = "witness.test/dash"
CLAIM = "twin-dash-claim"
DEPLOYMENT = "twin-dash"
MODEL = "llama-3.1-8b"  # the twin serves it under this name; the claim names it too
CLAIMED_TOKENS_PER_S = 5.0  # far under what the twin streams: the run verifies the claim


@dataclass
class Site:
    served: Served
    witness: WitnessProc
    run: Path
    index: int  # the run's ledger entry
    seed_ids: list[str]


def _token_file(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, token.encode() + b"\n")
    os.close(fd)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("service-browser")
    db = f"sqlite:///{base / 'service.sqlite3'}"
    service_dir = base / "service"
    log_key = load_or_create_signer(service_dir, DEFAULT_LOG_NAME).verifier()
    home = base / "auditor-home"
    runner = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    claims_key = load_or_create_signer(home, SIGNER_NAME)
    tokens = prepare(db, auditors=(runner, claims_key))
    env = {"INFERAUDIT_HOME": str(home)}
    with (
        witnesses(base, (WITNESS,), log_key) as (witness,),
        serve(service_dir, db, "--witness", witness.option, "--witness-quorum", "1") as served,
    ):
        served.tokens = tokens
        claims_env = {**env, "INFERAUDIT_TOKEN": tokens["submit-claims"]}
        seeded = cli("claims", "import", "--example", "--publish", served.url, env=claims_env)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        twin_claim = demo_claim(
            deployment=DEPLOYMENT,
            model=MODEL,
            accelerator="H100-SXM",
            count=1,
            claimed_tokens_per_s=CLAIMED_TOKENS_PER_S,
            claim_id=CLAIM,
        )
        claims = base / "claims.json"
        claims.write_text(dump_claims([hostile_claim(), twin_claim], "json"))
        added = cli("claims", "import", claims, "--publish", served.url, env=claims_env)
        assert added.returncode == 0, added.stdout + added.stderr
        run = base / "twin-run"
        token_file = _token_file(base / "token", tokens["submit-evidence"])
        with start_twin(TwinOptions(model=MODEL, ttft_ms=5, tpot_ms=2)) as twin:
            done = cli(
                "run", "--endpoint", twin.base_url, "--model", MODEL,
                "--concurrency", "4", "--requests", "40", "--input-tokens", "16",
                "--output-tokens", "16", "--checks", "none", "--max-lag-ms", "100",
                "--workers", "1", "--deployment", DEPLOYMENT, "--claim", CLAIM,
                "--out", run, "--publish", served.url, "--token-file", token_file,
                env=env,
            )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "bundle: verified" in done.stdout
        index = parse_tlog_proof((run / "entry.tlog-proof").read_text()).index
        seed_ids = [c.claim_id for c in seed_claims()]
        assert index == len(seed_ids) + 2  # after every claim
        yield Site(served, witness, run, index, seed_ids)
        assert not [t for t in tokens.values() if t in served.output()]


def test_the_served_dashboard_is_inert_credits_the_run_and_shows_the_cosignature(
    site: Site,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    url = site.served.url
    pages = {
        "overview": ("/", 1),
        "claim-twin": (f"/claims/{CLAIM}", 0),
        "claim-hostile": ("/claims/hostile-claim", 0),
        "claim-seed": (f"/claims/{site.seed_ids[0]}", 0),
        "run": (f"/runs/{site.index}", 2),
        "ledger": ("/ledger", 0),
        "ledger-run": (f"/ledger?entry={site.index}", 0),
    }
    outside: list[str] = []
    dialogs: list[str] = []
    texts: dict[str, str] = {}
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
            for name, (path, min_charts) in pages.items():
                response = page.goto(url + path)
                assert response is not None and response.status == 200, name
                assert page.query_selector_all("script") == [], name
                assert page.query_selector_all("img") == [], name
                charts = page.query_selector_all("svg.chart")
                assert len(charts) >= min_charts, (name, len(charts))
                for chart in charts:
                    box = chart.bounding_box()
                    assert box is not None and box["width"] > 100 and box["height"] > 100, name
                texts[name] = page.inner_text("main")
                page.screenshot(path=str(ARTIFACTS / f"service-{name}.png"), full_page=True)
            # the hostile claim's text fields, shown as the text they hold
            page.goto(url + "/claims/hostile-claim")
            assert page.inner_text("p.statement") == SCRIPT
            assert IMG in page.inner_text("#sources")
            assert page.query_selector_all('a[href^="javascript"]') == []
            # the run is credited: the claim it tests is verified, by this run
            page.goto(url + "/")
            row = page.query_selector(f"#claim-{CLAIM}")
            assert row is not None
            assert row.query_selector_all("td")[1].inner_text().strip() == "verified"
            assert page.inner_text("#trust-policy").startswith("1 verified run(s) of 1 stored")
            page.goto(url + f"/runs/{site.index}")
            assert page.inner_text("#run h2 .badge.ok") == "verified"
            # the ledger page: the latest checkpoint, signed by the log and cosigned
            page.goto(url + "/ledger")
            sigs = [
                [c.inner_text().strip() for c in tr.query_selector_all("td")]
                for tr in page.query_selector_all("tr.sig")
            ]
            quorum = page.inner_text("#quorum")
        finally:
            browser.close()
    assert outside == []
    assert dialogs == []
    assert IMG in texts["overview"] and "hostile-claim" in texts["overview"]
    assert CLAIM in texts["overview"]
    assert "Latency and throughput" in texts["run"]
    assert f"tests claim {CLAIM}" in texts["run"]
    assert "https://inferaudit.dev/inference-run/v2" in texts["ledger-run"]
    latest = site.served.client().get("/checkpoint").text
    _, lines = split_note(latest)
    assert [s.name for s in lines] == [DEFAULT_LOG_NAME, WITNESS]
    assert [(c[0], c[2], c[4]) for c in sigs] == [
        (DEFAULT_LOG_NAME, "log", "yes"),
        (WITNESS, "witness", "yes"),
    ]
    assert sigs[1][5].startswith("cosigned at ")
    assert quorum.startswith("1 of 1 witness(es) cosigned, quorum 1") and "met" in quorum
    assert f"tree size {site.index + 1:,}" in texts["ledger"]
    for name in pages:
        assert (ARTIFACTS / f"service-{name}.png").stat().st_size > 5_000, name
