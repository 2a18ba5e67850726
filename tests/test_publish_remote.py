"""Sealing into a remote log service: `seal.remote` (submit, upload the bundle), `inferaudit run
--publish` against the twin, `claims import --publish`, each checked offline afterwards with
`verify_run` / `inferaudit verify` under a trust policy naming the service's log key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from conftest_ledger import SEED, make_run_dir
from inferaudit.audit.run import RunOptions, seal
from inferaudit.errors import ConfigError
from inferaudit.home import make_engine
from inferaudit.intent.claims import SIGNER_NAME, ClaimStore, dump_claims
from inferaudit.measure.rundir import ENVELOPE_FILE, PROOF_FILE, STATEMENT_FILE
from inferaudit.seal.keys import (
    DEFAULT_SIGNER_NAME,
    Signer,
    TrustPolicy,
    Verifier,
    load_or_create_signer,
)
from inferaudit.seal.ledger.note import parse_tlog_proof, split_note, verify_cosignature
from inferaudit.seal.ledger.store import Ledger
from inferaudit.seal.remote import RemoteLog, RemoteLogError, read_token, seal_run_remote
from inferaudit.seal.verify import verify_run
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from test_service import Served, check_proof, make_claim, prepare, serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db = f"sqlite:///{tmp_path / 'service.sqlite3'}"
    tokens = prepare(db, auditors=())
    with serve(tmp_path / "service", db) as s:
        s.tokens = tokens
        yield s


def register(served: Served, key: Verifier) -> None:
    with served.client(served.tokens["admin"]) as c:
        assert c.post("/api/v1/auditors", json={"key": key.text()}).status_code == 200


def _policy(signer: Signer, served: Served) -> TrustPolicy:
    return TrustPolicy(signers=(signer.verifier(),), logs=(served.log_key,))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_a_run_sealed_remotely_verifies_offline_and_its_bundle_on_the_service(
    served: Served, tmp_path: Path
) -> None:
    home = tmp_path / "auditor-home"
    signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    register(served, signer.verifier())
    run = make_run_dir(tmp_path / "run", seed=SEED)
    remote = RemoteLog(served.url, served.tokens["both"])
    out = seal_run_remote(run, signer, remote)
    assert out["ledger_index"] == 0
    assert out["ledger_origin"] == "inferaudit-ledger"
    assert out["log_key"] == served.log_key.text()
    envelope = (run / ENVELOPE_FILE).read_bytes()
    assert orjson.loads(envelope)["payload"]  # the signed envelope, as a local seal writes it
    assert (run / STATEMENT_FILE).exists()
    assert check_proof((run / PROOF_FILE).read_text(), envelope, served.log_key) == (0, 1)
    report = verify_run(run, _policy(signer, served))
    assert report.ok, [s for s in report.steps if not s.ok]
    assert report.verified is not None and report.verified.ledger_index == 0
    # the run directory goes to the service, which verifies it under its own policy
    bundle = remote.upload_bundle(0, run)
    assert (bundle.index, bundle.status, bundle.reason) == (0, "verified", None)
    # sealing the same directory again is idempotent: same entry, same files
    again = seal_run_remote(run, signer, remote)
    assert again["ledger_index"] == 0
    assert (run / ENVELOPE_FILE).read_bytes() == envelope
    # a bundle whose envelope is another entry's is refused
    other = make_run_dir(tmp_path / "other", n=9)
    seal_run_remote(other, signer, remote)
    with pytest.raises(RemoteLogError, match=r"/api/v1/runs/0/bundle: HTTP 422: bundle's "):
        remote.upload_bundle(0, other)


def test_the_remote_seal_through_audit_run_uploads_the_bundle(
    served: Served, tmp_path: Path
) -> None:
    home = tmp_path / "auditor-home"
    register(served, load_or_create_signer(home, DEFAULT_SIGNER_NAME).verifier())
    run = make_run_dir(tmp_path / "run", n=12)
    options = RunOptions(data_dir=home, publish=served.url, publish_token=served.tokens["both"])
    assert served.tokens["both"] not in repr(options)
    out = seal(run, options)
    assert (out["ledger_index"], out["bundle"], out["log_url"]) == (0, "verified", served.url)
    assert not (home / "ledger.sqlite3").exists()  # the local ledger was never touched


def test_remote_errors_are_one_line_and_never_show_the_token(
    served: Served, tmp_path: Path
) -> None:
    run = make_run_dir(tmp_path / "run", n=8)
    signer = Signer(name="unregistered", seed=bytes(range(7, 39)))
    secret = "iat_" + "Z" * 43
    with pytest.raises(RemoteLogError) as bad_token:
        seal_run_remote(run, signer, RemoteLog(served.url + "/", secret))
    assert str(bad_token.value) == (
        f"{served.url}/api/v1/evidence: HTTP 401: a valid bearer token is required"
    )
    with pytest.raises(RemoteLogError) as unknown:
        seal_run_remote(run, signer, RemoteLog(served.url, served.tokens["submit-evidence"]))
    assert str(unknown.value).startswith(
        f"{served.url}/api/v1/evidence: HTTP 422: envelope signature: unknown key (unregistered+"
    )
    assert served.tokens["submit-evidence"] not in str(unknown.value)
    assert not (run / ENVELOPE_FILE).exists()  # nothing written when the log refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteLogError, match=rf"^http://127.0.0.1:{port}/checkpoint: ConnectError"):
        RemoteLog(f"http://127.0.0.1:{port}", secret).checkpoint()
    with pytest.raises(ConfigError, match="expected http"):
        RemoteLog("ftp://example", secret)


def test_a_token_comes_from_the_environment_or_an_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERAUDIT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="no token: set INFERAUDIT_TOKEN or give --token-file"):
        read_token(None)
    monkeypatch.setenv("INFERAUDIT_TOKEN", " iat_abc \n")
    assert read_token(None) == "iat_abc"
    path = tmp_path / "token"
    path.write_text("iat_from_file\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as loose:
        read_token(path)
    assert str(loose.value) == (
        f"token file {path} is readable by others (mode 0644); chmod 600 {path}"
    )
    path.chmod(0o600)
    assert read_token(path) == "iat_from_file"
    path.write_text("two words\n")
    with pytest.raises(ConfigError, match="does not hold a token"):
        read_token(path)


def test_inferaudit_run_publish_end_to_end_then_verify(served: Served, tmp_path: Path) -> None:
    home = tmp_path / "auditor-home"
    signer = load_or_create_signer(home, DEFAULT_SIGNER_NAME)
    register(served, signer.verifier())
    token_file = tmp_path / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, served.tokens["submit-evidence"].encode() + b"\n")
    os.close(fd)
    run = tmp_path / "run"
    with start_twin(TwinOptions(ttft_ms=5, tpot_ms=1)) as twin:
        done = _cli(
            "run", "--endpoint", twin.base_url, "--model", "inferaudit-twin",
            "--concurrency", "2", "--requests", "6", "--input-tokens", "16",
            "--output-tokens", "4", "--checks", "none", "--max-lag-ms", "100", "--workers", "1",
            "--out", str(run), "--publish", served.url, "--token-file", str(token_file),
            env={"INFERAUDIT_HOME": str(home)},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bundle: verified" in done.stdout
    assert "ledger_index: 0" in done.stdout
    assert served.tokens["submit-evidence"] not in done.stdout + done.stderr
    assert not (home / "ledger.sqlite3").exists()
    policy = tmp_path / "trust.txt"
    policy.write_text(_policy(signer, served).text())
    checked = _cli("verify", str(run), "--trust", str(policy), env={"INFERAUDIT_HOME": str(home)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # an unreachable service is refused before anything is measured
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = _cli(
        "run", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--concurrency", "1",
        "--requests", "2", "--out", str(tmp_path / "r2"), "--publish", f"http://127.0.0.1:{port}",
        env={"INFERAUDIT_HOME": str(home), "INFERAUDIT_TOKEN": "iat_x"},
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(f"error: http://127.0.0.1:{port}/checkpoint: Connect")


def test_claims_import_publish_logs_each_claim_on_the_service(
    served: Served, tmp_path: Path
) -> None:
    home = tmp_path / "auditor-home"
    register(served, load_or_create_signer(home, SIGNER_NAME).verifier())
    claims = tmp_path / "claims.json"
    made = [make_claim("remote-claim-1", 900.0), make_claim("remote-claim-2", 1800.0)]
    claims.write_text(dump_claims(made, "json"))
    env = {"INFERAUDIT_HOME": str(home), "INFERAUDIT_TOKEN": served.tokens["submit-claims"]}
    done = _cli("claims", "import", str(claims), "--publish", served.url, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == [
        "remote-claim-1: logged at index 0",
        "remote-claim-2: logged at index 1",
    ]
    engine = make_engine(served.db)
    try:
        stored = {s.claim.claim_id: s.ledger_index for s in ClaimStore(engine).all()}
        size = Ledger(engine).size()
    finally:
        engine.dispose()
    assert stored == {"remote-claim-1": 0, "remote-claim-2": 1}
    assert size == 2
    assert not (home / "ledger.sqlite3").exists()  # nothing stored locally
    again = _cli("claims", "import", str(claims), "--publish", served.url, env=env)
    assert again.stdout.splitlines()[:2] == done.stdout.splitlines()[:2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def witness(tmp_path: Path, log: Verifier) -> Iterator[tuple[str, Verifier]]:
    """`inferaudit witness serve` for ``log`` on a free port; (its URL, its cosignature key)."""
    from inferaudit.seal.keys import parse_verifier

    home = tmp_path / "witness"
    made = _cli("witness", "init", "--data-dir", str(home), "--name", "w1", env={})
    assert made.returncode == 0, made.stderr
    key = parse_verifier(made.stdout.strip().splitlines()[-1])
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferaudit", "witness", "serve", "--data-dir", str(home),
         "--log", f"{log.name}={log.text()}", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.post(url + "/add-checkpoint", content=b"", timeout=5)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "witness did not start"
                time.sleep(0.2)
        yield url, key
    finally:
        proc.terminate()
        proc.wait(30)


def test_answers_carry_the_witness_cosignature(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'service.sqlite3'}"
    data = tmp_path / "service"
    with Ledger(make_engine(db), signer=load_or_create_signer(data, "inferaudit-ledger")) as ledger:
        ledger.sign_checkpoint()
        log = ledger.signer.verifier() if ledger.signer else None
    assert log is not None
    signer = load_or_create_signer(tmp_path / "home", DEFAULT_SIGNER_NAME)
    tokens = prepare(db, auditors=(signer,))
    with (
        witness(tmp_path, log) as (url, wkey),
        serve(data, db, "--witness", f"{url}={wkey.text()}", "--witness-quorum", "1") as served,
    ):
        served.tokens = tokens
        run = make_run_dir(tmp_path / "run", n=10)
        out = seal_run_remote(run, signer, RemoteLog(served.url, tokens["submit-evidence"]))
        with served.client() as c:
            latest = c.get("/checkpoint").text
    proof = parse_tlog_proof((run / PROOF_FILE).read_text())
    assert proof.checkpoint == latest
    text, sigs = split_note(latest)
    assert [s.name for s in sigs] == ["inferaudit-ledger", "w1"]
    assert verify_cosignature(text, sigs[1], wkey) is not None
    assert out["ledger_index"] == 0
    policy = TrustPolicy(signers=(signer.verifier(),), logs=(log,))
    assert verify_run(run, policy).ok
