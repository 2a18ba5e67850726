"""Evidence bundles: an in-toto Statement v1 about a run, signed in a DSSE v1 envelope.

Two layouts of a run directory, told apart by their files (``run_layout``):

  v2 (``https://inferaudit.dev/inference-run/v2``): the run wrote ``verdicts.json`` and its
     ``summary.json`` has no ``checks``. The subjects are every evidence file present of
     ``EVIDENCE_FILES_V2`` (records, spec, summary and verdicts required; meta.json, health.jsonl,
     seed.json, server-metrics.jsonl, telemetry.jsonl when the run wrote them), so any edit,
     deletion or addition of one of them after signing is caught by its digest.
  v1 (``https://inferaudit.dev/inference-run/v1``, inferaudit 0.1): no ``verdicts.json``; the
     verdicts sit in ``summary.json`` under ``checks``; the subjects are records and spec only.

``statement.json`` (RFC 8785 bytes, identical to the envelope's payload)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "records.jsonl", "digest": {"sha256": "<hex>"}}, ...],
     "predicateType": "https://inferaudit.dev/inference-run/v2",
     "predicate": {"spec": {...}, "summary": {...without "checks"}, "verdicts": [...],
                   "tool": {"name": "inferaudit", "version": "..."},
                   "environment": {...}, "models": <what /v1/models said>, "meta": {...rest}}}

``envelope.dsse.json`` (RFC 8785 bytes; the same bytes are the ledger leaf)::

    {"payload": "<base64 statement>", "payloadType": "application/vnd.in-toto+json",
     "signatures": [{"keyid": "<name>+<hex key ID>", "sig": "<base64 Ed25519 over PAE>"}]}

PAE(type, body) = ``"DSSEv1" SP len(type) SP type SP len(body) SP body`` with ASCII decimal byte
lengths. JSON numbers must be integers within ±(2^53−1) or finite floats (RFC 8785).

This module builds and opens statements and envelopes; ``publish`` signs and logs them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import orjson
import rfc8785

from inferaudit import __version__
from inferaudit.errors import ConfigError, DataError, VerificationError
from inferaudit.measure.rundir import (
    HEALTH_FILE,
    META_FILE,
    RECORDS_FILE,
    SEED_FILE,
    SERVER_METRICS_FILE,
    SPEC_FILE,
    SUMMARY_FILE,
    TELEMETRY_FILE,
    VERDICTS_FILE,
    file_sha256,
    read_json,
)
from inferaudit.seal.keys import Signer, Verifier, b64decode_strict

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE_V1 = "https://inferaudit.dev/inference-run/v1"
PREDICATE_TYPE_V2 = "https://inferaudit.dev/inference-run/v2"
PREDICATE_TYPES = (PREDICATE_TYPE_V1, PREDICATE_TYPE_V2)
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SUBJECT_FILES_V1 = (RECORDS_FILE, SPEC_FILE)
REQUIRED_FILES_V2 = (RECORDS_FILE, SPEC_FILE, SUMMARY_FILE, VERDICTS_FILE)
EVIDENCE_FILES_V2 = (
    *REQUIRED_FILES_V2,
    META_FILE,
    HEALTH_FILE,
    SEED_FILE,
    SERVER_METRICS_FILE,
    TELEMETRY_FILE,
)
MAX_MODELS_BYTES = 16_384  # a longer /v1/models answer is bound by digest instead

Layout = Literal["v1", "v2"]


def canonical(value: Any, what: str = "evidence") -> bytes:
    """RFC 8785 bytes; out-of-domain numbers are a ``ConfigError`` naming ``what``."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise DataError(f"{what} cannot be canonicalised: {exc}") from None


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def run_layout(run_dir: Path) -> Layout:
    """``v2`` when the run wrote ``verdicts.json``; ``v1`` when its verdicts are in summary.json."""
    return "v2" if (run_dir / VERDICTS_FILE).exists() else "v1"


def predicate_type(layout: Layout) -> str:
    return PREDICATE_TYPE_V2 if layout == "v2" else PREDICATE_TYPE_V1


def bound_models(models: Any) -> Any:
    """``/v1/models`` as the predicate holds it: itself, or its digest when it is too large."""
    models_bytes = canonical(models, "meta.json models")
    if len(models_bytes) <= MAX_MODELS_BYTES:
        return models
    return {
        "omitted": "too large for the log entry",
        "sha256": hashlib.sha256(models_bytes).hexdigest(),
        "bytes": len(models_bytes),
    }


def split_meta(meta: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(environment, models as bound, the rest) of ``meta.json``: the predicate's three parts."""
    rest = dict(meta)
    environment = rest.pop("environment", None)
    models = bound_models(rest.pop("models", None))
    return environment, models, rest


def _subject(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the run directory")
    return {"name": name, "digest": {"sha256": file_sha256(path)}}


def _object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return value


def build_statement(run_dir: Path) -> dict[str, Any]:
    """The in-toto statement for a finished run directory, v2 or v1 by its layout."""
    layout = run_layout(run_dir)
    summary = _object(run_dir / SUMMARY_FILE)
    if layout == "v2":
        if "checks" in summary:
            raise ConfigError(
                f"{run_dir}: summary.json carries checks although verdicts.json exists "
                "(a v2 run keeps its verdicts in verdicts.json only)"
            )
        verdicts = read_json(run_dir / VERDICTS_FILE)
        if not isinstance(verdicts, list):
            raise ConfigError(f"{run_dir / VERDICTS_FILE}: expected a JSON list of verdicts")
        names = [n for n in EVIDENCE_FILES_V2 if n in REQUIRED_FILES_V2 or (run_dir / n).exists()]
    else:
        verdicts = summary.pop("checks", [])
        names = list(SUBJECT_FILES_V1)
    subjects = [_subject(run_dir, name) for name in names]
    spec = read_json(run_dir / SPEC_FILE)
    meta_path = run_dir / META_FILE
    environment, models, meta = split_meta(_object(meta_path) if meta_path.exists() else {})
    predicate = {
        "spec": spec,
        "summary": summary,
        "verdicts": verdicts,
        "tool": {"name": "inferaudit", "version": __version__},
        "environment": environment,
        "models": models,
        "meta": meta,
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": predicate_type(layout),
        "predicate": predicate,
    }


def sign_envelope(
    payload: bytes, signer: Signer, payload_type: str = PAYLOAD_TYPE
) -> dict[str, Any]:
    sig = signer.sign(pae(payload_type, payload))
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(sig).decode()}],
    }


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise VerificationError(f"{what} is not a string")
    return b64decode_strict(text, what, VerificationError)


def parse_envelope(data: bytes) -> dict[str, Any]:
    """A DSSE envelope's JSON, shape-checked (no signature check)."""
    try:
        env = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise VerificationError("envelope is not JSON") from None
    if not isinstance(env, dict) or set(env) != {"payload", "payloadType", "signatures"}:
        raise VerificationError("envelope must hold exactly payload, payloadType, signatures")
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise VerificationError("envelope has no signatures")
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or "sig" not in s:
            raise VerificationError("envelope signature entries need keyid and sig")
    return env


def open_envelope(env: dict[str, Any], trusted: Iterable[Verifier]) -> tuple[bytes, Verifier]:
    """Check a DSSE envelope against trusted signer keys; return (payload, the key that signed).

    Signatures by keys not in ``trusted`` are ignored; a trusted key's bad signature fails.
    """
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationError(f"envelope payloadType is not {PAYLOAD_TYPE}")
    payload = _b64(env.get("payload"), "envelope payload")
    message = pae(PAYLOAD_TYPE, payload)
    by_keyid = {v.keyid: v for v in trusted}
    good: Verifier | None = None
    for s in env["signatures"]:
        key = by_keyid.get(s["keyid"])
        if key is None:
            continue
        if not key.verify(message, _b64(s["sig"], f"signature by {key.keyid}")):
            raise VerificationError(f"envelope signature: invalid signature by {key.keyid}")
        good = good or key
    if good is None:
        ids = ", ".join(s["keyid"] for s in env["signatures"])
        raise VerificationError(f"envelope signature: unknown key ({ids})")
    return payload, good


def envelope_leaf(env: dict[str, Any]) -> bytes:
    """The ledger leaf of an envelope: its RFC 8785 bytes."""
    return canonical(env, "envelope")
