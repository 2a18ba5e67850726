"""Split views: a log key that signs two trees of one size is caught and shown as a fork; a
checkpoint that cannot be proven consistent with a known one is refused, never passed silently."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from conftest_ledger import make_run_dir
from inferaudit.seal.keys import TrustPolicy, load_or_create_signer, load_signer
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import Checkpoint, TlogProof, parse_tlog_proof, sign_checkpoint
from inferaudit.seal.ledger.store import open_ledger
from inferaudit.seal.publish import seal_run
from inferaudit.seal.trust import CheckpointMemory, default_policy
from inferaudit.seal.verify import Report, verify_run


def _sealed(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory whose ledger holds one earlier entry, then the run (checkpoint size 2)."""
    home = tmp_path / "home"
    run = make_run_dir(tmp_path / "run", n=10)
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.append([b"an earlier entry"])
        seal_run(run, load_or_create_signer(home, "inferaudit-runner"), ledger)
    return home, run


def _forge(run: Path, home: Path, dst: Path) -> tuple[Path, str]:
    """The same run under a split view: the log key signs a size-2 tree whose first leaf is
    another one, so the run's inclusion proof holds against the forged root."""
    copy = dst / "forged"
    shutil.copytree(run, copy)
    proof = parse_tlog_proof((run / "entry.tlog-proof").read_text())
    assert proof.index == 1
    env_hash = merkle.hash_leaf((run / "envelope.dsse.json").read_bytes())
    other = merkle.hash_leaf(b"a different earlier entry")
    root = merkle.hash_children(other, env_hash)
    note = sign_checkpoint(
        Checkpoint("inferaudit-ledger", 2, root), load_signer(home, "inferaudit-ledger")
    )
    (copy / "entry.tlog-proof").write_text(TlogProof(1, (other,), note).text())
    return copy, note


def _consistency(report: Report) -> tuple[bool, str]:
    step = next(s for s in report.steps if s.name == "checkpoint consistency")
    return step.ok, step.detail


def test_fork_against_the_local_ledger(tmp_path: Path) -> None:
    home, run = _sealed(tmp_path)
    policy = default_policy(home)
    assert verify_run(run, policy).ok
    forged, note = _forge(run, home, tmp_path)
    report = verify_run(forged, policy)
    failures = {s.name for s in report.failures()}
    assert failures == {"checkpoint consistency"}  # signature and inclusion hold: a split view
    ok, detail = _consistency(report)
    assert not ok and detail.startswith(
        "FORK: two checkpoints of size 2 signed by inferaudit-ledger+"
    )
    assert report.fork is not None and report.fork.size == 2
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        local = ledger.checkpoint_at(2)
    assert (report.fork.seen, report.fork.known) == (note, local)
    assert report.fork.saved is not None and report.fork.saved.read_text() == f"{note}\n{local}"
    assert report.verified is None


def test_fork_against_a_remembered_checkpoint(tmp_path: Path) -> None:
    """A third party, without the log's ledger: the first checkpoint is remembered; a second
    one of the same size with another root is a fork."""
    home, run = _sealed(tmp_path)
    local = default_policy(home)
    elsewhere = tmp_path / "verifier"
    policy = replace(
        TrustPolicy(signers=local.signers, logs=local.logs),
        memory=CheckpointMemory(elsewhere / "checkpoints"),
    )
    report = verify_run(run, policy)
    assert report.ok
    _, detail = _consistency(report)
    assert detail.startswith("first checkpoint of inferaudit-ledger+")
    remembered = elsewhere / "checkpoints" / f"{local.logs[0].keyid}"
    assert detail.endswith(f"; remembered in {remembered}")
    assert (
        remembered.read_text()
        == parse_tlog_proof((run / "entry.tlog-proof").read_text()).checkpoint
    )
    assert _consistency(verify_run(run, policy)) == (
        True,
        "same as the remembered checkpoint at size 2",
    )
    forged, note = _forge(run, home, tmp_path)
    report = verify_run(forged, policy)
    assert {s.name for s in report.failures()} == {"checkpoint consistency"}
    assert report.fork is not None
    assert report.fork.seen == note and report.fork.known == remembered.read_text()


def test_larger_checkpoint_needs_a_consistency_proof(tmp_path: Path) -> None:
    home, run = _sealed(tmp_path)
    local = default_policy(home)
    third_party = replace(
        TrustPolicy(signers=local.signers, logs=local.logs),
        memory=CheckpointMemory(tmp_path / "verifier" / "checkpoints"),
    )
    assert verify_run(run, third_party).ok  # remembers size 2
    later = make_run_dir(tmp_path / "later", n=8)
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        seal_run(later, load_or_create_signer(home, "inferaudit-runner"), ledger)  # size 3
    report = verify_run(later, third_party)
    ok, detail = _consistency(report)
    assert not ok and detail.startswith(
        "inconsistent or unprovable: this checkpoint is at size 3, the known one at size 2"
    )
    assert report.fork is None
    # With the log's ledger at hand, the RFC 9162 proof settles it, both ways round.
    with_ledger = replace(third_party, memory=CheckpointMemory(
        tmp_path / "verifier" / "checkpoints", f"sqlite:///{home / 'ledger.sqlite3'}"
    ))  # fmt: skip
    report = verify_run(later, with_ledger)
    assert report.ok, report.failures()
    assert _consistency(report)[1].startswith(
        "matches the local ledger's tree at size 3; consistent with the remembered checkpoint "
        "at size 2"
    )
    report = verify_run(run, with_ledger)  # the older run, after the newer one was remembered
    assert report.ok, report.failures()
    assert "consistent with the remembered checkpoint at size 3" in _consistency(report)[1]


def test_cli_prints_both_notes_of_a_fork(tmp_path: Path) -> None:
    from inferaudit.cli import app

    home, run = _sealed(tmp_path)
    forged, note = _forge(run, home, tmp_path)
    result = CliRunner().invoke(app, ["verify", str(forged), "--data-dir", str(home)])
    assert result.exit_code == 1, result.output
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        local = ledger.checkpoint_at(2)
    assert local is not None
    assert "FAIL checkpoint consistency: FORK: two checkpoints of size 2" in result.output
    assert note in result.output and local in result.output
    assert result.output.index(note) < result.output.index(local)
