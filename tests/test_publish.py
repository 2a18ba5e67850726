"""Publishing: sign -> append -> checkpoint -> proof, with size limits checked before anything
is appended or written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest_ledger import make_run_dir
from inferaudit.errors import LedgerError
from inferaudit.seal.evidence import STATEMENT_TYPE
from inferaudit.seal.keys import Signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import open_checkpoint, parse_tlog_proof
from inferaudit.seal.ledger.store import MAX_LEAF_BYTES, Ledger, open_ledger
from inferaudit.seal.publish import StatementTooLargeError, publish, publish_many, seal_run

SIGNER = Signer(name="inferaudit-claims", seed=bytes(range(32)))


def _statement(text: str) -> dict[str, object]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "claim:x", "digest": {"sha256": "0" * 64}}],
        "predicateType": "https://inferaudit.dev/capacity-claim/v1",
        "predicate": {"text": text},
    }


def _ledger(home: Path) -> Ledger:
    return open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home)


def test_publish_signs_appends_and_proves(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        ledger.append([b"earlier"])
        pub = publish(_statement("a"), SIGNER, ledger)
        again = publish(_statement("a"), SIGNER, ledger)  # deterministic: same leaf, same index
        assert ledger.signer is not None
        log = ledger.signer.verifier()
        assert ledger.size() == 2
        assert ledger.entry(1) == pub.envelope
    assert (pub.index, again.index, pub.origin) == (1, 1, "inferaudit-ledger")
    assert pub.keyid == SIGNER.keyid and pub.verifier_key == SIGNER.verifier().text()
    assert pub.log_key == log.text()
    assert pub.statement_sha256 == hashlib.sha256(pub.statement).hexdigest()
    assert pub.proof_text is not None
    proof = parse_tlog_proof(pub.proof_text)
    cp, _ = open_checkpoint(proof.checkpoint, [log])
    merkle.verify_inclusion(1, cp.size, merkle.hash_leaf(pub.envelope), list(proof.hashes), cp.root)


def test_publish_without_a_ledger_only_signs() -> None:
    pub = publish(_statement("a"), SIGNER, None)
    assert (pub.index, pub.origin, pub.log_key, pub.proof_text) == (None, None, None, None)
    assert pub.to_json() == {
        "keyid": SIGNER.keyid,
        "verifier_key": SIGNER.verifier().text(),
        "statement_sha256": pub.statement_sha256,
    }


def test_too_large_statements_are_refused_before_anything_is_appended(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        ledger.append([b"earlier"])
        ledger.sign_checkpoint()
        checkpoint = ledger.latest_checkpoint()
        # The second statement's envelope is over the limit (base64 grows it by a third), the
        # first is fine: neither is appended, and no checkpoint is signed.
        near = "x" * (MAX_LEAF_BYTES * 3 // 4 - 200)
        with pytest.raises(StatementTooLargeError) as info:
            publish_many([_statement("small"), _statement(near)], SIGNER, ledger)
        assert info.value.position == 1 and info.value.size > MAX_LEAF_BYTES
        assert info.value.diagnostics().startswith("statement 1: its envelope is ")
        assert info.value.diagnostics().endswith(
            f"bytes; a ledger entry holds at most {MAX_LEAF_BYTES} bytes (nothing was written)"
        )
        with pytest.raises(StatementTooLargeError, match=r"^statement 0: the statement is "):
            publish(_statement("y" * 50_000_000), SIGNER, ledger)  # a 50 MB statement
        assert ledger.size() == 1 and ledger.latest_checkpoint() == checkpoint


def test_seal_run_writes_nothing_when_it_cannot_sign_a_checkpoint(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    with _ledger(home) as ledger:
        ledger.append([b"earlier"])
        ledger.sign_checkpoint()
    run = make_run_dir(tmp_path / "run", n=5)
    before = sorted(p.name for p in run.iterdir())
    # Another data directory without this ledger's log key: appends would work, checkpoints not.
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", other) as ledger:
        assert ledger.signer is None
        with pytest.raises(LedgerError, match=r"no log key 'inferaudit-ledger'.*nothing was"):
            seal_run(run, SIGNER, ledger)
        assert ledger.size() == 1
    assert sorted(p.name for p in run.iterdir()) == before
