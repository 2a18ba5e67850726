"""The log service: one transparency log per process, its stores, and what a submission does.

``open_service(config)`` builds everything a request handler needs, once, before anything
listens:

    1. the data directory (created 0700) and its database URL (``home.db_url``: SQLite in the
       data directory by default, PostgreSQL with ``--db``);
    2. the ledger with its log key (``seal.ledger.store.open_ledger``: created 0600 on first
       use; a key file that group or others may read is refused with one line naming it); a
       ledger whose key is not in this data directory is refused (the service signs
       checkpoints);
    3. a first checkpoint when the log has none (so ``/checkpoint`` always answers);
    4. the claims registry, the token store, the registered auditor keys and the evidence
       store (bundles under ``<data dir>/service/``), all in the ledger's database.

A submission (``submit_evidence``, ``submit_claim``): the envelope is checked
(``submissions.open_submission``), appended (idempotent: the same envelope keeps its index),
then, one at a time in this process: a checkpoint is signed, the configured witnesses are asked
to cosign it (``seal.ledger.witnessing``), their valid cosignatures are stored with it
(``Ledger.add_cosignatures``), and the entry's C2SP tlog-proof is taken against that note. Fewer
valid cosignatures than the quorum refuses the answer (503); the entry stays logged and the same
submission again retries the witnesses.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from inferaudit.errors import ConfigError, InferauditError
from inferaudit.home import data_dir as resolve_data_dir
from inferaudit.home import db_url as resolve_db_url
from inferaudit.intent.claims.registry import ClaimStore
from inferaudit.present.web.auditors import AuditorKeys, parse_auditor_key
from inferaudit.present.web.evidence import EvidenceOutcome, EvidenceStore
from inferaudit.present.web.submissions import (
    CLAIM_KINDS,
    RUN_KINDS,
    SubmissionError,
    open_submission,
)
from inferaudit.present.web.tokens import RateLimiter, TokenStore
from inferaudit.seal.evidence import PREDICATE_TYPES, parse_envelope
from inferaudit.seal.keys import ALG_COSIGNATURE_V1, TrustPolicy, Verifier, key_paths
from inferaudit.seal.ledger.note import parse_checkpoint, split_note, verify_cosignature
from inferaudit.seal.ledger.store import Ledger, open_ledger
from inferaudit.seal.ledger.witnessing import (
    WitnessAnswer,
    WitnessEndpoint,
    request_cosignatures,
)
from inferaudit.seal.trust import CHECKPOINTS_DIR, CheckpointMemory

SERVICE_DIR = "service"  # under the data directory: uploaded run bundles
KiB = 1024
MiB = 1024 * KiB


class ServiceError(InferauditError):
    """A request the service refuses; ``status`` is its HTTP status."""

    status = 422


class NotFoundError(ServiceError):
    status = 404


class QuorumError(ServiceError):
    """The entry is logged, but fewer witnesses than the quorum cosigned its checkpoint."""

    status = 503


@dataclass(frozen=True)
class Limits:
    """Request limits: body sizes (bytes) and each token's bucket (requests/s, burst)."""

    envelope_bytes: int = 256 * KiB  # POST /api/v1/evidence, /claims (and admin bodies)
    bundle_bytes: int = 256 * MiB  # PUT /api/v1/runs/<i>/bundle
    rate_per_s: float = 20.0
    burst: int = 200

    def __post_init__(self) -> None:
        if self.envelope_bytes < 1 or self.bundle_bytes < 1:
            raise ConfigError("body size limits must be positive")
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ConfigError("the rate limit and its burst must be positive")


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path | None = None
    db_url: str | None = None
    origin: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    witnesses: tuple[WitnessEndpoint, ...] = ()
    witness_quorum: int | None = None  # None: every configured witness
    witness_timeout_s: float = 10.0
    limits: Limits = Limits()


@dataclass(frozen=True)
class Receipt:
    """A logged submission: its entry, the log, the checkpoint it is proven against."""

    index: int
    origin: str
    log_key: str  # the log's verifier key text
    checkpoint: str  # the signed checkpoint note, with the witness cosignatures
    proof: str  # C2SP tlog-proof text against that checkpoint


@dataclass(frozen=True)
class ClaimReceipt:
    index: int
    claim_id: str
    proof: str


@dataclass
class Service:
    """Everything a request handler needs, built once at start (``open_service``)."""

    ledger: Ledger
    claims: ClaimStore
    evidence: EvidenceStore
    tokens: TokenStore
    auditors: AuditorKeys
    witnesses: tuple[WitnessEndpoint, ...]
    witness_quorum: int
    witness_timeout_s: float
    limits: Limits
    data_dir: Path
    log_key: Verifier
    rate: RateLimiter
    _publish_lock: threading.Lock = field(default_factory=threading.Lock)
    _claims_lock: threading.Lock = field(default_factory=threading.Lock)
    last_answers: tuple[WitnessAnswer, ...] = ()

    @property
    def witness_keys(self) -> tuple[Verifier, ...]:
        return tuple(w.key for w in self.witnesses)

    # -- submissions -----------------------------------------------------------------------------

    def submit_evidence(self, body: bytes) -> Receipt:
        """Log a run's envelope (signed by a registered auditor); prove it (module docstring)."""
        sub = open_submission(body, self.auditors.list(), RUN_KINDS)
        index = self.ledger.append([sub.leaf])[0]
        return self._prove(index)

    def submit_claim(self, body: bytes) -> ClaimReceipt:
        """Log a capacity claim's envelope and store the claim with its index."""
        sub = open_submission(body, self.auditors.list(), CLAIM_KINDS)
        assert sub.claim is not None, "a claim submission carries its claim: the code has a bug"
        with self._claims_lock:
            self.claims.check([sub.claim], path="submitted claim")
            index = self.ledger.append([sub.leaf])[0]
            receipt = self._prove(index)
            self.claims.add_logged(sub.claim, index, path="submitted claim")
        return ClaimReceipt(index=index, claim_id=sub.claim.claim_id, proof=receipt.proof)

    def upload_bundle(self, index: int, bundle: bytes) -> EvidenceOutcome:
        """Store and verify the run directory of run entry ``index`` (``EvidenceStore.add``)."""
        entry = self.published_entry(index)
        try:
            kind = _payload_kind(entry)
        except InferauditError:
            kind = None
        if kind not in PREDICATE_TYPES:
            raise ServiceError(f"entry {index} is not a run's evidence")
        return self.evidence.add(index, entry, bundle)

    def register_auditor(self, text: str) -> tuple[Verifier, bool]:
        """Register an auditor key; (the key, whether it is new)."""
        key = parse_auditor_key(text)
        added = self.auditors.add(key)
        self.evidence.policy = self._policy()
        return key, added

    # -- the log ---------------------------------------------------------------------------------

    def checkpoint_size(self) -> int:
        return self.ledger.state().checkpoint_size

    def published_entry(self, index: int) -> bytes:
        size = self.checkpoint_size()
        if not 0 <= index < size:
            raise NotFoundError(f"no entry {index} in the log (its checkpoint has {size})")
        return self.ledger.entry(index)

    def _prove(self, index: int) -> Receipt:
        """The entry's proof against a checkpoint that covers it (group commit: submissions
        that waited for the lock while another signed are covered by its checkpoint, when that
        one met the witness quorum, so one checkpoint and one witness round serve them all)."""
        with self._publish_lock:
            note = self.ledger.latest_checkpoint()
            if note is None or not self._covers(note, index):
                note = self._cosign(self.ledger.sign_checkpoint())
        proof = self.ledger.tlog_proof(index, note)
        return Receipt(
            index=index,
            origin=self.ledger.origin,
            log_key=self.log_key.text(),
            checkpoint=note,
            proof=proof.text(),
        )

    def _covers(self, note: str, index: int) -> bool:
        """``note`` holds entry ``index`` and carries the witness quorum's cosignatures."""
        text, _ = split_note(note)
        if parse_checkpoint(text).size <= index:
            return False
        return not self.witnesses or len(self._cosigned_by(note)) >= self.witness_quorum

    def _cosigned_by(self, note: str) -> set[str]:
        text, sigs = split_note(note)
        by_id = {(w.key.name, w.key.key_hash): w.key for w in self.witnesses}
        names: set[str] = set()
        for sig in sigs:
            key = by_id.get((sig.name, sig.key_hash))
            if key is not None and verify_cosignature(text, sig, key) is not None:
                names.add(key.name)
        return names

    def _cosign(self, note: str) -> str:
        """The note with the witnesses' cosignatures, stored; QuorumError below the quorum."""
        if not self.witnesses:
            return note
        if len(self._cosigned_by(note)) == len(self.witnesses):
            return note  # every witness cosigned this checkpoint already
        cosigned = request_cosignatures(
            self.ledger, note, self.witnesses, timeout_s=self.witness_timeout_s
        )
        self.last_answers = cosigned.answers
        if cosigned.note != note:
            self.ledger.add_cosignatures(cosigned.note)
        have = len(self._cosigned_by(cosigned.note))
        if have < self.witness_quorum:
            failed = "; ".join(f"{a.witness}: {a.detail}" for a in cosigned.answers if not a.ok)
            raise QuorumError(
                f"the entry is logged, but {have} of the quorum of {self.witness_quorum} "
                f"witnesses cosigned its checkpoint ({failed}); submit again to retry"
            )
        return cosigned.note

    def _policy(self) -> TrustPolicy:
        return TrustPolicy(
            signers=tuple(self.auditors.list()),
            logs=(self.log_key,),
            source="the log service's registered auditors",
            memory=self.evidence.policy.memory,
        )

    def close(self) -> None:
        self.ledger.close()


def _payload_kind(entry: bytes) -> object:
    """The predicate type of a logged envelope's statement (None when it has none)."""
    env = parse_envelope(entry)
    try:
        statement = orjson.loads(base64.b64decode(env["payload"], validate=True))
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        return None
    return statement.get("predicateType") if isinstance(statement, dict) else None


def open_service(config: ServiceConfig) -> Service:
    """Build the service (module docstring); refuses before anything listens."""
    for w in config.witnesses:
        if w.key.alg != ALG_COSIGNATURE_V1:
            raise ConfigError(f"witness key {w.key.keyid} is not a cosignature key (type 0x04)")
    quorum = len(config.witnesses) if config.witness_quorum is None else config.witness_quorum
    if not 0 <= quorum <= len(config.witnesses):
        raise ConfigError(
            f"--witness-quorum {quorum}: between 0 and the {len(config.witnesses)} witnesses given"
        )
    # (1)
    home = resolve_data_dir(config.data_dir)
    url = resolve_db_url(config.db_url, home)
    # (2)
    ledger = open_ledger(url, home, origin=config.origin)
    try:
        if ledger.signer is None:
            priv, _ = key_paths(home, ledger.origin)
            raise ConfigError(
                f"no log key {ledger.origin!r} at {priv}: the service signs this log's checkpoints"
            )
        # (3)
        if ledger.latest_checkpoint() is None:
            ledger.sign_checkpoint()
        # (4)
        log_key = ledger.signer.verifier()
        engine = ledger.engine
        auditors = AuditorKeys(engine)
        policy = TrustPolicy(
            signers=tuple(auditors.list()),
            logs=(log_key,),
            source="the log service's registered auditors",
            memory=CheckpointMemory(home / CHECKPOINTS_DIR, url),
        )
        evidence = EvidenceStore(
            engine, home / SERVICE_DIR, policy, max_bundle_bytes=config.limits.bundle_bytes
        )
        return Service(
            ledger=ledger,
            claims=ClaimStore(engine),
            evidence=evidence,
            tokens=TokenStore(engine),
            auditors=auditors,
            witnesses=config.witnesses,
            witness_quorum=quorum,
            witness_timeout_s=config.witness_timeout_s,
            limits=config.limits,
            data_dir=home,
            log_key=log_key,
            rate=RateLimiter(config.limits.rate_per_s, config.limits.burst),
        )
    except BaseException:
        ledger.close()
        raise


__all__ = [
    "ClaimReceipt",
    "Limits",
    "NotFoundError",
    "QuorumError",
    "Receipt",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "SubmissionError",
    "open_service",
]
