"""Evidence bundles: DSSE PAE and envelope known answers, in-toto statements (v2 and v1),
sealing, key files and their permissions."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest
import rfc8785

from conftest_ledger import make_run_dir
from inferaudit.errors import ConfigError, DataError, VerificationError
from inferaudit.seal.evidence import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE_V1,
    PREDICATE_TYPE_V2,
    build_statement,
    envelope_leaf,
    open_envelope,
    pae,
    parse_envelope,
    sign_envelope,
)
from inferaudit.seal.keys import (
    KeyPermissionError,
    Signer,
    generate_key,
    key_paths,
    load_or_create_signer,
    load_signer,
    parse_signer,
)
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, parse_tlog_proof
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run

# RFC 8032 §7.1 TEST 1: the secret key (seed), its public key and its signature of b"".
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIG_EMPTY = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_pae_vector() -> None:
    # secure-systems-lab/dsse protocol.md
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", "é".encode()) == "DSSEv1 1 t 2 é".encode()  # byte lengths, not characters


def test_dsse_ed25519_known_answer_envelope() -> None:
    """A fixed key and payload give exactly these PAE and envelope bytes (Ed25519 is
    deterministic): any change to PAE, base64, canonical JSON, keyid or signing shows here."""
    signer = Signer(name="inferaudit-runner", seed=RFC8032_SEED)
    assert signer.public.hex() == RFC8032_PUBLIC  # the RFC's key, so the signer is RFC 8032
    assert signer.sign(b"").hex() == RFC8032_SIG_EMPTY
    want_id = hashlib.sha256(b"inferaudit-runner\n\x01" + signer.public).digest()[:4].hex()
    assert signer.keyid == f"inferaudit-runner+{want_id}" == "inferaudit-runner+86209d20"
    payload = (
        b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"n":1},'
        b'"predicateType":"https://inferaudit.dev/inference-run/v2","subject":[]}'
    )
    assert pae(PAYLOAD_TYPE, payload) == b"DSSEv1 28 application/vnd.in-toto+json 134 " + payload
    expected = (
        b'{"payload":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJwcmVkaWNhdGUiOnsib'
        b"iI6MX0sInByZWRpY2F0ZVR5cGUiOiJodHRwczovL2luZmVyYXVkaXQuZGV2L2luZmVyZW5jZS1ydW4vdjIiLCJzdW"
        b'JqZWN0IjpbXX0=","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"infe'
        b'raudit-runner+86209d20","sig":"iOFen9++jshZ6CGUOxZXUKNBsuAIyfB+B5zK+yR0GXFNzJxouLUIHSg4o6'
        b'MpqhXLCtql+hyL0sVmMnZr+/97BA=="}]}'
    )
    env = sign_envelope(payload, signer)
    assert envelope_leaf(env) == expected
    sig = base64.b64decode(env["signatures"][0]["sig"])
    assert signer.verifier().verify(pae(PAYLOAD_TYPE, payload), sig)
    assert open_envelope(parse_envelope(expected), [signer.verifier()]) == (
        payload,
        signer.verifier(),
    )
    assert merkle.hash_leaf(expected).hex() == hashlib.sha256(b"\x00" + expected).hexdigest()


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


def _digests(run: Path, names: tuple[str, ...]) -> list[dict[str, object]]:
    return [
        {"name": n, "digest": {"sha256": hashlib.sha256((run / n).read_bytes()).hexdigest()}}
        for n in names
    ]


def test_statement_of_a_v2_run(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=10)
    st = build_statement(run)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == PREDICATE_TYPE_V2 == "https://inferaudit.dev/inference-run/v2"
    bound = ("records.jsonl", "spec.json", "summary.json", "verdicts.json", "meta.json")
    assert st["subject"] == _digests(run, bound)
    pred = st["predicate"]
    assert pred["verdicts"] == orjson.loads((run / "verdicts.json").read_bytes())
    assert pred["summary"] == orjson.loads((run / "summary.json").read_bytes())
    assert "checks" not in pred["summary"]
    assert pred["spec"] == orjson.loads((run / "spec.json").read_bytes())
    assert pred["models"]["data"][0]["id"] == "tiny-model"
    assert pred["environment"]["host"] == "test"
    assert pred["meta"] == {"started_wall": "2026-11-29T00:00:00Z"}
    assert pred["tool"]["name"] == "inferaudit"
    # Every evidence file present is bound, in a fixed order; absent optional ones are not.
    (run / "health.jsonl").write_bytes(b'{"start_ns":0}\n')
    (run / "seed.json").write_bytes(b'{"seed":"00"}')
    (run / "meta.json").unlink()
    names = [s["name"] for s in build_statement(run)["subject"]]
    assert names == [
        "records.jsonl", "spec.json", "summary.json", "verdicts.json", "health.jsonl", "seed.json"
    ]  # fmt: skip


def test_statement_of_a_v1_run(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=10, layout="v1")
    st = build_statement(run)
    assert st["predicateType"] == PREDICATE_TYPE_V1 == "https://inferaudit.dev/inference-run/v1"
    assert st["subject"] == _digests(run, ("records.jsonl", "spec.json"))
    summary = orjson.loads((run / "summary.json").read_bytes())
    pred = st["predicate"]
    assert pred["verdicts"] == summary.pop("checks")
    assert pred["summary"] == summary


def test_v2_summary_with_checks_is_refused(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=5)
    summary = orjson.loads((run / "summary.json").read_bytes())
    summary["checks"] = []
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    with pytest.raises(ConfigError, match=r"summary\.json carries checks"):
        build_statement(run)


def test_out_of_domain_numbers_refused(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", n=5)
    summary = orjson.loads((run / "summary.json").read_bytes())
    summary["requests"] = 2**53
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    signer = Signer(name="runner.test", seed=bytes(32))
    with pytest.raises(DataError, match="canonicalised"):
        seal_run(run, signer, None)
    assert not (run / "statement.json").exists()  # nothing written before the failure
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


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    home = tmp_path / "home"
    generate_key(home, "alice.test")
    priv, _ = key_paths(home, "alice.test")
    os.chmod(priv, mode)
    want = f"key file {priv} is readable by others (mode {mode:04o}); chmod 600 {priv}"
    with pytest.raises(KeyPermissionError) as info:
        load_signer(home, "alice.test")
    assert info.value.diagnostics() == want
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        load_or_create_signer(home, "alice.test")  # the runner's signer path
    os.chmod(priv, 0o600)
    assert load_signer(home, "alice.test").name == "alice.test"
    os.chmod(priv, 0o400)
    assert load_signer(home, "alice.test").name == "alice.test"


def test_ledger_log_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'ledger.sqlite3'}"
    with open_ledger(url, home) as ledger:
        ledger.append([b"entry"])
        ledger.sign_checkpoint()
    priv, _ = key_paths(home, "inferaudit-ledger")
    os.chmod(priv, 0o644)
    with pytest.raises(KeyPermissionError, match=r"\(mode 0644\); chmod 600 "):
        open_ledger(url, home)
