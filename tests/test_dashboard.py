"""The dashboard over real stores: the seed claims, a hostile claim, a supersession chain, a
verified run and a tampered one, a ledger whose checkpoint carries witness cosignatures.

Only the verified run is credited; the tampered one is listed with its reason and counted
nowhere; stored text only ever appears escaped; downloads are the run's own bytes; bad input is
a 400 and an unknown thing a 404, each one line."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from inferaudit import home as home_mod
from inferaudit.intent.claims import (
    SIGNER_NAME,
    Claim,
    ClaimInput,
    ClaimStore,
    Signing,
    build_claim,
    seed_claims,
)
from inferaudit.measure.definitions import DEFINITIONS
from inferaudit.measure.rundir import ENVELOPE_FILE, RECORDS_FILE
from inferaudit.present.charts import fmt_measure
from inferaudit.present.web import evidence as evidence_mod
from inferaudit.present.web.dashboard import KNOWN_FILES, dashboard_router
from inferaudit.present.web.dashboard_views import Page, PageError
from inferaudit.present.web.evidence import EvidenceStore, pack_run
from inferaudit.seal.keys import (
    ALG_COSIGNATURE_V1,
    Signer,
    Verifier,
    key_id,
    load_or_create_signer,
)
from inferaudit.seal.ledger.note import Signature, cosignature_message, split_note
from inferaudit.seal.ledger.store import Ledger, open_ledger
from inferaudit.seal.trust import default_policy
from test_reconcile import make_run, tps_claim

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
COSIGN_TIME = 1_700_000_000


@dataclass
class Source:
    claims: ClaimStore
    evidence: EvidenceStore
    ledger: Ledger
    witness_keys: tuple[Verifier, ...]
    witness_quorum: int


def hostile_claim() -> Claim:
    base = build_claim(
        ClaimInput(
            claim_id="hostile-claim",
            statement=SCRIPT,
            status="announced_intent",
            certainty="unknown",
            source_url="https://example.org/a",
            source_class="independent_media",
            quote=IMG,
            site=IMG,
            city=IMG,
            entities=((IMG, "operator"),),
            metric="compute",
            value=12.5,
            unit=SCRIPT,
            basis="announced",
        )
    )
    data = base.to_json()
    data["sources"] = [
        {**data["sources"][0], "title": IMG, "publisher": SCRIPT},
        {"url": "javascript:alert(1)", "source_class": "aggregator_or_blog", "title": SCRIPT},
    ]
    data["notes"] = SCRIPT
    return Claim.model_validate(data)


def with_supersedes(claim: Claim, old: str) -> Claim:
    return Claim.model_validate({**claim.to_json(), "supersedes": old})


def cosignature(witness: Signer, key: Verifier, text: str, ts: int, *, signed_ts: int) -> str:
    raw = ts.to_bytes(8, "big") + witness.sign(cosignature_message(text, signed_ts))
    return Signature(key.name, key.key_hash, raw).line()


def cosigner(name: str) -> tuple[Signer, Verifier]:
    signer = Signer.generate(name)
    pub = signer.public
    return signer, Verifier(name, key_id(name, ALG_COSIGNATURE_V1, pub), pub, ALG_COSIGNATURE_V1)


@dataclass
class World:
    source: Source
    good: int
    tampered: int
    good_dir: Path
    low: float
    claim_indices: dict[str, int]


def build_world(
    base: Path, *, demo_run: Path | None = None, demo_claims: tuple[Claim, ...] = ()
) -> World:
    home = base / "home"
    good_dir = make_run(base / "good", home, claim="tps-claim")
    bad_src = make_run(base / "bad-src", home, claim="tamper-claim", deployment="dep-b")
    bad = base / "bad"
    shutil.copytree(bad_src, bad)
    records = (bad / RECORDS_FILE).read_bytes()
    (bad / RECORDS_FILE).write_bytes(records.replace(b'"status":200', b'"status":201', 1))
    ledger = open_ledger(home_mod.db_url(None, home), home)
    claims = ClaimStore(ledger.engine)
    v0 = tps_claim("tps-claim-v0", 700.0)
    draft = with_supersedes(tps_claim("tps-claim-draft", 800.0), "tps-claim-v0")
    current = with_supersedes(tps_claim(), "tps-claim-draft")
    batch = [
        *seed_claims(),
        hostile_claim(),
        v0,
        draft,
        current,
        tps_claim("tamper-claim", 900.0, deployment="dep-b"),
        *demo_claims,
    ]
    signing = Signing(load_or_create_signer(home, SIGNER_NAME), ledger)
    indices = claims.add(batch, signing=signing).indices
    note = ledger.sign_checkpoint()
    text, _ = split_note(note)
    (wa, ka), (wb, kb), (wc, kc) = cosigner("witness-a"), cosigner("witness-b"), cosigner("w-c")
    ledger.add_cosignatures(
        note
        + cosignature(wa, ka, text, COSIGN_TIME, signed_ts=COSIGN_TIME)
        + cosignature(wb, kb, text, COSIGN_TIME, signed_ts=COSIGN_TIME + 1)  # does not verify
        + cosignature(wc, kc, text, COSIGN_TIME, signed_ts=COSIGN_TIME)  # not configured
    )
    store = EvidenceStore(ledger.engine, base / "service", default_policy(home))
    good = ledger.find((good_dir / ENVELOPE_FILE).read_bytes())
    tampered = ledger.find((bad / ENVELOPE_FILE).read_bytes())
    for index, run in ((good, good_dir), (tampered, bad)):
        store.add(index, ledger.entry(index), pack_run(run))
    if demo_run is not None:
        index = ledger.find((demo_run / ENVELOPE_FILE).read_bytes())
        assert store.add(index, ledger.entry(index), pack_run(demo_run)).status == "verified"
    low = orjson.loads((good_dir / "summary.json").read_bytes())["output_throughput_ci"]["low"]
    source = Source(claims, store, ledger, (ka, kb), 2)
    return World(source, good, tampered, good_dir, low, indices)


def app_of(source: Source) -> FastAPI:
    app = FastAPI()
    app.include_router(dashboard_router(lambda: source))
    return app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("dash"))
    yield w
    w.source.ledger.close()


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    with TestClient(app_of(world.source)) as c:
        yield c


def page(client: TestClient, url: str, status: int = 200) -> str:
    r = client.get(url)
    assert r.status_code == status, (url, r.text[:400])
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in r.headers["content-security-policy"]
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    body = r.text
    lowered = body.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<link" not in lowered
    assert "url(" not in lowered and "@import" not in lowered
    assert not [t for t in re.findall(r"<[^>]+>", lowered) if " src=" in t]
    assert 'href="javascript' not in lowered
    return body


def row_of(body: str, marker: str) -> str:
    rows = [r for r in re.findall(r"<tr[^>]*>.*?</tr>", body, re.S) if marker in r]
    assert rows, marker
    return rows[0]


def cells(row: str) -> list[str]:
    return [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]


def test_overview_credits_only_the_verified_run(client: TestClient, world: World) -> None:
    body = page(client, "/")
    assert 'id="count-verified">1<' in body
    verified = cells(row_of(body, 'id="claim-tps-claim"'))
    assert verified[1] == "verified" and verified[3] == fmt_measure(world.low)
    tamper = cells(row_of(body, 'id="claim-tamper-claim"'))
    assert tamper[1] == "unverified" and tamper[3] == "no evidence"
    assert "evidence not verified" not in tamper[7]  # the tampered run is not a reason either
    # superseded claims are history, not current rows
    assert 'id="claim-tps-claim-draft"' not in body and 'id="claim-tps-claim-v0"' not in body
    # roll-up by site: both 900 tok/s claims are in Xining; only the verified run is credited
    # (min(credited bound, claimed) = 900 of 1,800 claimed)
    site = body[body.index('id="rollup-site"') :]
    xining = cells(row_of(site, "tokens_per_second (tokens/s)"))
    assert xining[:6] == [
        "Xining",
        "tokens_per_second (tokens/s)",
        "committed",
        "2",
        "1,800",
        "900",
    ]
    # the tampered run: listed, with its reason, never credited
    refused = cells(row_of(body, 'class="refused"'))
    assert refused[0] == f"run {world.tampered}"
    assert refused[2].startswith("subjects:") and RECORDS_FILE in refused[2]
    assert f"/runs/{world.good}" not in body.split('id="evidence"')[1]
    assert body.count('<svg class="chart"') >= 3  # site and vendor tokens/s + provenance mix


def test_hostile_text_is_escaped_everywhere(client: TestClient) -> None:
    escaped_img = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
    escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;"
    overview = page(client, "/")
    assert escaped_img in overview  # the site label in tables and the chart labels
    assert escaped_script in overview  # the hostile unit, in the roll-up tables and charts
    body = page(client, "/claims/hostile-claim")
    assert f'<p class="statement">{escaped_script}</p>' in body
    assert escaped_img in body and f"notes: {escaped_script}" in body
    # a javascript: URL is text, never a link; the http(s) source is a link
    assert '<span class="mono">javascript:alert(1)</span>' in body
    assert '<a href="https://example.org/a" rel="noopener noreferrer nofollow">' in body
    for url in ("/rollups/site", "/rollups/project", "/rollups/vendor"):
        page(client, url)


def test_a_claim_page_shows_its_evidence_and_its_history(client: TestClient, world: World) -> None:
    body = page(client, "/claims/tps-claim")
    behind = cells(row_of(body, 'class="behind"'))
    assert behind[0] == f"run {world.good} (entry {world.good})"
    assert behind[1] == "usable" and behind[2] == fmt_measure(world.low)
    assert f'<a href="/runs/{world.good}">' in body
    assert "Supersedes (nearest first):" in body and "tps-claim-draft" in body
    assert f'<a href="/ledger?entry={world.claim_indices["tps-claim"]}">' in body
    assert "Roofline bound" in body and "bound tok/s" in body
    draft = page(client, "/claims/tps-claim-draft")
    assert re.search(r"Supersedes \(nearest first\): <a[^>]*>tps-claim-v0</a>", draft)
    assert re.search(r"Superseded by \(nearest first\): <a[^>]*>tps-claim</a>", draft)
    v0 = page(client, "/claims/tps-claim-v0")
    assert re.search(r"Superseded by.*tps-claim-draft</a> → <a[^>]*>tps-claim</a>", v0)
    tamper = page(client, "/claims/tamper-claim")
    assert "No verified run matches this claim." in tamper
    assert "1 stored run(s) did not verify and are never credited" in tamper


def test_a_run_page_shows_figures_verdicts_charts_and_downloads(
    client: TestClient, world: World
) -> None:
    body = page(client, f"/runs/{world.good}")
    assert body.count('<svg class="chart"') == 2  # latency CDF and throughput over time
    assert 'data-series="2"' in body  # the CDF draws TTFT and E2E
    figures = cells(row_of(body, '<td class="mono">ttft_ms</td>'))
    assert figures[2] == DEFINITIONS["ttft_ms"]
    verdict = cells(row_of(body, 'class="verdict"'))
    assert verdict[0] == "token-accounting" and verdict[1] == "pass"
    assert 'href="/claims/tps-claim"' in body
    for name in sorted(p.name for p in world.good_dir.iterdir()):
        assert f'href="/runs/{world.good}/files/{name}"' in body
    bad = page(client, f"/runs/{world.tampered}")
    assert "evidence not verified: subjects:" in bad and '<svg class="chart"' not in bad


def test_downloads_are_the_run_files_byte_for_byte(client: TestClient, world: World) -> None:
    for path in sorted(world.good_dir.iterdir()):
        r = client.get(f"/runs/{world.good}/files/{path.name}")
        assert r.status_code == 200, path.name
        assert r.content == path.read_bytes()
        assert r.headers["content-type"].startswith(KNOWN_FILES[path.name].split(";")[0])
        assert r.headers["content-disposition"] == f'attachment; filename="{path.name}"'
    for name in ("report.html", "..%2Fspec.json", "ledger.sqlite3", "%2Fetc%2Fpasswd"):
        r = client.get(f"/runs/{world.good}/files/{name}")
        assert r.status_code == 404, name
    assert client.get("/runs/999999/files/spec.json").status_code == 404


def test_the_ledger_page_checks_every_signature_line(client: TestClient, world: World) -> None:
    ledger = world.source.ledger
    size = ledger.size()
    body = page(client, "/ledger")
    assert f"<b>tree size</b> {size:,}" in body
    assert "1 of 2 witness(es) cosigned, quorum 2" in body and ">not met<" in body
    lines = [cells(r) for r in re.findall(r'<tr class="sig">.*?</tr>', body, re.S)]
    assert [(c[0], c[2], c[4]) for c in lines] == [
        (ledger.origin, "log", "yes"),
        ("witness-a", "witness", "yes"),
        ("witness-b", "witness", "no"),
        ("w-c", "unknown key", "not checked"),
    ]
    assert lines[1][3] == "2023-11-14T22:13:20+00:00"
    assert lines[1][5] == "cosigned at 2023-11-14T22:13:20+00:00"
    assert lines[2][5] == "cosignature does NOT verify"
    entry = page(client, f"/ledger?entry={world.good}")
    assert '<span class="predicate">https://inferaudit.dev/inference-run/v2</span>' in entry
    assert f'<a href="/runs/{world.good}">run {world.good}</a>' in entry
    subjects = [cells(r)[0] for r in re.findall(r'<tr class="subject">.*?</tr>', entry, re.S)]
    assert RECORDS_FILE in subjects and "spec.json" in subjects
    hostile = world.claim_indices["hostile-claim"]
    claim_entry = page(client, f"/ledger?entry={hostile}")
    assert '<a href="/claims/hostile-claim">hostile-claim</a>' in claim_entry
    assert "https://inferaudit.dev/capacity-claim/v1" in claim_entry
    assert "&lt;script&gt;" in claim_entry  # the statement's JSON, escaped
    missing = page(client, f"/ledger?entry={size}", 404)
    assert f"no entry {size} in the log (its size is {size})" in missing


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/claims/NOT_A_CLAIM", 400, "a claim id is 3 to 81 characters"),
        ("/claims/%3Cscript%3E", 400, "a claim id is 3 to 81 characters"),
        ("/claims/no-such-claim", 404, "no claim no-such-claim in the registry"),
        ("/runs/abc", 400, "a run&#39;s index must be a non-negative integer"),
        ("/runs/-1", 400, "a run&#39;s index must be a non-negative integer"),
        ("/runs/01", 400, "a run&#39;s index must be a non-negative integer"),
        ("/runs/99999999999999999999", 400, "a run&#39;s index must be a non-negative"),
        ("/runs/999999", 404, "no evidence stored for ledger entry 999999"),
        ("/ledger?entry=x", 400, "entry must be a non-negative integer"),
        ("/ledger?entry=+1", 400, "entry must be a non-negative integer"),
        ("/ledger?page=0", 400, "page must be a positive integer"),
        ("/ledger?page=9", 404, "no page 9 (there are 1)"),
        ("/?page=2", 404, "no page 2 (there are 1)"),
        ("/runs?page=%E2%91%A0", 400, "page must be a positive integer"),
        ("/rollups/%3Cscript%3E", 404, "no roll-up by &#39;&lt;script&gt;&#39;"),
    ],
)
def test_bad_input_is_400_and_unknown_things_404(
    client: TestClient, url: str, status: int, message: str
) -> None:
    body = page(client, url, status)
    assert f'<p class="message">{message}' in body


def test_pages_never_verify_and_read_one_page_of_entries(
    client: TestClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("a page verified a run")

    monkeypatch.setattr(evidence_mod, "open_verified", refuse)
    spans: list[int] = []
    real = Ledger.entries

    def entries(self: Ledger, start: int, end: int) -> list[bytes]:
        spans.append(end - start)
        return real(self, start, end)

    monkeypatch.setattr(Ledger, "entries", entries)
    for url in ("/", "/runs", f"/runs/{world.good}", "/claims/tps-claim", "/ledger"):
        page(client, url)
    assert spans and max(spans) <= 50


def test_pages_of_a_long_list() -> None:
    assert Page.of(120, "3") == Page(3, 3, 120, 100, 120)
    assert Page.of(0, None) == Page(1, 1, 0, 0, 0)
    with pytest.raises(PageError, match="no page 4"):
        Page.of(120, "4")
