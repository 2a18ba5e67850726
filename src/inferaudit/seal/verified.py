"""Verified runs: the only form in which evidence leaves ``seal`` for reconciliation and reports.

``open_verified(run_dir, policy)`` runs every step of ``verify.verify_run`` and returns either a
``VerifiedRun`` — spec, summary and verdicts taken from the SIGNED statement (never re-read from
the files once verified), with its ledger entry and the trusted key that signed it — or an
``UnverifiedRun`` whose ``reason`` is the first failed step, as one line (``summary: ...``).
Consumers credit a ``VerifiedRun`` and list an ``UnverifiedRun`` as "evidence not verified".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferaudit.errors import InferauditError
from inferaudit.judge.verdict import Verdict
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.summary import Summary
from inferaudit.seal.keys import TrustPolicy


@dataclass(frozen=True)
class VerifiedRun:
    run_dir: Path
    spec: RunSpec
    summary: Summary
    verdicts: tuple[Verdict, ...]
    ledger_index: int
    log_origin: str
    signer: str  # keyid of the trusted key that signed the envelope
    predicate_type: str


@dataclass(frozen=True)
class UnverifiedRun:
    run_dir: Path
    reason: str  # one line: the first failed verify step, e.g. "summary: ... differs"


def open_verified(
    run_dir: Path,
    policy: TrustPolicy,
    *,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
) -> VerifiedRun | UnverifiedRun:
    """Verify ``run_dir`` under ``policy``; a ``VerifiedRun`` only when every step passed."""
    from inferaudit.seal.verify import verify_run

    if not run_dir.is_dir():
        return UnverifiedRun(run_dir, f"{run_dir} is not a run directory")
    try:
        report = verify_run(run_dir, policy, tokenizer=tokenizer, fingerprint=fingerprint)
    except InferauditError as exc:
        return UnverifiedRun(run_dir, exc.diagnostics())
    if report.verified is not None:
        return report.verified
    first = report.failures()[0] if report.failures() else None
    reason = f"{first.name}: {first.detail}" if first else "no verification step ran"
    return UnverifiedRun(run_dir, " ".join(reason.split()))
