"""Publishing a statement: sign (DSSE) -> append to the ledger -> checkpoint -> inclusion proof.

The one place that writes signed statements into the transparency log, for runs
(``evidence.seal_run``) and for claims (``intent.claims``) alike. ``evidence`` only builds and
opens statements and envelopes; callers never touch the ledger's append or checkpoint themselves.

Order of work, so that a failure leaves nothing half-done:

    1. every statement is canonicalised (RFC 8785) and signed; every envelope's leaf is checked
       against the ledger's ``MAX_LEAF_BYTES`` — a statement that is too large raises
       ``StatementTooLargeError`` before anything is appended (nothing is written anywhere);
    2. all leaves are appended in ONE ledger transaction (a leaf already logged keeps its index:
       Ed25519 is deterministic, so publishing the same statement twice is idempotent);
    3. a checkpoint is signed when the ledger holds its log key, and each entry's C2SP
       tlog-proof is taken against it (verified before it is returned).

``seal_run`` publishes a run directory's statement (v2 or v1 by its layout, see ``evidence``)
and only then writes ``statement.json``, ``envelope.dsse.json`` and ``entry.tlog-proof``; sealing
the same directory again yields the same leaf and index.

Without a ledger (``ledger=None``) the statement is only signed: ``index``, ``origin``,
``log_key`` and ``proof_text`` are ``None``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from inferaudit.errors import LedgerError
from inferaudit.measure.rundir import ENVELOPE_FILE, PROOF_FILE, STATEMENT_FILE
from inferaudit.seal.evidence import build_statement, canonical, envelope_leaf, sign_envelope
from inferaudit.seal.keys import Signer
from inferaudit.seal.ledger.store import MAX_LEAF_BYTES, Ledger


class StatementTooLargeError(LedgerError):
    """A statement, or its signed envelope, exceeds the ledger's entry size limit."""

    def __init__(self, position: int, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"statement {position}: {what} is {size} bytes; a ledger entry holds at most "
            f"{limit} bytes (nothing was written)"
        )
        self.position = position
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class Published:
    """What publishing one statement produced (JSON-ready through ``to_json``)."""

    index: int | None  # the ledger entry; None without a ledger
    origin: str | None  # the ledger's origin (= its log key's name); None without a ledger
    keyid: str  # the DSSE keyid that signed
    verifier_key: str  # the signer's verifier key text
    log_key: str | None  # the log's verifier key text, when this data directory holds it
    statement_sha256: str  # SHA-256 of the statement's canonical bytes (the DSSE payload)
    statement: bytes  # the canonical statement bytes (= the envelope payload)
    envelope: bytes  # the envelope's RFC 8785 bytes (= the ledger leaf)
    proof_text: str | None  # C2SP tlog-proof against a signed checkpoint; None without one

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "keyid": self.keyid,
            "verifier_key": self.verifier_key,
            "statement_sha256": self.statement_sha256,
        }
        if self.index is not None:
            out.update(
                {"ledger_index": self.index, "ledger_origin": self.origin, "log_key": self.log_key}
            )
        return out


def publish(statement: Mapping[str, object], signer: Signer, ledger: Ledger | None) -> Published:
    """Sign ``statement``; with a ledger, append it, checkpoint and prove it (module docstring)."""
    return publish_many([statement], signer, ledger)[0]


def publish_many(
    statements: Sequence[Mapping[str, object]], signer: Signer, ledger: Ledger | None
) -> list[Published]:
    """``publish`` for a batch: every size checked first, then one append, one checkpoint."""
    # (1): canonicalise, sign and check every size before anything is appended.
    signed: list[tuple[bytes, bytes]] = []
    for position, statement in enumerate(statements):
        payload = canonical(dict(statement), "statement")
        if len(payload) > MAX_LEAF_BYTES:  # the envelope (base64 of it) is larger still
            raise StatementTooLargeError(position, "the statement", len(payload), MAX_LEAF_BYTES)
        leaf = envelope_leaf(sign_envelope(payload, signer))
        if len(leaf) > MAX_LEAF_BYTES:
            raise StatementTooLargeError(position, "its envelope", len(leaf), MAX_LEAF_BYTES)
        signed.append((payload, leaf))
    verifier_key = signer.verifier().text()

    def result(
        payload: bytes,
        leaf: bytes,
        index: int | None = None,
        log_key: str | None = None,
        proof: str | None = None,
    ) -> Published:
        return Published(
            index=index,
            origin=None if ledger is None else ledger.origin,
            keyid=signer.keyid,
            verifier_key=verifier_key,
            log_key=log_key,
            statement_sha256=hashlib.sha256(payload).hexdigest(),
            statement=payload,
            envelope=leaf,
            proof_text=proof,
        )

    if ledger is None:
        return [result(payload, leaf) for payload, leaf in signed]
    # (2): one append for the whole batch.
    indices = ledger.append([leaf for _, leaf in signed])
    # (3): checkpoint and inclusion proofs, when this data directory holds the log key.
    if ledger.signer is None:
        return [result(p, leaf, i) for (p, leaf), i in zip(signed, indices, strict=True)]
    checkpoint = ledger.sign_checkpoint()
    log_key = ledger.signer.verifier().text()
    return [
        result(p, leaf, i, log_key, ledger.tlog_proof(i, checkpoint).text())
        for (p, leaf), i in zip(signed, indices, strict=True)
    ]


def seal_run(run_dir: Path, signer: Signer, ledger: Ledger | None) -> dict[str, object]:
    """Publish the run's statement, then write its statement, envelope and proof files.

    With a ledger, the ledger must hold its log key here (a run's evidence needs a signed
    checkpoint): that is checked before anything is appended or written.
    Returns what was written (JSON-ready).
    """
    if ledger is not None and ledger.signer is None:
        raise LedgerError(
            f"no log key {ledger.origin!r} in this data directory to sign a checkpoint "
            "(nothing was written)"
        )
    published = publish(build_statement(run_dir), signer, ledger)
    (run_dir / STATEMENT_FILE).write_bytes(published.statement)
    (run_dir / ENVELOPE_FILE).write_bytes(published.envelope)
    out: dict[str, object] = {"statement": STATEMENT_FILE, "envelope": ENVELOPE_FILE}
    out.update(published.to_json())
    if published.proof_text is not None:
        (run_dir / PROOF_FILE).write_text(published.proof_text)
        out["proof"] = PROOF_FILE
    return out
