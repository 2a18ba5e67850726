"""Verification of a run directory against a trust policy, offline unless told of a log URL.

Nothing here touches the network unless the policy's checkpoint memory names a remote log
(``verify --log URL``: ``CheckpointMemory.remote``); then steps 8 and 11 read its checkpoint and
tiles (``seal.ledger.tile_client``), and an unreachable log raises ``LogUnreachableError``
(not a verification failure). The steps, each reported as one ``Step``:

    1. envelope signature: ``envelope.dsse.json`` is a DSSE v1 envelope of an in-toto payload,
       signed (over PAE) by a signer key the trust policy accepts;
    2. statement: the signed payload is RFC 8785 canonical JSON, an in-toto Statement v1 with
       one of our predicate types (``inference-run/v2``, or ``v1`` for inferaudit 0.1 runs),
       and ``statement.json`` holds exactly those bytes;
    3. subjects: the SHA-256 of every bound file equals its subject digest (v2: every evidence
       file present — records, spec, summary, verdicts, meta, health, seed, server metrics —,
       and an evidence file present but not bound fails; v1: records and spec), and the
       predicate's spec is ``spec.json``;
    4. meta: ``meta.json``'s environment, models and the rest equal the signed predicate's
       (v2 also binds it by digest; in v1 a missing meta.json is not a failure: it is not
       evidence there);
    5. seed: with a ``seed_commitment`` in the spec, ``seed.json`` reveals a 32-byte seed whose
       SHA-256(``inferaudit.seed/v1\\n`` || seed) is the commitment (contract C5); skipped for
       specs without one (v1 specs);
    6. checkpoint signature: the checkpoint in ``entry.tlog-proof`` is a signed note by a log
       key the trust policy accepts, named as the checkpoint's origin;
    7. witnesses: that checkpoint carries valid C2SP tlog-cosignature/v1 lines over its own
       text by at least K distinct witness keys of the policy (``witnesses K of N``; all N
       without a quorum line); other keys' cosignatures are ignored; passes with "no witness
       required by the policy" when the policy names no witness (``seal.trust.witness_quorum``);
    8. log checkpoint (with a remote log only): the log's current checkpoint, fetched from it,
       is signed by the same log key as the run's and meets the witness quorum;
    9. checkpoint consistency: the checkpoint agrees with the ones this verifier knows (the
       local ledger's, the remembered one, the remote log's; ``seal.trust``): a same-size
       different-root checkpoint is a fork, printed with both notes; an unprovable one fails;
   10. inclusion: the RFC 9162 inclusion proof leads from the envelope's leaf hash
       (SHA-256(0x00 || RFC 8785 bytes of the envelope)) to the checkpoint's root;
   11. log entry (with a remote log only): the log's entry at the proof's index, read from its
       entry bundles, is byte-identical to the envelope's leaf (RFC 8785 bytes);
   12. summary: ``metrics.summarize(records, spec)`` recomputed here equals the signed summary,
       key by key;
   13. summary file: ``summary.json`` equals the signed summary, and the signed verdicts equal
       ``verdicts.json`` (v2) or ``summary.json``'s ``checks`` (v1);
   14. verdicts: every integrity verdict recomputed from ``records.jsonl`` equals the run's
       verdicts (``verdicts.json`` for v2, the signed ones for v1); checks that counted with
       the run's tokenizer, or used its fingerprint, need that file, matched by the digest in
       ``spec.json``; without it they are listed as not rechecked.

Later steps still run when an earlier one fails (using the unsigned copies where they must), so
one report names every problem; the run passes only when every step passes, and only then does
the report carry a ``VerifiedRun``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import InferauditError
from inferaudit.judge.verdict import Verdict
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.rundir import (
    ENVELOPE_FILE,
    META_FILE,
    PROOF_FILE,
    SEED_FILE,
    SPEC_FILE,
    STATEMENT_FILE,
    SUMMARY_FILE,
    VERDICTS_FILE,
    file_sha256,
)
from inferaudit.measure.summary import Summary
from inferaudit.seal.evidence import (
    EVIDENCE_FILES_V2,
    PAYLOAD_TYPE,
    PREDICATE_TYPE_V2,
    PREDICATE_TYPES,
    REQUIRED_FILES_V2,
    STATEMENT_TYPE,
    SUBJECT_FILES_V1,
    canonical,
    open_envelope,
    parse_envelope,
    split_meta,
)
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    InvalidSignatureError,
    NoteError,
    Signature,
    TlogProof,
    UnverifiedNoteError,
    open_checkpoint,
    parse_tlog_proof,
)
from inferaudit.seal.ledger.tile_client import LogUnreachableError
from inferaudit.seal.recompute import (
    MAX_DIFFS,
    Summarize,
    recheck_verdicts,
    recompute_summary,
    summary_diffs,
)
from inferaudit.seal.trust import (
    ForkProof,
    LogSource,
    RemoteCheckpoint,
    open_remote,
    witness_quorum,
)
from inferaudit.seal.verified import VerifiedRun

SEED_DOMAIN = b"inferaudit.seed/v1\n"

__all__ = ["Report", "Step", "Summarize", "seed_commitment", "summary_diffs", "verify_run"]


@dataclass(frozen=True)
class Step:
    """One verification step's outcome (not an integrity check: those are ``judge``'s)."""

    name: str
    ok: bool
    detail: str  # what was found: the signer on success, what failed otherwise


@dataclass(frozen=True)
class Report:
    run_dir: Path
    steps: tuple[Step, ...]
    verified: VerifiedRun | None = None  # set only when every step passed
    fork: ForkProof | None = None  # two checkpoints that prove the log forked

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def failures(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]


def seed_commitment(seed: bytes) -> str:
    """Contract C5: lowercase hex SHA-256(``inferaudit.seed/v1\\n`` || seed)."""
    return hashlib.sha256(SEED_DOMAIN + seed).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def verify_run(
    run_dir: Path,
    trust: TrustPolicy,
    *,
    summarize: Summarize | None = None,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
) -> Report:
    """Verify ``run_dir`` offline; every step yields one ``Step`` (see the module docstring)."""
    steps: list[Step] = []

    def add(name: str, ok: bool, detail: str) -> None:
        steps.append(Step(name, ok, detail))

    # (1): envelope signature by a trusted signer key.
    env_bytes = _read(run_dir / ENVELOPE_FILE)
    env: dict[str, Any] | None = None
    payload: bytes | None = None
    signer: str | None = None
    if env_bytes is None:
        add("envelope signature", False, f"{ENVELOPE_FILE} is missing")
    else:
        try:
            env = parse_envelope(env_bytes)
            payload, key = open_envelope(env, trust.signers)
            signer = key.keyid
            add("envelope signature", True, f"signed by {key.keyid}")
        except InferauditError as exc:
            add("envelope signature", False, str(exc))
            if env is not None and env.get("payloadType") == PAYLOAD_TYPE:
                try:
                    payload = base64.b64decode(env.get("payload", ""), validate=True)
                except (binascii.Error, ValueError, TypeError):
                    payload = None

    # (2): the statement: canonical, in-toto v1, our predicate type, same bytes as statement.json.
    statement, problems = _statement(payload, _read(run_dir / STATEMENT_FILE))
    kind = statement.get("predicateType") if statement else None
    v2 = kind == PREDICATE_TYPE_V2
    add("statement", not problems, "; ".join(problems) or f"in-toto Statement v1, {kind}")
    predicate: dict[str, Any] = statement["predicate"] if statement else {}

    # (3): subject digests against the files.
    problems = _subjects(run_dir, statement, v2)
    bound = "every evidence file's digest matches" if v2 else "records.jsonl and spec.json match"
    add("subjects", not problems, "; ".join(problems) or bound)

    # (4): meta.json against the signed environment, models and meta.
    add("meta", *_meta(run_dir, statement, v2))

    # (5): the revealed seed against the spec's commitment (C5).
    spec_bytes = _read(run_dir / SPEC_FILE)
    add("seed", *_seed(run_dir, spec_bytes))

    # (6): the checkpoint is signed by a trusted log key.
    proof_text = _read(run_dir / PROOF_FILE)
    proof: TlogProof | None = None
    checkpoint = log_key = None
    if proof_text is None:
        add("checkpoint signature", False, f"{PROOF_FILE} is missing")
    else:
        try:
            proof = parse_tlog_proof(proof_text.decode())
            checkpoint, note = open_checkpoint(proof.checkpoint, trust.logs)
            sig = note.verified[0]
            log_key = next(v for v in trust.logs if (v.name, v.key_hash) == sig_id(sig))
            add(
                "checkpoint signature",
                True,
                f"{checkpoint.origin} size {checkpoint.size} signed by {log_key.keyid}",
            )
        except UnicodeDecodeError:
            add("checkpoint signature", False, f"{PROOF_FILE} is not UTF-8")
        except UnverifiedNoteError:
            add("checkpoint signature", False, "checkpoint signature: unknown key")
        except InvalidSignatureError as exc:
            add("checkpoint signature", False, f"checkpoint signature: {exc}")
        except NoteError as exc:
            add("checkpoint signature", False, f"checkpoint: {exc}")

    # (7): the checkpoint carries the witness quorum's cosignatures.
    if not trust.witnesses:
        add("witnesses", True, "no witness required by the policy")
    elif proof is None or checkpoint is None:
        add("witnesses", False, "no trusted checkpoint whose cosignatures to count")
    else:
        quorum = witness_quorum(proof.checkpoint, trust)
        add("witnesses", quorum.ok, quorum.detail)

    # (8): with a remote log, its current checkpoint is signed by that log key and witnessed.
    source = trust.memory.remote if trust.memory is not None else None
    remote: RemoteCheckpoint | None = None
    if source is not None:
        if log_key is None:
            add("log checkpoint", False, "no trusted checkpoint of the run to compare it with")
        else:
            ok, detail, remote = open_remote(source, log_key, trust)
            add("log checkpoint", ok, detail)

    # (9): the checkpoint agrees with every checkpoint this verifier knows.
    fork: ForkProof | None = None
    if proof is None or checkpoint is None or log_key is None:
        add("checkpoint consistency", False, "no trusted checkpoint to compare")
    elif trust.memory is None:
        add("checkpoint consistency", True, "not compared: this trust policy keeps no checkpoints")
    else:
        result = trust.memory.check(proof.checkpoint, checkpoint, log_key, remote)
        fork = result.fork
        add("checkpoint consistency", result.ok, result.detail)

    # (10): the envelope's leaf is in the checkpointed tree.
    if proof is None or env is None:
        add("inclusion", False, "no proof or no envelope to check")
    elif checkpoint is None:
        add("inclusion", False, "no trusted checkpoint to check the proof against")
    else:
        try:
            leaf_hash = merkle.hash_leaf(canonical(env, "envelope"))
            merkle.verify_inclusion(
                proof.index, checkpoint.size, leaf_hash, list(proof.hashes), checkpoint.root
            )
            add("inclusion", True, f"entry {proof.index} of {checkpoint.size}")
        except InferauditError as exc:
            add("inclusion", False, str(exc))

    # (11): with a remote log, it serves the run's envelope at the proof's index.
    if source is not None:
        add("log entry", *_log_entry(source, remote, proof, env))

    # (12): recompute the summary from the records and compare with the signed one.
    signed = predicate.get("summary")
    reasons: list[str] | None = None  # the recomputed summary's, when it equals the signed one
    if not isinstance(signed, dict):
        add("summary", False, "statement has no summary")
    else:
        same, detail = recompute_summary(run_dir, signed, summarize)
        add("summary", same, detail)
        signed_reasons = signed.get("invalid_reasons")
        if same and isinstance(signed_reasons, list):
            reasons = [str(r) for r in signed_reasons]

    # (13): summary.json (and verdicts.json) agree with what was signed.
    signed_verdicts = predicate.get("verdicts")
    add("summary file", *_files(run_dir, signed, signed_verdicts, v2))

    # (14): the verdicts follow from the records too.
    verdicts = _json(_read(run_dir / VERDICTS_FILE)) if v2 else signed_verdicts
    rechecked = recheck_verdicts(
        run_dir, verdicts, tokenizer, fingerprint, v2=v2, summary_reasons=reasons
    )
    steps.append(Step("verdicts", *rechecked))

    report = Report(run_dir=run_dir, steps=tuple(steps), fork=fork)
    if not report.ok:
        return report
    assert proof is not None and checkpoint is not None and signer is not None, "steps passed"
    try:
        verified = VerifiedRun(
            run_dir=run_dir,
            spec=RunSpec.model_validate_json(spec_bytes or b""),
            summary=Summary.from_json(signed),
            verdicts=tuple(Verdict.from_json(v) for v in signed_verdicts or ()),
            ledger_index=proof.index,
            log_origin=checkpoint.origin,
            signer=signer,
            predicate_type=str(kind),
        )
    except (InferauditError, ValidationError, ValueError, KeyError, TypeError) as exc:
        failed = Step("verified run", False, f"signed evidence does not parse: {exc}")
        return Report(run_dir=run_dir, steps=(*steps, failed), fork=fork)
    return Report(run_dir=run_dir, steps=tuple(steps), verified=verified, fork=fork)


def sig_id(sig: Signature) -> tuple[str, int]:
    return sig.name, sig.key_hash


def _log_entry(
    source: LogSource,
    remote: RemoteCheckpoint | None,
    proof: TlogProof | None,
    env: dict[str, Any] | None,
) -> tuple[bool, str]:
    where = f"the log at {source.location}"
    if remote is None or proof is None or env is None:
        return False, f"no trusted checkpoint of {where} or no proof and envelope to compare"
    size = remote.checkpoint.size
    if proof.index >= size:
        return False, f"{where} holds {size} entries: none at index {proof.index}"
    try:
        leaf = canonical(env, "envelope")
        served = source.entry(proof.index, size)
    except LogUnreachableError:
        raise
    except InferauditError as exc:
        return False, f"{where}: entry {proof.index}: {exc.diagnostics()}"
    if served != leaf:
        return False, f"{where} serves another entry at index {proof.index}"
    return True, f"{where} serves this envelope at index {proof.index} of {size}"


def _statement(
    payload: bytes | None, stmt_file: bytes | None
) -> tuple[dict[str, Any] | None, list[str]]:
    source = payload if payload is not None else stmt_file
    problems: list[str] = []
    statement: dict[str, Any] | None = None
    if source is None:
        return None, [f"{STATEMENT_FILE} is missing and the envelope has no payload"]
    parsed = _json(source)
    if parsed is None:
        problems.append("statement is not JSON")
    elif not isinstance(parsed, dict):
        problems.append("statement is not a JSON object")
    else:
        statement = parsed
        try:
            if canonical(parsed, "statement") != source:
                problems.append("statement is not RFC 8785 canonical JSON")
        except InferauditError as exc:
            problems.append(str(exc))
        if parsed.get("_type") != STATEMENT_TYPE:
            problems.append(f"statement _type is not {STATEMENT_TYPE}")
        if parsed.get("predicateType") not in PREDICATE_TYPES:
            problems.append(f"statement predicateType is not one of {', '.join(PREDICATE_TYPES)}")
        if not isinstance(parsed.get("predicate"), dict):
            problems.append("statement has no predicate object")
            statement = None
    if stmt_file is None:
        problems.append(f"{STATEMENT_FILE} is missing")
    elif payload is not None and stmt_file != payload:
        problems.append(f"{STATEMENT_FILE} differs from the signed envelope payload")
    return statement, problems


def _subjects(run_dir: Path, statement: dict[str, Any] | None, v2: bool) -> list[str]:
    subjects = statement.get("subject") if statement else None
    if not isinstance(subjects, list):
        return ["statement has no subjects"]
    problems: list[str] = []
    by_name = {
        s.get("name"): s.get("digest", {}).get("sha256")
        for s in subjects
        if isinstance(s, dict) and isinstance(s.get("digest"), dict)
    }
    if len(by_name) != len(subjects):
        problems.append("statement subjects are malformed or repeated")
    known = EVIDENCE_FILES_V2 if v2 else SUBJECT_FILES_V1
    required = REQUIRED_FILES_V2 if v2 else SUBJECT_FILES_V1
    problems += [f"{n} is a subject but not an evidence file" for n in by_name if n not in known]
    for name in known:
        path = run_dir / name
        if name not in by_name:
            if name in required:
                problems.append(f"{name} is not a subject of the statement")
            elif path.exists():
                problems.append(f"{name} is present but not bound by the statement")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != by_name[name]:
            problems.append(f"{name} digest mismatch")
    spec = _json(_read(run_dir / SPEC_FILE))
    if statement and (run_dir / SPEC_FILE).is_file():
        if spec is None:
            problems.append("spec.json is not JSON")
        elif spec != statement["predicate"].get("spec"):
            problems.append("predicate spec differs from spec.json")
    return problems


def _meta(run_dir: Path, statement: dict[str, Any] | None, v2: bool) -> tuple[bool, str]:
    if statement is None:
        return False, "no signed statement to compare meta.json with"
    predicate: dict[str, Any] = statement["predicate"]
    data = _read(run_dir / META_FILE)
    if data is None:
        if v2:
            subjects = statement.get("subject")
            names = [s.get("name") for s in subjects if isinstance(s, dict)] if subjects else []
            if META_FILE in names:
                return False, f"{META_FILE} is missing (the statement binds it)"
            return True, f"no {META_FILE} (and none was bound)"
        if predicate.get("environment") is None and predicate.get("models") is None:
            return True, f"no {META_FILE} (and none was signed)"
        return True, f"{META_FILE} is missing: it is not evidence in v1 (the signed copy is)"
    meta = _json(data)
    if not isinstance(meta, dict):
        return False, f"{META_FILE} is not a JSON object"
    try:
        environment, models, rest = split_meta(meta)
    except InferauditError as exc:
        return False, f"{META_FILE}: {exc}"
    diffs = [
        f"{META_FILE} {what} differs from the signed {what}"
        for what, mine in (("environment", environment), ("models", models), ("meta", rest))
        if mine != predicate.get(what)
    ]
    if diffs:
        return False, "; ".join(diffs)
    return True, f"{META_FILE} equals the signed environment, models and meta"


def _seed(run_dir: Path, spec_bytes: bytes | None) -> tuple[bool, str]:
    spec = _json(spec_bytes)
    commitment = spec.get("seed_commitment") if isinstance(spec, dict) else None
    if commitment is None:
        return True, "skipped: no commitment (v1 spec)"
    data = _read(run_dir / SEED_FILE)
    if data is None:
        return False, f"the spec commits to a seed but {SEED_FILE} is missing"
    revealed = _json(data)
    text = revealed.get("seed") if isinstance(revealed, dict) else None
    if not isinstance(text, str) or len(text) != 64 or text.strip("0123456789abcdef"):
        return False, f'{SEED_FILE} must be {{"seed": "<64 lowercase hex chars>"}}'
    if seed_commitment(bytes.fromhex(text)) != commitment:
        return False, f"{SEED_FILE} does not match the spec's seed_commitment"
    return True, f"{SEED_FILE} matches the commitment {str(commitment)[:16]}..."


def _files(run_dir: Path, signed: Any, verdicts: Any, v2: bool) -> tuple[bool, str]:
    on_disk = _json(_read(run_dir / SUMMARY_FILE))
    if on_disk is None or not isinstance(signed, dict):
        return False, f"{SUMMARY_FILE} or the signed summary is missing"
    try:
        on_disk = orjson.loads(canonical(on_disk, SUMMARY_FILE))
    except InferauditError:
        on_disk = None
    if not isinstance(on_disk, dict):
        return False, f"{SUMMARY_FILE} is not a JSON object"
    diffs = summary_diffs(signed, on_disk)
    if v2:
        if "checks" in on_disk:
            diffs.append(f"{SUMMARY_FILE} carries checks (v2 keeps them in {VERDICTS_FILE})")
        if _json(_read(run_dir / VERDICTS_FILE)) != verdicts:
            diffs.append(f"{VERDICTS_FILE} differs from the signed verdicts")
        matched = f"{SUMMARY_FILE} and {VERDICTS_FILE} match the signed summary and verdicts"
    else:
        if on_disk.get("checks", []) != verdicts:
            diffs.append("summary.checks differ from the signed verdicts")
        matched = f"{SUMMARY_FILE} matches the signed summary"
    return not diffs, "; ".join(diffs[:MAX_DIFFS]) or matched
