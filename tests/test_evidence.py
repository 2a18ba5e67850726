"""Evidence bundles: DSSE PAE vector, in-toto statement, envelope, sealing, key files."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest
import rfc8785

from conftest_ledger import make_run_dir
from inferaudit.errors import ConfigError, VerificationError
from inferaudit.seal.evidence import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    build_statement,
    envelope_leaf,
    open_envelope,
    pae,
    parse_envelope,
    seal_run,
    sign_envelope,
)
from inferaudit.seal.keys import (
    Signer,
    generate_key,
    key_paths,
    load_or_create_signer,
    parse_signer,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, parse_tlog_proof
from inferaudit.seal.ledger.store import open_ledger


def test_pae_vector() -> None:
    # secure-systems-lab/dsse protocol.md
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", "é".encode()) == "DSSEv1 1 t 2 é".encode()  # byte lengths, not characters


def test_envelope_sign_and_open() -> None:
    signer = Signer(name="runner.test", seed=bytes(range(32)))
    env = sign_envelope(b'{"a":1}', signer)
    assert env["payloadType"] == PAYLOAD_TYPE
    assert env["signatures"][0]["keyid"] == signer.keyid == f"runner.test+{signer.key_hash:08x}"
    payload, key = open_envelope(env, [signer.verifier()])
    assert (payload, key) == (b'{"a":1}', signer.verifier())
    # The signature covers PAE(type, body): verify it independently.
    sig = base64.b64decode(env["signatures"][0]["sig"])
    assert signer.verifier().verify(pae(PAYLOAD_TYPE, b'{"a":1}'), sig)
    other = Signer(name="runner.test", seed=bytes(32))
    with pytest.raises(VerificationError, match="unknown key"):
        open_envelope(env, [other.verifier()])
    forged = dict(env, payload=base64.b64encode(b'{"a":2}').decode())
    with pytest.raises(VerificationError, match=r"invalid signature by runner\.test"):
        open_envelope(forged, [signer.verifier()])
    with pytest.raises(VerificationError, match="payloadType"):
        open_envelope(dict(env, payloadType="text/plain"), [signer.verifier()])
    with pytest.raises(VerificationError):
        parse_envelope(b'{"payload": "", "signatures": []}')


def test_statement_of_a_run(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=10)
    st = build_statement(run)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == PREDICATE_TYPE == "https://inferaudit.dev/inference-run/v1"
    assert st["subject"] == [
        {"name": n, "digest": {"sha256": hashlib.sha256((run / n).read_bytes()).hexdigest()}}
        for n in ("records.jsonl", "spec.json")
    ]
    summary = orjson.loads((run / "summary.json").read_bytes())
    pred = st["predicate"]
    assert pred["verdicts"] == summary.pop("checks")
    assert pred["summary"] == summary
    assert pred["spec"] == orjson.loads((run / "spec.json").read_bytes())
    assert pred["models"]["data"][0]["id"] == "tiny-model"
    assert pred["environment"]["host"] == "test"
    assert pred["meta"] == {"started_wall": "2026-11-29T00:00:00Z"}
    assert pred["tool"]["name"] == "inferaudit"


def test_out_of_domain_numbers_refused(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=5)
    summary = orjson.loads((run / "summary.json").read_bytes())
    summary["requests"] = 2**53
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    signer = Signer(name="runner.test", seed=bytes(32))
    with pytest.raises(ConfigError, match="canonicalised"):
        seal_run(run, signer, None)
    summary["requests"] = 2**53 - 1
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    seal_run(run, signer, None)


def test_large_models_answer_bound_by_digest(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=5)
    models = {"data": [{"id": f"model-{i:05d}"} for i in range(2000)]}
    (run / "meta.json").write_bytes(orjson.dumps({"models": models}))
    pred = build_statement(run)["predicate"]
    assert pred["models"]["sha256"] == hashlib.sha256(rfc8785.dumps(models)).hexdigest()


def test_seal_without_and_with_ledger(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=12)
    home = tmp_path / "home"
    signer = load_or_create_signer(home, "inferaudit-runner")
    out = seal_run(run, signer, None)
    assert not (run / "entry.tlog-proof").exists()
    payload = (run / "statement.json").read_bytes()
    assert payload == rfc8785.dumps(orjson.loads(payload))  # canonical bytes
    env_bytes = (run / "envelope.dsse.json").read_bytes()
    env = parse_envelope(env_bytes)
    assert envelope_leaf(env) == env_bytes
    assert base64.b64decode(env["payload"]) == payload
    assert out["statement_sha256"] == hashlib.sha256(payload).hexdigest()

    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([b"an earlier entry", b"another"])
        out = seal_run(run, signer, ledger)
        again = seal_run(run, signer, ledger)  # Ed25519 is deterministic: same leaf, same index
        log_key = ledger.signer.verifier()
    assert out["ledger_index"] == again["ledger_index"] == 2
    proof = parse_tlog_proof((run / "entry.tlog-proof").read_text())
    cp, _ = open_checkpoint(proof.checkpoint, [log_key])
    leaf_hash = merkle.hash_leaf(env_bytes)
    merkle.verify_inclusion(proof.index, cp.size, leaf_hash, list(proof.hashes), cp.root)

    # Secrets: no private key material in the run directory or the ledger database.
    secrets = [signer.seed, signer.private_text().encode(), base64.b64encode(signer.seed)]
    for path in [*run.iterdir(), home / "ledger.sqlite3"]:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, path


def test_key_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = os.umask(0)  # the mode must come from os.open, not from the umask or a later chmod
    try:
        signer = generate_key(home, "alice.test")
    finally:
        os.umask(old)
    priv, pub = key_paths(home, "alice.test")
    assert priv.stat().st_mode & 0o777 == 0o600
    assert parse_signer(priv.read_text()) == signer
    assert pub.read_text().strip() == signer.verifier().text()
    assert "PRIVATE" not in pub.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(home, "alice.test")
    assert load_or_create_signer(home, "alice.test") == signer
    assert load_or_create_signer(home, "bob.test") != signer
    a, _ = key_paths(home, "example.com/log")
    assert a.parent == home / "keys"  # names with '/' stay inside the keys directory
