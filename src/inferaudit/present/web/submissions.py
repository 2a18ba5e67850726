"""What the log service accepts as a submission: a DSSE envelope signed by a registered auditor
key whose payload is a well-formed statement of one of our predicate types.

``open_submission(body, auditors, kinds)``:

    1. the body is a DSSE envelope (``seal.evidence.parse_envelope``) of an in-toto payload;
    2. a registered auditor key signed it (signatures by other keys are ignored; a registered
       key's bad signature is refused);
    3. the payload is RFC 8785 canonical JSON: an in-toto Statement v1 of an accepted predicate
       type, with a non-empty list of subjects (flat names, each once, a lowercase hex SHA-256
       digest) and a predicate object;
    4. run evidence (``inference-run/v1`` and ``/v2``): the subjects are the evidence files of
       that layout (v2: the required ones and only known ones; v1: records and spec) and the
       predicate's ``spec`` parses as a ``RunSpec``, its ``summary`` and ``verdicts`` have
       their shapes; a capacity claim (``capacity-claim/v1``): the predicate's claim parses as
       a ``Claim`` and the statement is exactly ``claim_statement`` of it;
    5. the envelope's ledger leaf (its RFC 8785 bytes) fits a ledger entry.

Every refusal is a ``SubmissionError`` with one line saying which step failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import InferauditError, validation_message
from inferaudit.intent.claims.model import Claim
from inferaudit.intent.claims.signing import PREDICATE_TYPE as CLAIM_PREDICATE_TYPE
from inferaudit.intent.claims.signing import claim_statement
from inferaudit.measure.protocol import RunSpec
from inferaudit.seal.evidence import (
    EVIDENCE_FILES_V2,
    PREDICATE_TYPE_V1,
    PREDICATE_TYPE_V2,
    PREDICATE_TYPES,
    REQUIRED_FILES_V2,
    STATEMENT_TYPE,
    SUBJECT_FILES_V1,
    canonical,
    envelope_leaf,
    open_envelope,
    parse_envelope,
)
from inferaudit.seal.keys import Verifier
from inferaudit.seal.ledger.store import MAX_LEAF_BYTES

RUN_KINDS = PREDICATE_TYPES
CLAIM_KINDS = (CLAIM_PREDICATE_TYPE,)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SubmissionError(InferauditError):
    """A submitted envelope or statement is refused (HTTP 422)."""


class EntryTooLargeError(SubmissionError):
    """The envelope's ledger leaf exceeds a ledger entry (HTTP 413)."""


@dataclass(frozen=True)
class Submission:
    leaf: bytes  # RFC 8785 bytes of the envelope: the ledger entry
    signer: Verifier  # the registered key that signed it
    predicate_type: str
    claim: Claim | None  # for a capacity-claim statement


def open_submission(
    body: bytes, auditors: Iterable[Verifier], kinds: tuple[str, ...]
) -> Submission:
    """Check a submitted envelope (module docstring); the accepted ``kinds`` of predicate."""
    try:
        # (1) and (2)
        env = parse_envelope(body)
        payload, key = open_envelope(env, list(auditors))
    except InferauditError as exc:
        raise SubmissionError(exc.diagnostics()) from None
    # (3)
    statement = _statement(payload, kinds)
    kind = str(statement["predicateType"])
    # (4)
    claim = None
    if kind in CLAIM_KINDS:
        claim = _claim(statement, payload)
    else:
        _run(statement, kind)
    # (5)
    leaf = envelope_leaf(env)
    if len(leaf) > MAX_LEAF_BYTES:
        raise EntryTooLargeError(
            f"envelope is {len(leaf):,} bytes as a ledger entry; the limit is {MAX_LEAF_BYTES:,}"
        )
    return Submission(leaf=leaf, signer=key, predicate_type=kind, claim=claim)


def _statement(payload: bytes, kinds: tuple[str, ...]) -> dict[str, Any]:
    try:
        statement = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise SubmissionError("statement: the payload is not JSON") from None
    if not isinstance(statement, dict):
        raise SubmissionError("statement: not a JSON object")
    try:
        if canonical(statement, "statement") != payload:
            raise SubmissionError("statement: not RFC 8785 canonical JSON")
    except SubmissionError:
        raise
    except InferauditError as exc:
        raise SubmissionError(f"statement: {exc.diagnostics()}") from None
    if set(statement) != {"_type", "subject", "predicateType", "predicate"}:
        raise SubmissionError(
            "statement: must hold exactly _type, subject, predicateType, predicate"
        )
    if statement["_type"] != STATEMENT_TYPE:
        raise SubmissionError(f"statement: _type is not {STATEMENT_TYPE}")
    if statement["predicateType"] not in kinds:
        raise SubmissionError(f"statement: predicateType must be one of {', '.join(kinds)}")
    if not isinstance(statement["predicate"], dict):
        raise SubmissionError("statement: predicate is not an object")
    subjects = statement["subject"]
    if not isinstance(subjects, list) or not subjects:
        raise SubmissionError("statement: subject must be a non-empty list")
    names: set[str] = set()
    for i, s in enumerate(subjects):
        if (
            not isinstance(s, dict)
            or set(s) != {"name", "digest"}
            or not isinstance(s["name"], str)
            or not isinstance(s["digest"], dict)
            or set(s["digest"]) != {"sha256"}
            or not isinstance(s["digest"]["sha256"], str)
            or not _HEX64.fullmatch(s["digest"]["sha256"])
        ):
            raise SubmissionError(f"statement: subject {i} is not {{name, digest: {{sha256}}}}")
        if s["name"] in names:
            raise SubmissionError(f"statement: subject {s['name'][:60]!r} appears twice")
        names.add(s["name"])
    return statement


def _run(statement: dict[str, Any], kind: str) -> None:
    names = {s["name"] for s in statement["subject"]}
    if kind == PREDICATE_TYPE_V2:
        missing = [n for n in REQUIRED_FILES_V2 if n not in names]
        unknown = sorted(names - set(EVIDENCE_FILES_V2))
        if missing or unknown:
            what = f"missing {', '.join(missing)}" if missing else f"unknown {unknown[0][:60]!r}"
            raise SubmissionError(f"statement: subjects are not a v2 run's evidence ({what})")
    else:
        assert kind == PREDICATE_TYPE_V1, "a run kind is v1 or v2: the code has a bug"
        if names != set(SUBJECT_FILES_V1):
            raise SubmissionError(
                f"statement: a v1 run's subjects are {', '.join(SUBJECT_FILES_V1)}"
            )
    predicate = statement["predicate"]
    try:
        RunSpec.model_validate_json(orjson.dumps(predicate.get("spec")))
    except ValidationError as exc:
        raise SubmissionError(f"statement: predicate spec: {validation_message(exc)}") from None
    if not isinstance(predicate.get("summary"), dict):
        raise SubmissionError("statement: predicate summary is not an object")
    if not isinstance(predicate.get("verdicts"), list):
        raise SubmissionError("statement: predicate verdicts is not a list")


def _claim(statement: dict[str, Any], payload: bytes) -> Claim:
    predicate = statement["predicate"]
    if set(predicate) != {"claim"}:
        raise SubmissionError("statement: a claim's predicate holds exactly 'claim'")
    try:
        claim = Claim.model_validate_json(orjson.dumps(predicate["claim"]))
    except ValidationError as exc:
        raise SubmissionError(f"statement: claim: {validation_message(exc)}") from None
    if canonical(claim_statement(claim), "statement") != payload:
        raise SubmissionError("statement: not the canonical statement of its claim")
    return claim
