"""The default trust policy (the local data directory's keys), its one-line description, and
verified runs: the only form in which evidence is credited downstream."""

from __future__ import annotations

from pathlib import Path

import orjson

from conftest_ledger import make_run_dir
from inferaudit.judge.verdict import Outcome
from inferaudit.measure.protocol import RunSpec
from inferaudit.seal.keys import Signer, TrustPolicy, load_or_create_signer, load_trust
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.trust import default_policy
from inferaudit.seal.verified import UnverifiedRun, VerifiedRun, open_verified


def _sealed(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    run = make_run_dir(tmp_path / "run", n=12)
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([b"earlier", b"entries"])
        seal_run(run, load_or_create_signer(home, "inferaudit-runner"), ledger)
    return home, run


def test_default_policy_is_the_data_directory_keys(tmp_path: Path) -> None:
    home, _ = _sealed(tmp_path)
    policy = default_policy(home)
    runner = load_or_create_signer(home, "inferaudit-runner").verifier()
    assert policy.signers == (runner,)
    assert [v.name for v in policy.logs] == ["inferaudit-ledger"]
    assert policy.describe() == (
        f"trusting signer {runner.keyid}, log {policy.logs[0].keyid} (this data directory {home})"
    )
    assert default_policy(tmp_path / "empty").describe() == (
        f"trusting signer none, log none (this data directory {tmp_path / 'empty'})"
    )
    (tmp_path / "t.txt").write_text(policy.text())
    assert load_trust(tmp_path / "t.txt").describe() == (
        f"trusting signer {runner.keyid}, log {policy.logs[0].keyid} "
        f"(trust policy {tmp_path / 't.txt'})"
    )


def test_open_verified_returns_the_signed_run(tmp_path: Path) -> None:
    home, run = _sealed(tmp_path)
    verified = open_verified(run, default_policy(home))
    assert isinstance(verified, VerifiedRun), verified
    assert verified.run_dir == run
    assert verified.spec == RunSpec.model_validate_json((run / "spec.json").read_bytes())
    assert verified.summary.to_json() == orjson.loads((run / "summary.json").read_bytes())
    signed = orjson.loads((run / "verdicts.json").read_bytes())
    assert [v.to_json() for v in verified.verdicts] == signed
    assert {v.check: v.verdict for v in verified.verdicts}["errors"] is Outcome.failed
    assert (verified.ledger_index, verified.log_origin) == (2, "inferaudit-ledger")
    assert verified.signer == load_or_create_signer(home, "inferaudit-runner").keyid
    assert verified.predicate_type == "https://inferaudit.dev/inference-run/v2"


def test_open_verified_refuses_with_the_first_failed_step(tmp_path: Path) -> None:
    home, run = _sealed(tmp_path)
    summary = orjson.loads((run / "summary.json").read_bytes())
    summary["requests"] += 1
    (run / "summary.json").write_bytes(orjson.dumps(summary))
    refused = open_verified(run, default_policy(home))
    assert isinstance(refused, UnverifiedRun)
    assert refused.reason.startswith("subjects: summary.json digest mismatch")
    stranger = Signer(name="inferaudit-runner", seed=bytes(32)).verifier()
    _, fresh = _sealed(tmp_path / "again")
    refused = open_verified(fresh, TrustPolicy(signers=(stranger,)))
    assert isinstance(refused, UnverifiedRun)
    assert refused.reason.startswith("envelope signature: envelope signature: unknown key (")
    assert open_verified(tmp_path / "nowhere", default_policy(home)) == UnverifiedRun(
        tmp_path / "nowhere", f"{tmp_path / 'nowhere'} is not a run directory"
    )
