"""`inferaudit demo` end to end (library): the run is sealed, verified offline, and the claim is
reconciled from the verification's result only — never from the files again."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferaudit.audit import demo
from inferaudit.intent.reconcile import Status
from inferaudit.seal.verify import Report, Step

pytestmark = pytest.mark.slow


def test_demo_seals_verifies_and_reconciles_the_verified_run(tmp_path: Path) -> None:
    outcome = demo.run_demo(tmp_path / "out", duration_s=6.0, home=tmp_path / "home")
    failures = [f"{s.name}: {s.detail}" for s in outcome.verification.failures()]
    assert outcome.verification.ok, failures
    verified = outcome.verification.verified
    assert verified is not None and verified.ledger_index == outcome.run.evidence["ledger_index"]
    (result,) = outcome.reconciliation
    assert result.claim_id == f"demo-{demo.DEPLOYMENT}"
    assert result.claimed == demo.CLAIMED_TOKENS_PER_S
    # what was credited is the verified run's own lower bound; a run too short for its SLO
    # verdicts (or whose client fell behind) is set aside with the reason, never as unverifiable
    if result.status in (Status.verified, Status.shortfall):
        assert result.verified == pytest.approx(verified.summary.output_throughput_ci.low)
    else:
        assert result.status is Status.unverified and result.verified is None
        assert result.reasons
        assert not any("evidence not verified" in r for r in result.reasons), result.reasons
    assert outcome.report.is_file()
    assert "evidence not verified" not in outcome.report.read_text()


def test_demo_credits_nothing_when_verification_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run directory is sound, but the verification says no: the claim must not be credited.
    def refuse(run_dir: Path, *_: object, **__: object) -> Report:
        return Report(run_dir, (Step("envelope signature", False, "refused by the test"),))

    monkeypatch.setattr(demo, "verify_run", refuse)
    outcome = demo.run_demo(tmp_path / "out", duration_s=6.0, home=tmp_path / "home")
    assert "offline verification failed" in outcome.problems()
    (result,) = outcome.reconciliation
    assert result.status is Status.unverified and result.verified is None
    assert any("evidence not verified" in r for r in result.reasons), result.reasons
    assert "refused by the test" in outcome.report.read_text()
