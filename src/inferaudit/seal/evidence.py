"""Evidence bundles: an in-toto Statement v1 about a run, signed in a DSSE v1 envelope.

``statement.json`` (RFC 8785 bytes, identical to the envelope's payload)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "records.jsonl", "digest": {"sha256": "<hex>"}},
                 {"name": "spec.json", "digest": {"sha256": "<hex>"}}],
     "predicateType": "https://inferaudit.dev/inference-run/v1",
     "predicate": {"spec": {...}, "summary": {...without "checks"}, "verdicts": [...],
                   "tool": {"name": "inferaudit", "version": "..."},
                   "environment": {...}, "models": <what /v1/models said>, "meta": {...rest}}}

``envelope.dsse.json`` (RFC 8785 bytes; the same bytes are the ledger leaf)::

    {"payload": "<base64 statement>", "payloadType": "application/vnd.in-toto+json",
     "signatures": [{"keyid": "<name>+<hex key ID>", "sig": "<base64 Ed25519 over PAE>"}]}

PAE(type, body) = ``"DSSEv1" SP len(type) SP type SP len(body) SP body`` with ASCII decimal byte
lengths. JSON numbers must be integers within ±(2^53−1) or finite floats (RFC 8785).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import rfc8785

from inferaudit import __version__
from inferaudit.errors import ConfigError, VerificationError
from inferaudit.measure.rundir import (
    ENVELOPE_FILE,
    META_FILE,
    PROOF_FILE,
    RECORDS_FILE,
    SPEC_FILE,
    STATEMENT_FILE,
    SUMMARY_FILE,
)
from inferaudit.seal.keys import Signer, Verifier, b64decode_strict

if TYPE_CHECKING:
    from inferaudit.seal.ledger.store import Ledger

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://inferaudit.dev/inference-run/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SUBJECT_FILES = (RECORDS_FILE, SPEC_FILE)
MAX_MODELS_BYTES = 16_384  # a longer /v1/models answer is bound by digest instead


def canonical(value: Any, what: str = "evidence") -> bytes:
    """RFC 8785 bytes; out-of-domain numbers are a ``ConfigError`` naming ``what``."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ConfigError(f"{what} cannot be canonicalised: {exc}") from None


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing from the run directory") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None


def build_statement(run_dir: Path) -> dict[str, Any]:
    """The in-toto statement for a finished run directory."""
    subjects = []
    for name in SUBJECT_FILES:
        path = run_dir / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the run directory")
        subjects.append({"name": name, "digest": {"sha256": file_sha256(path)}})
    spec = _read_json(run_dir / SPEC_FILE)
    summary = dict(_read_json(run_dir / SUMMARY_FILE))
    verdicts = summary.pop("checks", [])
    meta_path = run_dir / META_FILE
    meta = dict(_read_json(meta_path)) if meta_path.exists() else {}
    environment = meta.pop("environment", None)
    models = meta.pop("models", None)
    models_bytes = canonical(models, "meta.json models")
    if len(models_bytes) > MAX_MODELS_BYTES:
        models = {
            "omitted": "too large for the log entry",
            "sha256": hashlib.sha256(models_bytes).hexdigest(),
            "bytes": len(models_bytes),
        }
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
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign_envelope(payload: bytes, signer: Signer, payload_type: str = PAYLOAD_TYPE) -> dict:
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


def seal_run(run_dir: Path, signer: Signer, ledger: Ledger | None) -> dict[str, Any]:
    """Write ``statement.json`` and ``envelope.dsse.json``; with a ledger, append the envelope,
    sign a checkpoint and save ``entry.tlog-proof``. Returns what was written (JSON-ready)."""
    statement = build_statement(run_dir)
    payload = canonical(statement, "statement")
    env = sign_envelope(payload, signer)
    leaf = envelope_leaf(env)
    (run_dir / STATEMENT_FILE).write_bytes(payload)
    (run_dir / ENVELOPE_FILE).write_bytes(leaf)
    out: dict[str, Any] = {
        "statement": STATEMENT_FILE,
        "envelope": ENVELOPE_FILE,
        "keyid": signer.keyid,
        "verifier_key": signer.verifier().text(),
        "statement_sha256": hashlib.sha256(payload).hexdigest(),
    }
    if ledger is not None:
        index = ledger.append([leaf])[0]
        checkpoint = ledger.sign_checkpoint()
        proof = ledger.tlog_proof(index, checkpoint)
        (run_dir / PROOF_FILE).write_text(proof.text())
        out.update(
            {
                "proof": PROOF_FILE,
                "ledger_index": index,
                "ledger_origin": ledger.origin,
                "log_key": ledger.signer.verifier().text() if ledger.signer else None,
            }
        )
    return out
