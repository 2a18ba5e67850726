"""Offline verification of a run directory against a trust policy.

Nothing here touches the network. The steps, each reported as one ``Check``:

    1. envelope signature: ``envelope.dsse.json`` is a DSSE v1 envelope of an in-toto payload,
       signed (over PAE) by a signer key the trust policy accepts;
    2. statement: the signed payload is RFC 8785 canonical JSON, an in-toto Statement v1 with
       our predicate type, and ``statement.json`` holds exactly those bytes;
    3. subjects: the SHA-256 of ``records.jsonl`` and ``spec.json`` equal the statement's
       subject digests, and the predicate's spec is ``spec.json``;
    4. checkpoint: the checkpoint in ``entry.tlog-proof`` is a signed note by a log key the
       trust policy accepts, named as the checkpoint's origin;
    5. inclusion: the RFC 9162 inclusion proof leads from the envelope's leaf hash
       (SHA-256(0x00 || RFC 8785 bytes of the envelope)) to the checkpoint's root;
    6. summary: ``metrics.summarize(records, spec)`` recomputed here equals the signed summary,
       key by key (every key but ``checks``);
    7. summary file: ``summary.json`` equals the signed summary and verdicts;
    8. verdicts: every integrity verdict recomputed from ``records.jsonl`` equals the signed one
       (checks that counted with the run's tokenizer, or used its fingerprint, need that file,
       matched by the digest in ``spec.json``; without it they are listed as not rechecked).

Later steps still run when an earlier one fails (using the unsigned copies where they must), so
one report names every problem; the run passes only when every step passes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from inferaudit.errors import InferauditError
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.rundir import (
    ENVELOPE_FILE,
    PROOF_FILE,
    RECORDS_FILE,
    SPEC_FILE,
    STATEMENT_FILE,
    SUMMARY_FILE,
)
from inferaudit.seal.evidence import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    SUBJECT_FILES,
    canonical,
    file_sha256,
    open_envelope,
    parse_envelope,
)
from inferaudit.seal.keys import TrustPolicy
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    InvalidSignatureError,
    NoteError,
    UnverifiedNoteError,
    open_checkpoint,
    parse_tlog_proof,
)

Summarize = Callable[[Sequence[Record], RunSpec], dict[str, Any]]
MAX_DIFFS = 5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found: the signer on success, what failed otherwise


@dataclass(frozen=True)
class Report:
    run_dir: Path
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}")
    else:
        yield prefix, value


def summary_diffs(signed: dict[str, Any], recomputed: dict[str, Any]) -> list[str]:
    """``summary.<key path> differs: <signed> vs <recomputed>`` for each disagreement."""
    a = dict(_flatten({k: v for k, v in signed.items() if k != "checks"}, "summary"))
    b = dict(_flatten({k: v for k, v in recomputed.items() if k != "checks"}, "summary"))
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            out.append(f"{key} is signed but not recomputed")
        elif key not in a:
            out.append(f"{key} is recomputed but not signed")
        elif a[key] != b[key] or type(a[key]) is not type(b[key]):
            out.append(f"{key} differs: {_show(a[key])} vs {_show(b[key])}")
    return out


def _show(v: Any) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def verify_run(
    run_dir: Path,
    trust: TrustPolicy,
    *,
    summarize: Summarize | None = None,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
) -> Report:
    """Verify ``run_dir`` offline; every step yields one ``Check`` (see the module docstring)."""
    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, ok, detail))

    # (1): envelope signature by a trusted signer key.
    env_bytes = _read(run_dir / ENVELOPE_FILE)
    env: dict[str, Any] | None = None
    payload: bytes | None = None
    if env_bytes is None:
        add("envelope signature", False, f"{ENVELOPE_FILE} is missing")
    else:
        try:
            env = parse_envelope(env_bytes)
            payload, key = open_envelope(env, trust.signers)
            add("envelope signature", True, f"signed by {key.keyid}")
        except InferauditError as exc:
            add("envelope signature", False, str(exc))
            if env is not None and env.get("payloadType") == PAYLOAD_TYPE:
                try:
                    payload = base64.b64decode(env.get("payload", ""), validate=True)
                except (binascii.Error, ValueError, TypeError):
                    payload = None

    # (2): the statement: canonical, in-toto v1, our predicate type, same bytes as statement.json.
    statement: dict[str, Any] | None = None
    stmt_file = _read(run_dir / STATEMENT_FILE)
    source = payload if payload is not None else stmt_file
    problems: list[str] = []
    if source is None:
        problems.append(f"{STATEMENT_FILE} is missing and the envelope has no payload")
    else:
        try:
            parsed = orjson.loads(source)
        except orjson.JSONDecodeError:
            parsed = None
            problems.append("statement is not JSON")
        if isinstance(parsed, dict):
            statement = parsed
            try:
                if canonical(parsed, "statement") != source:
                    problems.append("statement is not RFC 8785 canonical JSON")
            except InferauditError as exc:
                problems.append(str(exc))
            if parsed.get("_type") != STATEMENT_TYPE:
                problems.append(f"statement _type is not {STATEMENT_TYPE}")
            if parsed.get("predicateType") != PREDICATE_TYPE:
                problems.append(f"statement predicateType is not {PREDICATE_TYPE}")
            if not isinstance(parsed.get("predicate"), dict):
                problems.append("statement has no predicate object")
                statement = None
        elif parsed is not None:
            problems.append("statement is not a JSON object")
        if stmt_file is None:
            problems.append(f"{STATEMENT_FILE} is missing")
        elif payload is not None and stmt_file != payload:
            problems.append(f"{STATEMENT_FILE} differs from the signed envelope payload")
    add("statement", not problems, "; ".join(problems) or "in-toto Statement v1, canonical")

    # (3): subject digests against the files.
    problems = []
    subjects = statement.get("subject") if statement else None
    if not isinstance(subjects, list):
        problems.append("statement has no subjects")
    else:
        by_name = {
            s.get("name"): s.get("digest", {}).get("sha256")
            for s in subjects
            if isinstance(s, dict) and isinstance(s.get("digest"), dict)
        }
        for name in SUBJECT_FILES:
            path = run_dir / name
            if name not in by_name:
                problems.append(f"{name} is not a subject of the statement")
            elif not path.is_file():
                problems.append(f"{name} is missing")
            elif file_sha256(path) != by_name[name]:
                problems.append(f"{name} digest mismatch")
        spec_bytes = _read(run_dir / SPEC_FILE)
        if statement and spec_bytes is not None:
            try:
                if orjson.loads(spec_bytes) != statement["predicate"].get("spec"):
                    problems.append("predicate spec differs from spec.json")
            except orjson.JSONDecodeError:
                problems.append("spec.json is not JSON")
    add(
        "subjects", not problems, "; ".join(problems) or "records.jsonl and spec.json digests match"
    )

    # (4): the checkpoint is signed by a trusted log key.
    proof_text = _read(run_dir / PROOF_FILE)
    proof = checkpoint = None
    if proof_text is None:
        add("checkpoint signature", False, f"{PROOF_FILE} is missing")
    else:
        try:
            proof = parse_tlog_proof(proof_text.decode())
            checkpoint, note = open_checkpoint(proof.checkpoint, trust.logs)
            signer = note.verified[0]
            add(
                "checkpoint signature",
                True,
                f"{checkpoint.origin} size {checkpoint.size} signed by "
                f"{signer.name}+{signer.key_hash:08x}",
            )
        except UnicodeDecodeError:
            add("checkpoint signature", False, f"{PROOF_FILE} is not UTF-8")
        except UnverifiedNoteError:
            add("checkpoint signature", False, "checkpoint signature: unknown key")
        except InvalidSignatureError as exc:
            add("checkpoint signature", False, f"checkpoint signature: {exc}")
        except NoteError as exc:
            add("checkpoint signature", False, f"checkpoint: {exc}")

    # (5): the envelope's leaf is in the checkpointed tree.
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

    # (6): recompute the summary from the records and compare with the signed one.
    signed = statement["predicate"].get("summary") if statement else None
    verdicts = statement["predicate"].get("verdicts") if statement else None
    if not isinstance(signed, dict):
        add("summary", False, "statement has no summary")
    else:
        try:
            if summarize is None:
                from inferaudit.measure.metrics import summarize as summarize_fn
            else:
                summarize_fn = summarize
            spec = RunSpec.model_validate_json(_read(run_dir / SPEC_FILE) or b"")
            records = read_records(run_dir / RECORDS_FILE)
            recomputed = orjson.loads(canonical(summarize_fn(records, spec), "summary"))
            diffs = summary_diffs(signed, recomputed)
            if diffs:
                more = f" (+{len(diffs) - MAX_DIFFS} more)" if len(diffs) > MAX_DIFFS else ""
                add("summary", False, "; ".join(diffs[:MAX_DIFFS]) + more)
            else:
                add("summary", True, f"recomputed from {len(records)} records: equal")
        except ValidationError as exc:
            add("summary", False, f"spec.json is not a valid RunSpec: {exc.errors()[0]['msg']}")
        except InferauditError as exc:
            add("summary", False, exc.diagnostics())

    # (7): summary.json agrees with what was signed.
    file_bytes = _read(run_dir / SUMMARY_FILE)
    if file_bytes is None or not isinstance(signed, dict):
        add("summary file", False, f"{SUMMARY_FILE} or the signed summary is missing")
    else:
        try:
            on_disk = orjson.loads(canonical(orjson.loads(file_bytes), SUMMARY_FILE))
        except (orjson.JSONDecodeError, InferauditError):
            on_disk = None
        if not isinstance(on_disk, dict):
            add("summary file", False, f"{SUMMARY_FILE} is not a JSON object")
        else:
            diffs = summary_diffs(signed, on_disk)
            if on_disk.get("checks", []) != verdicts:
                diffs.append("summary.checks differ from the signed verdicts")
            add(
                "summary file",
                not diffs,
                "; ".join(diffs[:MAX_DIFFS]) or f"{SUMMARY_FILE} matches the signed summary",
            )

    # (8): the verdicts follow from the records too.
    checks.append(_recheck_verdicts(run_dir, verdicts, tokenizer, fingerprint))
    return Report(run_dir=run_dir, checks=tuple(checks))


def _recheck_verdicts(
    run_dir: Path, signed: Any, tokenizer: Path | None, fingerprint: Path | None
) -> Check:
    from inferaudit.judge.suite import USES_TOKENIZER, recheck
    from inferaudit.measure.fingerprint import load_fingerprint
    from inferaudit.measure.tokenizer import load_tokenizer

    name = "verdicts"
    if not isinstance(signed, list):
        return Check(name, False, "statement has no verdicts")
    try:
        spec = RunSpec.model_validate_json(_read(run_dir / SPEC_FILE) or b"")
        records = read_records(run_dir / RECORDS_FILE)
        skipped: list[str] = []
        tok = fp = None
        for path, digest, uses, what in (
            (tokenizer, spec.tokenizer_sha256, USES_TOKENIZER, "--tokenizer"),
            (fingerprint, spec.fingerprint_sha256, ("identity",), "--fingerprint"),
        ):
            if digest is None:
                continue
            if path is None:
                skipped += [n for n in spec.checks if n in uses]
            elif file_sha256(path) != digest:
                return Check(name, False, f"{what} {path} is not the file the run used")
            elif what == "--tokenizer":
                tok = load_tokenizer(path)
            else:
                fp = load_fingerprint(path)
        by_check = {v.get("check"): v for v in signed if isinstance(v, dict)}
        conformance = by_check.get("conformance", {}).get("numbers", {})
        listed = conformance.get("items", {}).get("model_listed", "not recorded")
        names = [n for n in spec.checks if n not in skipped]
        recomputed = recheck(
            records, spec, names=names, tokenizer=tok, fingerprint=fp, model_listed=listed
        )
    except ValidationError as exc:
        return Check(name, False, f"spec.json is not a valid RunSpec: {exc.errors()[0]['msg']}")
    except InferauditError as exc:
        return Check(name, False, exc.diagnostics())
    diffs = [f"{n}: signed but not in the protocol" for n in by_check if n not in spec.checks]
    for verdict in recomputed:
        mine = orjson.loads(canonical(verdict.to_json(), "verdict"))
        theirs = by_check.get(verdict.check)
        if theirs is None:
            diffs.append(f"verdict {verdict.check} is missing")
        elif theirs != mine:
            diffs.append(
                f"verdict {verdict.check} differs: signed {theirs.get('verdict')} "
                f"({theirs.get('summary')}) vs recomputed {mine['verdict']} ({mine['summary']})"
            )
    if diffs:
        return Check(name, False, "; ".join(diffs[:MAX_DIFFS]))
    detail = f"{len(recomputed)} recomputed from the records: equal"
    if skipped:
        detail += f"; not rechecked without the run's files: {', '.join(skipped)}"
    return Check(name, True, detail)
