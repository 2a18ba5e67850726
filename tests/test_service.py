"""The log service (`inferaudit serve`) as a real server process on 127.0.0.1, over SQLite and
(when INFERAUDIT_TEST_PG_URL is set) a private PostgreSQL schema: submissions, the C2SP
tlog-tiles reads checked against a local recomputation, and proofs fetched over HTTP checked
with the offline verifier (``seal.ledger.note`` and ``merkle``)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from conftest_ledger import SEED, database, make_run_dir
from inferaudit.home import make_engine
from inferaudit.intent.claims import Claim, ClaimInput, ClaimStore, build_claim, claim_statement
from inferaudit.present.web.auditors import AuditorKeys
from inferaudit.present.web.tokens import TokenStore
from inferaudit.seal.evidence import build_statement
from inferaudit.seal.keys import Signer, Verifier, load_verifier
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, parse_checkpoint, parse_tlog_proof
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, Ledger, open_ledger
from inferaudit.seal.ledger.tiles import export_tiles
from inferaudit.seal.publish import publish

READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
AUDITOR = Signer(name="auditor-a", seed=bytes(range(1, 33)))
OTHER = Signer(name="auditor-b", seed=bytes(range(2, 34)))  # never registered


@dataclass
class Served:
    """A running `inferaudit serve` and what the tests need to talk to it."""

    url: str
    data_dir: Path
    db: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)  # everything it wrote (stdout + stderr)
    tokens: dict[str, str] = field(default_factory=dict)  # scope name -> token

    @property
    def log_key(self) -> Verifier:
        return load_verifier(self.data_dir, DEFAULT_LOG_NAME)

    def output(self) -> str:
        return "\n".join(self.lines)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def post(self, path: str, body: bytes, scope: str = "submit-evidence") -> httpx.Response:
        with self.client(self.tokens[scope]) as c:
            return c.post(path, content=body, headers={"Content-Type": "application/json"})


def _reader(stream: object, lines: list[str], ready: threading.Event, port: list[int]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.rstrip("\n"))
        m = READY.search(line)
        if m:
            port.append(int(m.group(1)))
            ready.set()
    ready.set()  # the process ended


@contextmanager
def serve(data_dir: Path, db: str, *args: str) -> Iterator[Served]:
    """`python -m inferaudit serve` on a free port (port 0: the OS picks), stopped afterwards."""
    cmd = [sys.executable, "-m", "inferaudit", "serve", "--data-dir", str(data_dir), "--db", db]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines, ready, port), daemon=True)
    reader.start()
    try:
        ready.wait(120)
        if not port:
            proc.wait(30)
            raise AssertionError("the service did not start:\n" + "\n".join(lines))
        yield Served(f"http://127.0.0.1:{port[0]}", data_dir, db, proc, lines)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        reader.join(10)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a private schema on the PostgreSQL server (its URL
    selects the schema through ``options=-csearch_path=...``)."""
    with database(request.param, tmp_path) as url:
        yield url


def prepare(db: str, auditors: tuple[Signer, ...] = (AUDITOR,)) -> dict[str, str]:
    """Tokens (one per scope, plus "both" for submit-evidence + submit-claims) and auditor keys,
    made in the service's database before it starts (as `inferaudit log ...` would)."""
    engine = make_engine(db)
    try:
        store = TokenStore(engine)
        tokens = {s: store.add(s, [s]) for s in ("submit-evidence", "submit-claims", "admin")}
        tokens["both"] = store.add("both", ["submit-evidence", "submit-claims"])
        keys = AuditorKeys(engine)
        for signer in auditors:
            keys.add(signer.verifier())
    finally:
        engine.dispose()
    return tokens


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[Served]:
    tokens = prepare(db_url)
    with serve(tmp_path / "service", db_url) as s:
        s.tokens = tokens
        yield s


def run_envelope(run_dir: Path, signer: Signer = AUDITOR) -> bytes:
    """A sealed-run envelope (RFC 8785 bytes) for a hand-made run directory."""
    return publish(build_statement(run_dir), signer, None).envelope


def check_proof(proof_text: str, leaf: bytes, log: Verifier) -> tuple[int, int]:
    """Verify a tlog-proof offline against ``log``; (index, checkpoint size)."""
    proof = parse_tlog_proof(proof_text)
    cp, _ = open_checkpoint(proof.checkpoint, [log])
    merkle.verify_inclusion(proof.index, cp.size, merkle.hash_leaf(leaf), proof.hashes, cp.root)
    return proof.index, cp.size


def test_submit_twice_gets_one_index_and_a_proof_that_verifies_offline(
    served: Served, tmp_path: Path
) -> None:
    first = run_envelope(make_run_dir(tmp_path / "r1", seed=SEED))
    second = run_envelope(make_run_dir(tmp_path / "r2", n=12))
    a = served.post("/api/v1/evidence", first)
    again = served.post("/api/v1/evidence", first)
    b = served.post("/api/v1/evidence", second)
    assert [r.status_code for r in (a, again, b)] == [200, 200, 200]
    ja, jagain, jb = a.json(), again.json(), b.json()
    assert (ja["index"], jagain["index"], jb["index"]) == (0, 0, 1)
    assert ja["origin"] == DEFAULT_LOG_NAME
    assert ja["log_key"] == served.log_key.text()
    assert check_proof(ja["proof"], first, served.log_key) == (0, 1)
    assert check_proof(jagain["proof"], first, served.log_key) == (0, 1)
    assert check_proof(jb["proof"], second, served.log_key) == (1, 2)
    assert parse_tlog_proof(jb["proof"]).checkpoint == jb["checkpoint"]
    # the proof fetched over HTTP, against the latest checkpoint, verifies too
    with served.client() as c:
        text_proof = c.get("/api/v1/tlog-proof/0")
        entry = c.get("/api/v1/entries/1")
        missing = c.get("/api/v1/entries/2")
    assert text_proof.status_code == 200
    assert text_proof.headers["content-type"] == "text/plain; charset=utf-8"
    assert check_proof(text_proof.text, first, served.log_key) == (0, 2)
    assert entry.json() == {
        "index": 1,
        "leaf_hash": merkle.hash_leaf(second).hex(),
        "envelope": orjson.loads(second),
    }
    assert missing.status_code == 404


def test_checkpoint_and_tiles_are_the_bytes_of_a_local_export(
    served: Served, tmp_path: Path
) -> None:
    # 300 leaves in the service's ledger already, then one envelope over HTTP: 301 entries, a
    # full and a partial tile on level 0 and a partial tile on level 1.
    leaves = [b"leaf %d" % i for i in range(300)]
    with Ledger(make_engine(served.db)) as ledger:
        ledger.append(leaves)
    envelope = run_envelope(make_run_dir(tmp_path / "r1"))
    answer = served.post("/api/v1/evidence", envelope)
    assert answer.json()["index"] == 300
    leaves.append(envelope)
    # the same leaves in a ledger of our own, exported as static tiles
    local = tmp_path / "local"
    with open_ledger(f"sqlite:///{local / 'l.sqlite3'}", local) as mine:
        mine.append(leaves)
        mine.sign_checkpoint()
        export_tiles(mine, local / "tiles")
        root = mine.root()
    with served.client() as c:
        cp_answer = c.get("/checkpoint")
        assert cp_answer.headers["cache-control"] == "no-store"
        cp, _ = open_checkpoint(cp_answer.text, [served.log_key])
        assert (cp.origin, cp.size, cp.root) == (DEFAULT_LOG_NAME, 301, root)
        files = sorted(p for p in (local / "tiles" / "tile").rglob("*") if p.is_file())
        names = [p.relative_to(local / "tiles").as_posix() for p in files]
        assert names == [
            "tile/0/000",
            "tile/0/001.p/45",
            "tile/1/000.p/1",
            "tile/entries/000",
            "tile/entries/001.p/45",
        ]
        for path, name in zip(files, names, strict=True):
            got = c.get(f"/{name}")
            assert got.status_code == 200, name
            assert got.content == path.read_bytes(), name
            assert got.headers["content-type"] == "application/octet-stream"
            full = ".p/" not in name
            assert got.headers["cache-control"] == (
                "public, max-age=31536000, immutable" if full else "public, max-age=60"
            )
        # a narrower partial tile is the prefix an earlier export wrote
        narrow = c.get("/tile/0/001.p/3")
        assert narrow.content == (local / "tiles" / "tile/0/001.p/45").read_bytes()[: 3 * 32]
        # beyond the checkpoint, or not a canonical tile path: 404
        for bad in (
            "/tile/0/001",
            "/tile/0/001.p/46",
            "/tile/0/002.p/1",
            "/tile/1/000",
            "/tile/2/000.p/1",
            "/tile/entries/001",
            "/tile/0/x000/000",
            "/tile/0/0",
            "/tile/0/000.p/0",
            "/tile/0/000.p/256",
            "/tile/0/001.p/045",
            "/tile/00/000",
            "/tile/+0/000",
            "/tile/0/00a",
        ):
            assert c.get(bad).status_code == 404, bad


def test_proof_endpoints_verify_with_the_merkle_verifier(served: Served, tmp_path: Path) -> None:
    envelopes = [run_envelope(make_run_dir(tmp_path / f"r{i}", n=8 + i)) for i in range(5)]
    for env in envelopes:
        assert served.post("/api/v1/evidence", env).status_code == 200
    with served.client() as c:
        cp, _ = open_checkpoint(c.get("/checkpoint").text, [served.log_key])
        assert cp.size == 5
        old_note = c.get("/api/v1/tlog-proof/0")  # its checkpoint is the size-5 one
        inclusion = c.get("/api/v1/proof/inclusion", params={"index": 3, "size": 5}).json()
        consistency = c.get("/api/v1/proof/consistency", params={"old": 2, "size": 5}).json()
        beyond = c.get("/api/v1/proof/inclusion", params={"index": 3, "size": 6})
        malformed = c.get("/api/v1/proof/inclusion", params={"index": "03", "size": 5})
    assert old_note.status_code == 200
    assert (inclusion["index"], inclusion["size"]) == (3, 5)
    merkle.verify_inclusion(
        3,
        5,
        merkle.hash_leaf(envelopes[3]),
        [base64.b64decode(h) for h in inclusion["hashes"]],
        cp.root,
    )
    root2 = merkle.hash_children(merkle.hash_leaf(envelopes[0]), merkle.hash_leaf(envelopes[1]))
    merkle.verify_consistency(
        2, 5, [base64.b64decode(h) for h in consistency["hashes"]], root2, cp.root
    )
    assert beyond.status_code == 404
    assert malformed.status_code == 400
    assert "canonical decimal" in malformed.json()["error"]


def make_claim(claim_id: str = "svc-claim", value: float = 900.0) -> Claim:
    return build_claim(
        ClaimInput(
            claim_id=claim_id,
            statement=f"dep-a serves Llama 3.1 8B at {value} tokens/s",
            status="operational_claimed",
            certainty="unknown",
            source_url="https://vendor.example/claim",
            source_class="vendor",
            deployment="dep-a",
            accelerator="H100-SXM",
            count=1,
            metric="tokens_per_second",
            value=value,
            unit="tokens/s",
            basis="announced",
            model="llama-3.1-8b",
        )
    )


def claim_envelope(claim: Claim, signer: Signer = AUDITOR) -> bytes:
    return publish(claim_statement(claim), signer, None).envelope


def test_claims_are_logged_and_stored_with_their_index(served: Served, tmp_path: Path) -> None:
    served.post("/api/v1/evidence", run_envelope(make_run_dir(tmp_path / "r1")))
    claim = make_claim()
    envelope = claim_envelope(claim)
    first = served.post("/api/v1/claims", envelope, "submit-claims")
    again = served.post("/api/v1/claims", envelope, "both")
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["index"] == again.json()["index"] == 1
    assert first.json()["claim_id"] == "svc-claim"
    assert check_proof(first.json()["proof"], envelope, served.log_key) == (1, 2)
    changed = served.post(
        "/api/v1/claims", claim_envelope(make_claim(value=950.0)), "submit-claims"
    )
    assert changed.status_code == 422
    assert "svc-claim: already stored with other content" in changed.json()["error"]
    engine = make_engine(served.db)
    try:
        stored = ClaimStore(engine).get("svc-claim")
    finally:
        engine.dispose()
    assert stored.ledger_index == 1
    assert stored.claim == claim
    # a claim is not run evidence, nor run evidence a claim
    assert served.post("/api/v1/evidence", envelope).status_code == 422
    run = run_envelope(make_run_dir(tmp_path / "r2", n=9))
    wrong = served.post("/api/v1/claims", run, "submit-claims")
    assert wrong.status_code == 422
    assert (
        "predicateType must be one of https://inferaudit.dev/capacity-claim/v1"
        in (wrong.json()["error"])
    )


def test_the_log_key_is_made_0600_and_the_first_checkpoint_signed(served: Served) -> None:
    key_file = served.data_dir / "keys" / f"{DEFAULT_LOG_NAME}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with served.client() as c:
        note = c.get("/checkpoint").text
        page = c.get("/")  # the dashboard is mounted on the same service
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    cp = parse_checkpoint(note.split("\n\n")[0] + "\n")
    assert (cp.origin, cp.size, cp.root) == (DEFAULT_LOG_NAME, 0, hashlib.sha256().digest())


def test_below_the_witness_quorum_the_entry_is_logged_and_answered_503(tmp_path: Path) -> None:
    """A witness that does not answer: the submission is logged (its index is kept) but refused
    with 503 and one line; sending it again asks again and gets the same index, never a second
    entry."""
    from inferaudit.seal.keys import ALG_COSIGNATURE_V1, key_id
    from service_procs import free_port

    pub = bytes(range(40, 72))
    down = Verifier("w-down", key_id("w-down", ALG_COSIGNATURE_V1, pub), pub, ALG_COSIGNATURE_V1)
    db = f"sqlite:///{tmp_path / 'service.sqlite3'}"
    tokens = prepare(db)
    envelope = run_envelope(make_run_dir(tmp_path / "r1", seed=SEED))
    witness = f"http://127.0.0.1:{free_port()}={down.text()}"
    with serve(tmp_path / "service", db, "--witness", witness, "--witness-timeout", "2") as s:
        s.tokens = tokens
        for _ in range(2):
            answer = s.post("/api/v1/evidence", envelope)
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert "\n" not in error
            assert error.startswith(
                "the entry is logged, but 0 of the quorum of 1 witnesses cosigned its checkpoint"
            )
            assert error.endswith("submit again to retry")
        with s.client() as c:
            assert c.get("/api/v1/entries/0").json()["index"] == 0
            assert c.get("/api/v1/entries/1").status_code == 404
